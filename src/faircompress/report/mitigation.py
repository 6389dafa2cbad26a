"""Mitigation beside its unmitigated twin: every variant whose recipe fine-tunes with an objective
(a step's ``fine_tune`` option, `faircompress.mitigate`) is paired with the study's variant of the
same recipe without it (same technique, level and repeats), and the two are compared on the same
test images with the statistics every other comparison uses: the change of overall accuracy and of
each attribute's population-mean gap (mitigated minus twin) with a paired bootstrap 95 % interval
(test subjects, or images where there are none, and both populations' models resampled;
`evaluate.fairness.paired_gap_bootstrap`), p from the bootstrap standard error, Holm-adjusted across
the section's gap changes. A negative gap change is a narrower gap: the mitigation helped."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate import fairness as F
from . import analysis as A
from .figures import _plt, save
from .results import StudyResults, Variant

MB = 1024 * 1024
COLUMNS = ["variant", "twin", "objective", "models", "size_mb", "size_mb_twin", "accuracy", "accuracy_twin", "accuracy_change",
           "accuracy_ci_low", "accuracy_ci_high", "attribute", "gap", "gap_twin", "gap_change", "ci_low", "ci_high", "p", "p_holm",
           "significant"]


@dataclass(frozen=True)
class Twin:
    mitigated: Variant
    twin: Variant
    objective: str


FAIRGRAPE_ONLY = ("method", "attribute", "rounds", "round_epochs")  # fairgrape's own parameters


def _without_objective(steps: list[dict]) -> tuple[list[str], list[str]]:
    """The keys (JSON) of the recipes that are this one's unmitigated twin, best first, and the
    remedies taken out. A step's ``fine_tune`` is removed. Fairness-aware pruning (`prune: {method:
    fairgrape}`) is a remedy too: its twin is percentile pruning with the same other parameters (a
    fixed mask chosen once, as fairgrape's), else magnitude pruning (whose mask moves during
    fine-tuning: the pair then differs in that too); its remedy reads 'fairgrape (attribute)', with
    the epochs it fine-tunes between its rounds, which the twin does not get."""
    variants: list[list[dict]] = [[]]
    objectives: list[str] = []
    for step in steps:
        (name, params), = step.items()
        params = dict(params or {})
        spec = params.pop("fine_tune", None)
        if spec:
            objectives.append(spec["objective"])
        if name == "prune" and params.get("method") == "fairgrape":
            extra = (params.get("rounds", 5) - 1) * params.get("round_epochs", 0)
            objectives.append(f"fairgrape ({params.get('attribute')}" + (f", +{extra} epochs between rounds" if extra else "") + ")")
            rest = {k: v for k, v in params.items() if k not in FAIRGRAPE_ONLY}
            variants = [v + [{name: twin}] for twin in ({**rest, "method": "percentile"}, rest) for v in variants]
        else:
            variants = [v + [{name: params}] for v in variants]
    return [json.dumps(v, sort_keys=True) for v in variants], objectives


def twins(res: StudyResults) -> list[Twin]:
    """Each mitigated variant with its unmitigated twin, where the study ran both."""
    plain: dict[str, Variant] = {}
    mitigated: list[tuple[Variant, list[str], list[str]]] = []
    for v in res.variants:
        steps = res.recipe_steps(v)
        if steps is None:
            continue
        keys, objectives = _without_objective(steps)
        if objectives:
            mitigated.append((v, keys, objectives))
        else:
            plain.setdefault(keys[0], v)
    out = []
    for v, keys, objectives in mitigated:
        key = next((k for k in keys if k in plain), None)
        if key is not None:
            out.append(Twin(v, plain[key], " + ".join(objectives)))
    return out


def _size_mb(res: StudyResults, variant: Variant) -> float:
    sizes = res.scalar("zipped_bytes").reindex(list(variant.run_ids))
    return float(sizes.mean() / MB) if sizes.notna().any() else float("nan")


def _accuracy_change(res: StudyResults, pair: Twin, n_boot: int, seed: int) -> dict[str, float]:
    mit, twin = res.population(pair.mitigated) == res.y_true, res.population(pair.twin) == res.y_true
    boot = F.paired_accuracy_bootstrap(twin, mit, res.subjects, n_boot, seed)
    lo, hi = (float(q) for q in np.nanquantile(boot, [0.025, 0.975]))
    return {"models": f"{len(mit)} / {len(twin)}", "size_mb": _size_mb(res, pair.mitigated), "size_mb_twin": _size_mb(res, pair.twin),
            "accuracy": float(mit.mean()), "accuracy_twin": float(twin.mean()), "accuracy_change": float(mit.mean() - twin.mean()),
            "accuracy_ci_low": lo, "accuracy_ci_high": hi}


def mitigation_table(res: StudyResults, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per mitigated variant and attribute: sizes, accuracies and the paired accuracy change,
    both gaps and the paired gap change (mitigated minus twin) with its interval, p and Holm-adjusted p
    (across the section). Empty when the study has no mitigated variant with a twin."""
    rows = []
    groups = A.gap_groups(res)
    for pair in twins(res):
        mit, twin = res.population(pair.mitigated), res.population(pair.twin)
        common = {"variant": pair.mitigated.label, "twin": pair.twin.label, "objective": pair.objective} | _accuracy_change(
            res, pair, n_boot, seed)
        for attr, gg in groups.items():
            gap_m, gap_t = A.model_gaps(res, mit, attr, gg)[0], A.model_gaps(res, twin, attr, gg)[0]
            boot = F.paired_gap_bootstrap(twin == res.y_true, mit == res.y_true, gg.kept, int(gg.ok.sum()), res.subjects, n_boot, seed)
            change = float(gap_m.mean() - gap_t.mean())
            lo, hi = (float(q) for q in np.nanquantile(boot, [0.025, 0.975]))
            rows.append(common | {"attribute": attr, "gap": float(gap_m.mean()), "gap_twin": float(gap_t.mean()), "gap_change": change,
                                  "ci_low": lo, "ci_high": hi, "p": F.bootstrap_p(change, boot)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["p_holm"] = F.holm(table.p.to_numpy(dtype=float)) if len(table) else []
    table["significant"] = (table.p_holm < 0.05).astype(bool)
    return table


def mitigation_figure(table: pd.DataFrame, out: Path) -> Path | None:
    """Per mitigated variant, each single attribute's gap change against its twin with the interval
    (left of zero: the mitigation narrowed the gap), and the accuracy change. None without rows."""
    singles = table[~table.attribute.str.contains(" × ", regex=False)] if not table.empty else table
    if singles.empty:
        return None
    plt = _plt()
    variants = list(dict.fromkeys(singles.variant))
    attrs = list(dict.fromkeys(singles.attribute))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 + 0.45 * len(variants) * (len(attrs) + 1)), layout="constrained",
                             gridspec_kw={"width_ratios": [2, 1]})
    gap_ax, acc_ax = axes
    y = 0
    ticks, names = [], []
    for v in variants:
        for attr in attrs:
            r = singles[(singles.variant == v) & (singles.attribute == attr)].iloc[0]
            gap_ax.errorbar(100 * r.gap_change, y, xerr=[[100 * (r.gap_change - r.ci_low)], [100 * (r.ci_high - r.gap_change)]],
                            fmt="o", mfc=None if r.significant else "white", color=f"C{attrs.index(attr)}",
                            capsize=3, label=attr if v == variants[0] else None)
            y += 1
        first = singles[singles.variant == v].iloc[0]
        acc_ax.errorbar(100 * first.accuracy_change, y - len(attrs) / 2 - 0.5, capsize=3, fmt="s", color="black",
                        xerr=[[100 * (first.accuracy_change - first.accuracy_ci_low)], [100 * (first.accuracy_ci_high - first.accuracy_change)]])
        ticks.append(y - len(attrs) / 2 - 0.5)
        names.append(f"{v}\nvs {first.twin}")
        y += 1
    for ax, title in ((gap_ax, "gap change vs the twin (pp; filled: significant after Holm)"), (acc_ax, "accuracy change (pp)")):
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(ticks, names if ax is gap_ax else [""] * len(ticks), fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    gap_ax.legend(fontsize=7)
    return save(fig, out, "mitigation")
