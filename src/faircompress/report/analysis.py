"""From a study's stored predictions to evidence: group accuracies with intervals, gap changes with
paired bootstrap intervals and Holm-corrected p-values, paired tests per group (Holm-corrected across
the study), all subject-clustered where subjects have several images; CEV/SDE, Overall
Disparity and compression-identified exemplars. Reads only the results store (no torch, no images).

The baseline population is the fp32 export of every baseline seed (the reference variant); a
variant's population is all of its repeats over all baselines (see `results.py`). Group accuracies and their grouping come from fairlearn's
MetricFrame; the resampling is vectorised here, since MetricFrame is too slow inside a bootstrap.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..evaluate import fairness as F
from ..evaluate.power import detectable_change
from .results import StudyResults, Variant, load_results

__all__ = ["StudyResults", "Variant", "load_results"]  # re-exported: the tables below read these

GROUP_COLUMNS = ["variant", "attribute", "group", "n", "models", "accuracy", "std", "ci_low", "ci_high", "too_few", "interval"]
GAP_COLUMNS = ["variant", "attribute", "groups", "gap", "gap_std", "ratio", "overall_disparity", "gap_change", "ci_low", "ci_high",
               "p", "p_holm", "significant", "se", "detectable", "resampled"]


# ----------------------------------------------------------------------------- tables
def reference(res: StudyResults) -> Variant:
    ref = res.reference
    if ref is None:
        raise ValueError("no finished reference variant (the baseline's fp32 export): every comparison needs it")
    return ref


WILSON, CLUSTER_BOOTSTRAP = "Wilson (images independent)", "subject bootstrap"
MCNEMAR, CLUSTER_PERMUTATION = "exact McNemar (images independent)", "subject sign-flip permutation"


def interval_method(res: StudyResults) -> str:
    """Subject-clustered where a subject has several images, else image-level (see evaluate/fairness.py)."""
    return CLUSTER_BOOTSTRAP if F.has_clusters(res.subjects) else WILSON


def group_table(res: StudyResults, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant, attribute and group: test images, accuracy mean and std over the population, and
    a 95 % interval of the population mean: a subject bootstrap (subjects and models resampled) where
    subjects have several images, else Wilson's; none where the group has fewer than MIN_GROUP images."""
    run_ids = [r for v in res.variants for r in v.run_ids]
    key_of = {r: v.key for v in res.variants for r in v.run_ids}
    method = interval_method(res)
    rows = []
    for attr, names in res.groups.items():
        acc = group_accuracies(res, attr, run_ids).assign(key=lambda d: d.run.map(key_of))
        stats = acc.groupby(["key", attr], sort=False).accuracy.agg(["mean", "std", "size"])
        counts = pd.Series(np.array(names, dtype=object)[res.codes[attr][res.codes[attr] >= 0]]).value_counts()
        for variant in res.variants:
            lo, hi = _intervals(res, variant, attr, stats, counts, method, n_boot, seed)
            for g, name in enumerate(names):
                if (variant.key, name) not in stats.index:
                    continue
                mean, std, models = stats.loc[(variant.key, name)]
                n = int(counts.get(name, 0))
                rows.append({"variant": variant.label, "attribute": attr, "group": name, "n": n, "models": int(models),
                             "accuracy": float(mean), "std": float(std) if models > 1 else 0.0,
                             "ci_low": float(lo[g]), "ci_high": float(hi[g]), "too_few": n < F.MIN_GROUP, "interval": method})
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def overall_interval(res: StudyResults, variant: Variant, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of a variant's population-mean accuracy over the whole test set (`interval_method`)."""
    correct = res.population(variant) == res.y_true
    if interval_method(res) == CLUSTER_BOOTSTRAP:
        lo, hi = F.cluster_accuracy_interval(correct, np.zeros(len(res.y_true), int), 1, res.subjects, n_boot, seed)
        return float(lo[0]), float(hi[0])
    lo, hi = F.wilson_interval(correct.mean() * len(res.y_true), len(res.y_true))
    return float(lo), float(hi)


def _intervals(res: StudyResults, variant: Variant, attr: str, stats: pd.DataFrame, counts: pd.Series, method: str,
               n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's interval (NaN for groups under MIN_GROUP images)."""
    names = res.groups[attr]
    n = np.array([counts.get(g, 0) for g in names])
    if method == CLUSTER_BOOTSTRAP:
        lo, hi = F.cluster_accuracy_interval(res.population(variant) == res.y_true, res.codes[attr], len(names), res.subjects,
                                             n_boot, seed)
    else:
        mean = np.array([stats["mean"].get((variant.key, g), np.nan) for g in names])
        lo, hi = F.wilson_interval(mean * n, n)
    small = n < F.MIN_GROUP
    return np.where(small, np.nan, lo), np.where(small, np.nan, hi)


def group_accuracies(res: StudyResults, attr: str, run_ids: list[str]) -> pd.DataFrame:
    """Accuracy of each given run on each of ``attr``'s groups, long (columns run, <attr>, accuracy):
    one fairlearn MetricFrame over every model, grouped by (group, run); computed once per load."""
    key = ("group_accuracies", attr, tuple(run_ids))
    if key not in res.memo:
        res.memo[key] = _group_accuracies(res, attr, run_ids)
    return res.memo[key].copy()


def _group_accuracies(res: StudyResults, attr: str, run_ids: list[str]) -> pd.DataFrame:
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    known = res.codes[attr] >= 0
    sens = np.array(res.groups[attr], dtype=object)[res.codes[attr][known]]
    y_true = np.tile(res.y_true[known], len(run_ids))
    y_pred = np.concatenate([res.preds[r][known] for r in run_ids])
    features = pd.DataFrame({attr: np.tile(sens, len(run_ids)), "run": np.repeat(run_ids, known.sum())})
    by = MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred, sensitive_features=features).by_group
    return by.rename("accuracy").reset_index()


@dataclass(frozen=True)
class GapGroups:
    """An attribute's groups that count for its gap (at least MIN_GROUP test images each)."""

    ok: np.ndarray      # (groups,) bool
    n: np.ndarray       # (kept,) test images per kept group
    kept: np.ndarray    # (N,) codes among the kept groups, -1 elsewhere


def gap_groups(res: StudyResults) -> dict[str, GapGroups]:
    """Per attribute with at least two groups of MIN_GROUP test images: the groups its gap is over."""
    out = {}
    for attr, names in res.groups.items():
        n = np.bincount(res.codes[attr][res.codes[attr] >= 0], minlength=len(names))
        ok = n >= F.MIN_GROUP
        if ok.sum() < 2:
            continue
        remap = np.full(len(names), -1)
        remap[ok] = np.arange(ok.sum())
        out[attr] = GapGroups(ok, n[ok], np.where(res.codes[attr] >= 0, remap[res.codes[attr].clip(0)], -1))
    return out


def model_gaps(res: StudyResults, pop: np.ndarray, attr: str, gg: GapGroups) -> tuple[np.ndarray, np.ndarray]:
    """Per model of a population: the gap (max − min group accuracy) and the kept groups' accuracies."""
    acc = F.group_accuracy(pop == res.y_true, res.codes[attr], len(res.groups[attr]))[0][:, gg.ok] / gg.n
    return F.gap(acc, gg.n), acc


def gap_table(res: StudyResults, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per variant and attribute: gap and ratio of group accuracies, Overall Disparity, and the change
    of the population-mean gap against the reference with a paired bootstrap 95 % interval (subjects,
    or images where there are none, and models resampled); p from the bootstrap standard error,
    Holm-adjusted across every gap change of the study, and significant when that is below 0.05.
    Groups with fewer than MIN_GROUP test images are left out of the gap."""
    base = res.population(reference(res))
    per_attr = {a: (gg, model_gaps(res, base, a, gg)[0].mean()) for a, gg in gap_groups(res).items()}
    rows = []
    for variant in res.variants:
        pop = res.population(variant)
        for attr, (gg, gap_b) in per_attr.items():
            gap_v, acc_v = model_gaps(res, pop, attr, gg)
            delta, lo, hi, p, se = 0.0, 0.0, 0.0, np.nan, np.nan
            if not variant.is_reference:
                boot = F.paired_gap_bootstrap(base == res.y_true, pop == res.y_true, gg.kept, int(gg.ok.sum()), res.subjects,
                                              n_boot, seed)
                delta = float(gap_v.mean() - gap_b)
                lo, hi = (float(q) for q in np.nanquantile(boot, [0.025, 0.975]))
                p, se = F.bootstrap_p(delta, boot), float(np.nanstd(boot, ddof=1))
            k = int(gg.ok.sum())  # the groups the gap is over: too small ones are left out here too
            disparity = np.mean([F.overall_disparity(res.y_true, p, gg.kept, k, len(res.class_names)) for p in pop])
            rows.append({"variant": variant.label, "attribute": attr, "groups": int(gg.ok.sum()), "gap": float(gap_v.mean()),
                         "gap_std": float(gap_v.std(ddof=1)) if len(pop) > 1 else 0.0,
                         "ratio": float(np.mean(acc_v.min(1) / np.maximum(acc_v.max(1), 1e-12))),
                         "overall_disparity": float(disparity), "gap_change": delta, "ci_low": lo, "ci_high": hi, "p": p, "se": se,
                         "detectable": float(detectable_change(se)) if np.isfinite(se) else np.nan})
    out = pd.DataFrame(rows, columns=GAP_COLUMNS)
    out["p_holm"] = F.holm(out.p.to_numpy(dtype=float))  # every gap change of the study: singles and intersections
    out["significant"] = (out.p_holm < 0.05).astype(bool)
    out["resampled"] = "subjects and models" if F.has_clusters(res.subjects) else "images and models"
    return out


def power_table(res: StudyResults, gaps: pd.DataFrame) -> pd.DataFrame:
    """Per attribute: the smallest gap change the study could detect with 80 % power (two-sided α 0.05),
    from the bootstrap standard errors of its gap changes (test subjects and the spread between repeats):
    alone, and after the study-wide correction over every gap change (Bonferroni bound on Holm); beside
    the largest change it did see."""
    tested = gaps[gaps.p.notna()]
    rows = []
    for attr in res.attributes:
        g = tested[(tested.attribute == attr) & np.isfinite(tested.se)]
        if g.empty:
            continue
        se = float(g.se.median())
        rows.append({"attribute": attr, "variants": len(g), "median_se": se, "detectable": float(detectable_change(se)),
                     "detectable_after_correction": float(detectable_change(se, tests=len(tested))),
                     "largest_change": float(g.gap_change.abs().max()), "significant": int(g.significant.sum())})
    return pd.DataFrame(rows, columns=["attribute", "variants", "median_se", "detectable", "detectable_after_correction",
                                       "largest_change", "significant"])


def mcnemar_table(res: StudyResults, seed: int = 0) -> pd.DataFrame:
    """Per variant, attribute and group: a paired test of the baseline population's modal prediction
    against the variant's on the group's images (subject sign-flip permutation where subjects have
    several images, else exact McNemar); Holm-adjusted across the whole study. A population with no
    mode on an image (a tie) counts as wrong there."""
    k = len(res.class_names)
    clustered = F.has_clusters(res.subjects)
    base_ok = F.modal(res.population(reference(res)), k) == res.y_true
    rows = []
    for variant in res.variants:
        if variant.is_reference:
            continue
        var_ok = F.modal(res.population(variant), k) == res.y_true
        for attr in res.attributes:
            for g, name in enumerate(res.groups[attr]):
                m = res.codes[attr] == g
                n = int(m.sum())
                p = np.nan
                if n >= F.MIN_GROUP:
                    p = (F.cluster_permutation_test(base_ok[m], var_ok[m], res.subjects[m], seed=seed) if clustered
                         else F.mcnemar_exact(base_ok[m], var_ok[m]))
                rows.append({"variant": variant.label, "attribute": attr, "group": name, "n": n,
                             "baseline_acc": float(base_ok[m].mean()) if n else np.nan, "variant_acc": float(var_ok[m].mean()) if n else np.nan,
                             "lost": int((base_ok[m] & ~var_ok[m]).sum()), "gained": int((~base_ok[m] & var_ok[m]).sum()), "p": p})
    out = pd.DataFrame(rows, columns=["variant", "attribute", "group", "n", "baseline_acc", "variant_acc", "lost", "gained", "p"])
    out["p_holm"] = F.holm(out.p.to_numpy(dtype=float))
    out["significant"] = out.p_holm < 0.05
    out["test"] = CLUSTER_PERMUTATION if clustered else MCNEMAR
    return out


def error_change_table(res: StudyResults) -> pd.DataFrame:
    """Blakeney et al.'s CEV and SDE of each variant against the baseline, over all images and within
    each group (per-class rates averaged over each population)."""
    k = len(res.class_names)

    def rates(pop: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = [F.class_rates(res.y_true[m], p[m], k) for p in pop]
        return np.nanmean([a for a, _ in r], 0), np.nanmean([b for _, b in r], 0)

    base = res.population(reference(res))
    rows = []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of classes absent from a group
        for variant in res.variants:
            if variant.is_reference:
                continue
            pop = res.population(variant)
            everyone = np.ones(len(res.y_true), bool)
            cev, sde = F.cev_sde(rates(base, everyone), rates(pop, everyone))
            rows.append({"variant": variant.label, "attribute": "all", "group": "all", "cev": cev, "sde": sde})
            for attr in res.attributes:
                for g, name in enumerate(res.groups[attr]):
                    m = res.codes[attr] == g
                    if m.sum() >= F.MIN_GROUP:
                        cev, sde = F.cev_sde(rates(base, m), rates(pop, m))
                        rows.append({"variant": variant.label, "attribute": attr, "group": name, "cev": cev, "sde": sde})
    return pd.DataFrame(rows)


def class_rate_table(res: StudyResults) -> pd.DataFrame:
    """Per variant and class: the baseline's and the variant's false positive and false negative
    rates (one-vs-rest, averaged over each population) and their relative changes, the terms CEV and
    SDE are built from; relative changes are left empty where the baseline rate is 0."""
    k = len(res.class_names)

    def rates(pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = [F.class_rates(res.y_true, p, k) for p in pop]
        return np.mean([a for a, _ in r], 0), np.mean([b for _, b in r], 0)

    bf, bn = rates(res.population(reference(res)))
    rows = []
    for variant in res.variants:
        if variant.is_reference:
            continue
        vf, vn = rates(res.population(variant))
        for c, name in enumerate(res.class_names):
            rows.append({"variant": variant.label, "class": name, "baseline_fpr": bf[c], "variant_fpr": vf[c], "baseline_fnr": bn[c],
                         "variant_fnr": vn[c], "rel_change_fpr": (vf[c] - bf[c]) / bf[c] if bf[c] > 0 else np.nan,
                         "rel_change_fnr": (vn[c] - bn[c]) / bn[c] if bn[c] > 0 else np.nan})
    return pd.DataFrame(rows)


def exemplar_table(res: StudyResults) -> pd.DataFrame:
    """Compression-identified exemplars per variant: how many, the baseline's and the variant's
    accuracy on them, and each group's share among them against its share of the test set."""
    k = len(res.class_names)
    base = res.population(reference(res))
    base_modal = F.modal(base, k)
    rows = []
    for variant in res.variants:
        if variant.is_reference:
            continue
        pop = res.population(variant)
        var_modal = F.modal(pop, k)
        cie = var_modal != base_modal  # compression-identified exemplars (Hooker et al.)
        row = {"variant": variant.label, "baseline_models": len(base), "variant_models": len(pop), "exemplars": int(cie.sum()),
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


def class_group_recall(res: StudyResults, variant: Variant) -> pd.DataFrame:
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
