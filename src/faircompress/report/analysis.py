"""From a study's stored predictions to evidence: group accuracies with Wilson intervals, gap changes
with paired bootstrap intervals, McNemar tests (Holm-corrected across the study), CEV/SDE, Overall
Disparity and compression-identified exemplars. Reads only the results store (no torch, no images).

The baseline population is the fp32 export of every baseline seed; a variant's population is all of
its repeats over all baselines. Group accuracies and their grouping come from fairlearn's
MetricFrame; the resampling is vectorised here, since MetricFrame is too slow inside a bootstrap.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from ..evaluate import fairness as F
from ..store import ResultStore

BASELINE = "baseline (fp32)"
MB = 1e6
GROUP_COLUMNS = ["variant", "attribute", "group", "n", "models", "accuracy", "std", "ci_low", "ci_high", "too_few"]
GAP_COLUMNS = ["variant", "attribute", "groups", "gap", "gap_std", "ratio", "overall_disparity", "gap_change", "ci_low", "ci_high",
               "significant"]


@dataclass
class StudyResults:
    class_names: list[str]
    groups: dict[str, list[str]]          # attribute (and "a × b" intersections) -> group names
    codes: dict[str, np.ndarray]          # attribute -> (N,) codes, -1 unknown
    subjects: np.ndarray                  # (N,)
    y_true: np.ndarray                    # (N,)
    variants: pd.DataFrame                # finished variant runs: run_id, variant, family, level, seed, repeat, size_mb
    preds: dict[str, np.ndarray]          # run_id -> (N,) predictions, aligned with y_true
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # every run (for the header and failures)

    def population(self, variant: str) -> np.ndarray:
        ids = self.variants.run_id[self.variants.variant == variant]
        return np.stack([self.preds[i] for i in ids])

    @property
    def attributes(self) -> list[str]:
        return [a for a in self.groups if " × " not in a]


def load_results(store: ResultStore, intersections: bool = True) -> StudyResults:
    runs = store.runs()
    c = store.conn
    datasets = c.execute("SELECT dataset_key, class_names_json, attribute_groups_json FROM datasets").fetchall()
    if not datasets:
        raise ValueError("the study has no test samples recorded yet (no run has started)")
    key, classes_json, groups_json = datasets[-1]
    samples = pd.read_sql_query("SELECT sample, subject, label, attributes_json FROM samples WHERE dataset_key=? ORDER BY sample",
                                c, params=(key,))
    groups = json.loads(groups_json)
    attrs = samples.attributes_json.map(json.loads)
    codes = {a: np.array([d[a] for d in attrs], dtype=np.int64) for a in groups}
    if intersections:
        for a, b in combinations(list(groups), 2):
            ga, gb = groups[a], groups[b]
            both = (codes[a] >= 0) & (codes[b] >= 0)
            codes[f"{a} × {b}"] = np.where(both, codes[a] * len(gb) + codes[b], -1)
            groups[f"{a} × {b}"] = [f"{x} × {y}" for x in ga for y in gb]
    finished = runs[(runs.kind == "variant") & (runs.status == "finished")].copy()
    index = {int(s): i for i, s in enumerate(samples["sample"])}
    preds_df = pd.read_sql_query("SELECT run_id, sample, y_pred FROM predictions", c)
    preds = {}
    for run_id, df in preds_df.groupby("run_id"):
        if run_id in set(finished.run_id):
            arr = np.full(len(samples), -1, dtype=np.int64)
            arr[[index[int(s)] for s in df["sample"]]] = df.y_pred.to_numpy()
            preds[run_id] = arr
    metrics = store.metrics()
    size = metrics[metrics.name == "zipped_bytes"].set_index("run_id").value
    finished = finished[finished.run_id.isin(preds)]
    recipe = finished.recipe_json.fillna("[]").map(json.loads)
    variants = pd.DataFrame({
        "run_id": finished.run_id.to_numpy(),
        "variant": finished.label.str.split(" | ", regex=False).str[0].to_numpy(),
        "family": [_family(r) for r in recipe],
        "level": [_level(r) for r in recipe],
        "seed": finished.seed.to_numpy(),
        "repeat": finished.repeat.fillna(0).astype(int).to_numpy(),
        "size_mb": (size.reindex(finished.run_id) / MB).to_numpy(),
    })
    return StudyResults(json.loads(classes_json), groups, codes, samples.subject.astype(str).to_numpy(),
                        samples.label.to_numpy(), variants, preds, runs)


def _family(recipe: list[dict]) -> str:
    return " + ".join(next(iter(step)) for step in recipe) if recipe else "baseline"


def _level(recipe: list[dict]) -> float:
    """The first parameter of the first step (sparsity, clusters, ...) when it is a number."""
    if not recipe:
        return float("nan")
    params = next(iter(recipe[0].values())) or {}
    first = next(iter(params.values()), None)
    return float(first) if isinstance(first, (int, float)) and not isinstance(first, bool) else float("nan")


# ----------------------------------------------------------------------------- tables
def group_table(res: StudyResults) -> pd.DataFrame:
    """Per variant, attribute and group: test images, accuracy mean and std over the population,
    and a Wilson 95 % interval (None where the group has fewer than MIN_GROUP images). One MetricFrame
    per attribute covers every model, grouped by (group, run)."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    runs = res.variants.run_id.to_numpy()
    variant_of = dict(zip(res.variants.run_id, res.variants.variant))
    rows = []
    for attr, names in res.groups.items():
        known = res.codes[attr] >= 0
        sens = np.array(names, dtype=object)[res.codes[attr][known]]
        y_true = np.tile(res.y_true[known], len(runs))
        y_pred = np.concatenate([res.preds[r][known] for r in runs])
        features = pd.DataFrame({attr: np.tile(sens, len(runs)), "run": np.repeat(runs, known.sum())})
        by = MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred, sensitive_features=features).by_group
        acc = by.rename("accuracy").reset_index().assign(variant=lambda d: d.run.map(variant_of))
        counts = pd.Series(sens).value_counts()
        stats = acc.groupby(["variant", attr], sort=False).accuracy.agg(["mean", "std", "size"])
        for variant in dict.fromkeys(res.variants.variant):
            for g in names:
                if (variant, g) not in stats.index:
                    continue
                mean, std, models = stats.loc[(variant, g)]
                n = int(counts.get(g, 0))
                lo, hi = F.wilson_interval(mean * n, n) if n >= F.MIN_GROUP else (np.nan, np.nan)
                rows.append({"variant": variant, "attribute": attr, "group": g, "n": n, "models": int(models),
                             "accuracy": float(mean), "std": float(std) if models > 1 else 0.0,
                             "ci_low": float(lo), "ci_high": float(hi), "too_few": n < F.MIN_GROUP})
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def gap_table(res: StudyResults, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant and attribute: gap and ratio of group accuracies, Overall Disparity, and the change
    of the gap against the baseline with a paired bootstrap 95 % interval (significant if it excludes 0).
    Groups with fewer than MIN_GROUP test images are left out of the gap."""
    base_ok = res.population(BASELINE) == res.y_true
    per_attr = {}  # what does not depend on the variant: kept groups, their codes, the baseline's gap
    for attr, names in res.groups.items():
        hits_b, n = F.group_accuracy(base_ok, res.codes[attr], len(names))
        ok = n >= F.MIN_GROUP
        if ok.sum() < 2:
            continue
        remap = np.full(len(names), -1)
        remap[ok] = np.arange(ok.sum())
        kept = np.where(res.codes[attr] >= 0, remap[res.codes[attr].clip(0)], -1)  # codes among kept groups
        per_attr[attr] = (ok, n[ok], kept, F.gap(hits_b[:, ok] / n[ok], n[ok]).mean())
    rows = []
    for variant in dict.fromkeys(res.variants.variant):
        pop = res.population(variant)
        var_ok = pop == res.y_true
        for attr, (ok, n, kept, gap_b) in per_attr.items():
            codes, k = res.codes[attr], len(res.groups[attr])
            acc_v = F.group_accuracy(var_ok, codes, k)[0][:, ok] / n
            gap_v = F.gap(acc_v, n)
            if variant == BASELINE:
                lo = hi = delta = 0.0
            else:
                boot = F.paired_gap_bootstrap(base_ok, var_ok, kept, int(ok.sum()), res.subjects, n_boot, seed)
                delta = float(gap_v.mean() - gap_b)
                lo, hi = (float(q) for q in np.nanquantile(boot, [0.025, 0.975]))
            disparity = np.mean([F.overall_disparity(res.y_true, p, codes, k, len(res.class_names)) for p in pop])
            rows.append({"variant": variant, "attribute": attr, "groups": int(ok.sum()), "gap": float(gap_v.mean()),
                         "gap_std": float(gap_v.std(ddof=1)) if len(pop) > 1 else 0.0,
                         "ratio": float(np.mean(acc_v.min(1) / np.maximum(acc_v.max(1), 1e-12))),
                         "overall_disparity": float(disparity), "gap_change": delta, "ci_low": lo, "ci_high": hi,
                         "significant": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows, columns=GAP_COLUMNS)


def mcnemar_table(res: StudyResults) -> pd.DataFrame:
    """Per variant, attribute and group: exact McNemar test of the baseline population's modal
    prediction against the variant's, on the group's images; Holm-adjusted across the whole study."""
    k = len(res.class_names)
    base_ok = F.modal(res.population(BASELINE), k) == res.y_true
    rows = []
    for variant in dict.fromkeys(res.variants.variant):
        if variant == BASELINE:
            continue
        var_ok = F.modal(res.population(variant), k) == res.y_true
        for attr in res.attributes:
            for g, name in enumerate(res.groups[attr]):
                m = res.codes[attr] == g
                n = int(m.sum())
                p = F.mcnemar_exact(base_ok[m], var_ok[m]) if n >= F.MIN_GROUP else np.nan
                rows.append({"variant": variant, "attribute": attr, "group": name, "n": n,
                             "baseline_acc": float(base_ok[m].mean()) if n else np.nan, "variant_acc": float(var_ok[m].mean()) if n else np.nan,
                             "lost": int((base_ok[m] & ~var_ok[m]).sum()), "gained": int((~base_ok[m] & var_ok[m]).sum()), "p": p})
    out = pd.DataFrame(rows, columns=["variant", "attribute", "group", "n", "baseline_acc", "variant_acc", "lost", "gained", "p"])
    out["p_holm"] = F.holm(out.p.to_numpy(dtype=float))
    out["significant"] = out.p_holm < 0.05
    return out


def error_change_table(res: StudyResults) -> pd.DataFrame:
    """Blakeney et al.'s CEV and SDE of each variant against the baseline, over all images and within
    each group (per-class rates averaged over each population)."""
    k = len(res.class_names)

    def rates(pop: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = [F.class_rates(res.y_true[m], p[m], k) for p in pop]
        return np.nanmean([a for a, _ in r], 0), np.nanmean([b for _, b in r], 0)

    base = res.population(BASELINE)
    rows = []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of classes absent from a group
        for variant in dict.fromkeys(res.variants.variant):
            if variant == BASELINE:
                continue
            pop = res.population(variant)
            everyone = np.ones(len(res.y_true), bool)
            cev, sde = F.cev_sde(rates(base, everyone), rates(pop, everyone))
            rows.append({"variant": variant, "attribute": "all", "group": "all", "cev": cev, "sde": sde})
            for attr in res.attributes:
                for g, name in enumerate(res.groups[attr]):
                    m = res.codes[attr] == g
                    if m.sum() >= F.MIN_GROUP:
                        cev, sde = F.cev_sde(rates(base, m), rates(pop, m))
                        rows.append({"variant": variant, "attribute": attr, "group": name, "cev": cev, "sde": sde})
    return pd.DataFrame(rows)


def class_rate_table(res: StudyResults) -> pd.DataFrame:
    """Per variant and class: the baseline's and the variant's false positive and false negative
    rates (one-vs-rest, averaged over each population) and their relative changes, the terms CEV and
    SDE are built from; relative changes are left empty where the baseline rate is 0."""
    k = len(res.class_names)

    def rates(pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = [F.class_rates(res.y_true, p, k) for p in pop]
        return np.mean([a for a, _ in r], 0), np.mean([b for _, b in r], 0)

    bf, bn = rates(res.population(BASELINE))
    rows = []
    for variant in dict.fromkeys(res.variants.variant):
        if variant == BASELINE:
            continue
        vf, vn = rates(res.population(variant))
        for c, name in enumerate(res.class_names):
            rows.append({"variant": variant, "class": name, "baseline_fpr": bf[c], "variant_fpr": vf[c], "baseline_fnr": bn[c],
                         "variant_fnr": vn[c], "rel_change_fpr": (vf[c] - bf[c]) / bf[c] if bf[c] > 0 else np.nan,
                         "rel_change_fnr": (vn[c] - bn[c]) / bn[c] if bn[c] > 0 else np.nan})
    return pd.DataFrame(rows)


def exemplar_table(res: StudyResults) -> pd.DataFrame:
    """Compression-identified exemplars per variant: how many, the baseline's and the variant's
    accuracy on them, and each group's share among them against its share of the test set."""
    k = len(res.class_names)
    base = res.population(BASELINE)
    base_modal = F.modal(base, k)
    rows = []
    for variant in dict.fromkeys(res.variants.variant):
        if variant == BASELINE:
            continue
        pop = res.population(variant)
        var_modal = F.modal(pop, k)
        cie = var_modal != base_modal  # compression-identified exemplars (Hooker et al.)
        row = {"variant": variant, "baseline_models": len(base), "variant_models": len(pop), "exemplars": int(cie.sum()),
               "share": float(cie.mean()),
               "baseline_acc_on_them": float((base_modal[cie] == res.y_true[cie]).mean()) if cie.any() else np.nan,
               "variant_acc_on_them": float((var_modal[cie] == res.y_true[cie]).mean()) if cie.any() else np.nan}
        for attr in res.attributes:
            for g, name in enumerate(res.groups[attr]):
                in_g = res.codes[attr] == g
                row[f"{attr}:{name} share"] = float(in_g[cie].mean()) if cie.any() else np.nan
                row[f"{attr}:{name} test share"] = float(in_g.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def class_group_recall(res: StudyResults, variant: str) -> pd.DataFrame:
    """Recall per class within each group of each attribute, averaged over the variant's population."""
    pop = res.population(variant)
    rows = []
    for attr in res.attributes:
        for g, name in enumerate(res.groups[attr]):
            for c, cname in enumerate(res.class_names):
                m = (res.codes[attr] == g) & (res.y_true == c)
                if m.any():
                    rows.append({"attribute": attr, "group": name, "class": cname, "n": int(m.sum()),
                                 "recall": float(np.mean([(p[m] == c).mean() for p in pop]))})
    return pd.DataFrame(rows, columns=["attribute", "group", "class", "n", "recall"])
