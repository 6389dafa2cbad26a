"""Overall, per-class and per-group metrics from per-sample predictions, via fairlearn's MetricFrame.

Torch-free: works on stored predictions. Samples whose group is unknown (code -1, e.g. RAF-DB's
gender "unsure") count toward overall accuracy and per-class recall only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count
from sklearn.metrics import accuracy_score

from ..data.dataset import UNKNOWN

GROUP_METRICS = {"accuracy": accuracy_score, "count": count}


@dataclass
class Evaluation:
    accuracy: float
    n: int
    per_class: pd.DataFrame  # columns: class, count, recall
    groups: pd.DataFrame     # columns: attribute, group, count, accuracy
    disparity: pd.DataFrame  # columns: attribute, gap, ratio, worst_group, best_group

    def scalars(self) -> dict[str, float]:
        """Flat name -> value view for the results store."""
        out = {"accuracy": self.accuracy, "n_test": float(self.n)}
        for row in self.disparity.itertuples():
            out[f"gap:{row.attribute}"] = row.gap
            out[f"ratio:{row.attribute}"] = row.ratio
        return out


def _frame(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series) -> MetricFrame:
    return MetricFrame(metrics=GROUP_METRICS, y_true=y_true, y_pred=y_pred, sensitive_features=groups)


def evaluate_predictions(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: list[str],
    attributes: dict[str, np.ndarray],
    attribute_groups: dict[str, list[str]],
) -> Evaluation:
    """Accuracy, per-class recall (accuracy grouped by true class), and accuracy per group of every
    sensitive attribute with its gap (max - min) and ratio (min / max)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    by_class = _frame(y_true, y_pred, pd.Series(np.asarray(class_names)[y_true], name="class")).by_group
    per_class = (
        by_class.reindex([c for c in class_names if c in by_class.index])
        .rename(columns={"accuracy": "recall"})
        .reset_index()[["class", "count", "recall"]]
    )
    group_rows, disparity_rows = [], []
    for attr, codes in attributes.items():
        codes = np.asarray(codes)
        known = codes != UNKNOWN
        if not known.any():
            continue
        names = np.asarray(attribute_groups[attr])[codes[known]]
        mf = _frame(y_true[known], y_pred[known], pd.Series(names, name="group"))
        acc = mf.by_group["accuracy"]
        order = [g for g in attribute_groups[attr] if g in acc.index]
        for g in order:
            group_rows.append({"attribute": attr, "group": g, "count": int(mf.by_group.loc[g, "count"]), "accuracy": float(acc[g])})
        disparity_rows.append(
            {
                "attribute": attr,
                "gap": float(mf.difference(method="between_groups")["accuracy"]),
                "ratio": float(mf.ratio(method="between_groups")["accuracy"]),
                "worst_group": str(acc.idxmin()),
                "best_group": str(acc.idxmax()),
            }
        )
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        n=len(y_true),
        per_class=per_class,
        groups=pd.DataFrame(group_rows, columns=["attribute", "group", "count", "accuracy"]),
        disparity=pd.DataFrame(disparity_rows, columns=["attribute", "gap", "ratio", "worst_group", "best_group"]),
    )
