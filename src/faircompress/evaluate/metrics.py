"""Overall, per-class and per-group metrics from per-sample predictions, via fairlearn's MetricFrame.

Torch-free: works on stored predictions. Samples whose group is unknown (code -1, e.g. RAF-DB's
gender "unsure") count toward overall accuracy and per-class recall only.

Results travel in long format, one row per (metric, attribute, group): a scalar has attribute and
group '' (e.g. accuracy, zipped_bytes), a per-attribute measure has a group '' (gap, ratio), a
per-group measure has both. Per-class rows use the pseudo-attribute ``class`` (accuracy within a true
class is that class's recall). A new per-group metric is a function ``f(y_true, y_pred) -> float``
registered in `GROUP_METRICS`: it is computed for every class and group and stored with no schema change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count
from sklearn.metrics import accuracy_score

from ..data.dataset import UNKNOWN
from ..registry import Registry

if TYPE_CHECKING:
    from ..data.dataset import FaceDataset

GroupMetric = Callable[[np.ndarray, np.ndarray], float]
GROUP_METRICS: Registry[GroupMetric] = Registry("group metric")
GROUP_METRICS.register("accuracy")(accuracy_score)

CLASS = "class"  # pseudo-attribute of the per-class rows
METRIC_COLUMNS = ["metric", "attribute", "group", "value"]


def metric_rows(values: dict[str, float], attribute: str = "", group: str = "") -> pd.DataFrame:
    """Long-format rows for named values of one (attribute, group); scalars by default."""
    return pd.DataFrame([(k, attribute, group, float(v)) for k, v in values.items()], columns=METRIC_COLUMNS)


@dataclass
class Evaluation:
    accuracy: float
    n: int
    per_class: pd.DataFrame  # columns: class, count, recall, then any other registered metric
    groups: pd.DataFrame     # columns: attribute, group, count, accuracy, then any other registered metric
    disparity: pd.DataFrame  # columns: attribute, gap, ratio, worst_group, best_group

    def long(self) -> pd.DataFrame:
        """Every value as long-format rows (see the module docstring)."""
        classes = self.per_class.rename(columns={"class": "group", "recall": "accuracy"}).assign(attribute=CLASS)
        parts = [metric_rows({"accuracy": self.accuracy, "n_test": self.n}), _melt(classes), _melt(self.groups)]
        parts += [metric_rows({"gap": r.gap, "ratio": r.ratio}, r.attribute) for r in self.disparity.itertuples()]
        return pd.concat([p for p in parts if not p.empty], ignore_index=True)


def _melt(by_group: pd.DataFrame) -> pd.DataFrame:
    long = by_group.melt(id_vars=["attribute", "group"], var_name="metric", value_name="value")
    return long.astype({"value": float})[METRIC_COLUMNS]


def group_frame(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series | pd.DataFrame) -> MetricFrame:
    """Every registered group metric plus the count, by group."""
    metrics = {name: fn for name, fn in GROUP_METRICS.items()} | {"count": count}
    return MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)


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
    by_class = group_frame(y_true, y_pred, pd.Series(np.asarray(class_names)[y_true], name="class")).by_group
    per_class = by_class.reindex([c for c in class_names if c in by_class.index]).rename(columns={"accuracy": "recall"})
    per_class = per_class.reset_index()[["class", "count", "recall", *[c for c in per_class.columns if c not in ("count", "recall")]]]
    group_parts, disparity_rows = [], []
    for attr, codes in attributes.items():
        codes = np.asarray(codes)
        known = codes != UNKNOWN
        if not known.any():
            continue
        names = np.asarray(attribute_groups[attr])[codes[known]]
        mf = group_frame(y_true[known], y_pred[known], pd.Series(names, name="group"))
        by = mf.by_group.reindex([g for g in attribute_groups[attr] if g in mf.by_group.index])
        group_parts.append(by.astype({"count": int}).reset_index().assign(attribute=attr))
        acc = by["accuracy"]
        disparity_rows.append({"attribute": attr, "gap": float(mf.difference(method="between_groups")["accuracy"]),
                               "ratio": float(mf.ratio(method="between_groups")["accuracy"]),
                               "worst_group": str(acc.idxmin()), "best_group": str(acc.idxmax())})
    first = ["attribute", "group", "count", "accuracy"]
    groups = pd.concat(group_parts, ignore_index=True) if group_parts else pd.DataFrame(columns=first)
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        n=len(y_true),
        per_class=per_class,
        groups=groups[first + [c for c in groups.columns if c not in first]],
        disparity=pd.DataFrame(disparity_rows, columns=["attribute", "gap", "ratio", "worst_group", "best_group"]),
    )


def evaluate_split(data: "FaceDataset", y_pred: np.ndarray, split: str = "test") -> Evaluation:
    """`evaluate_predictions` for predictions on one split of a dataset, in the split's order."""
    idx = data.indices(split)
    return evaluate_predictions(data.labels[idx], y_pred, data.class_names, {a: v[idx] for a, v in data.attributes.items()},
                                data.attribute_groups)
