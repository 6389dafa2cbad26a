"""Fairness measures and the statistics that say which changes are real (torch-free, vectorised).

Sources: Wilson (1927) score interval; McNemar's exact (binomial) test; Holm (1979) step-down
correction; Blakeney et al. (2021) CEV and SDE; Dominguez-Catena et al. Overall Disparity;
Hooker et al. (2020) compression-identified exemplars.

Images of one subject are not independent (CK+ gives a neutral and three near-identical peak frames
per sequence), so where a dataset has subject ids every interval and test resamples or permutes
subjects, not images: the cluster bootstrap (Davison & Hinkley 1997, §3.8; Field & Welsh 2007) for
accuracies and gap changes, and a subject-level sign-flip permutation test of paired correctness (a
cluster version of McNemar's test; with one image per subject it is exactly McNemar's). Only where
every subject has a single image (no subject ids) do the image-level Wilson and McNemar apply.
A model population (fine-tuning repeats, baseline seeds) is resampled too, so an interval is for the
population-mean quantity the point estimate shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_GROUP = 5  # fewer test images than this: no interval, no test (shown as "too few")


def wilson_interval(k: np.ndarray | float, n: np.ndarray | float, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes in n trials (k may be fractional: a mean over repeats)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)


def mcnemar_exact(base_correct: np.ndarray, var_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    return sign_test(int(np.sum(base_correct & ~var_correct)), int(np.sum(~base_correct & var_correct)))


def sign_test(lost: int, gained: int) -> float:
    """Two-sided exact binomial (sign) test of ``lost`` against ``gained`` changes."""
    n = lost + gained
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(lost, gained) + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error control); NaN entries stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def group_accuracy(correct: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (hits, counts) for correct (R, N) or (N,); unknown groups (< 0) ignored. hits is (R, G)."""
    correct = np.atleast_2d(correct).astype(float)
    known = groups >= 0
    counts = np.bincount(groups[known], minlength=n_groups).astype(float)
    hits = np.stack([np.bincount(groups[known], weights=c[known], minlength=n_groups) for c in correct])
    return hits, counts


def gap(acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """max - min over the groups that have images (last axis)."""
    acc = np.where(counts > 0, acc, np.nan)
    return np.nanmax(acc, axis=-1) - np.nanmin(acc, axis=-1)


def has_clusters(units: np.ndarray) -> bool:
    """Whether some unit (subject) holds more than one image: then images are not independent."""
    return len(np.unique(units)) < len(units)


@dataclass(frozen=True)
class ClusterResample:
    """Bootstrap weights of units (subjects) and of each population's models, shared by every
    quantity computed from one resample (so a paired comparison sees the same draw)."""

    cell: np.ndarray     # (N_known,) (unit, group) cell of each image with a known group
    known: np.ndarray    # (N,) bool
    counts: np.ndarray   # (U, G) images per cell
    weights: np.ndarray  # (B, U) how often each unit is drawn
    rng: np.random.Generator

    @classmethod
    def draw(cls, groups: np.ndarray, n_groups: int, units: np.ndarray, n_boot: int, seed: int) -> "ClusterResample":
        rng = np.random.default_rng(seed)
        known = groups >= 0
        _, unit = np.unique(units[known], return_inverse=True)
        n_units = int(unit.max()) + 1 if len(unit) else 0
        cell = unit * n_groups + groups[known]
        counts = np.bincount(cell, minlength=n_units * n_groups).reshape(n_units, n_groups).astype(float)
        weights = rng.multinomial(n_units, np.full(n_units, 1 / max(n_units, 1)), size=n_boot).astype(float)
        return cls(cell, known, counts, weights, rng)

    def group_accuracy(self, correct: np.ndarray) -> np.ndarray:
        """(B, R, G) accuracy of each model on each group in each resample."""
        correct = np.atleast_2d(correct)[:, self.known].astype(float)
        U, G = self.counts.shape
        hits = np.stack([np.bincount(self.cell, weights=c, minlength=U * G).reshape(U, G) for c in correct])  # (R, U, G)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.einsum("bu,rug->brg", self.weights, hits) / (self.weights @ self.counts)[:, None, :]

    def model_weights(self, n_models: int) -> np.ndarray:
        """(B, R) resampled share of each model: the population mean is taken with these."""
        return self.rng.multinomial(n_models, np.full(n_models, 1 / n_models), size=len(self.weights)) / n_models

    def denominators(self) -> np.ndarray:
        return self.weights @ self.counts  # (B, G)


def cluster_accuracy_interval(correct: np.ndarray, groups: np.ndarray, n_groups: int, units: np.ndarray,
                              n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95 % interval of each group's population-mean accuracy, resampling units and models.
    correct (R, N): correctness of each model of the population."""
    rs = ClusterResample.draw(groups, n_groups, units, n_boot, seed)
    acc = rs.group_accuracy(correct)  # (B, R, G)
    mean = np.einsum("br,brg->bg", rs.model_weights(acc.shape[1]), np.nan_to_num(acc))
    mean[np.isnan(acc).any(1)] = np.nan  # a resample without the group's subjects says nothing about it
    lo, hi = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    seen = np.isfinite(mean).any(0)
    if seen.any():
        lo[seen], hi[seen] = np.nanquantile(mean[:, seen], [0.025, 0.975], axis=0)
    return lo, hi


def paired_gap_bootstrap(base_correct: np.ndarray, var_correct: np.ndarray, groups: np.ndarray, n_groups: int,
                         units: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the change of the population-mean gap, mean over variant models of
    gap(variant) minus mean over baseline models of gap(baseline), on the same test images.

    base_correct (Rb, N), var_correct (Rv, N): correctness of each model of each population.
    units (N,): what is resampled (subject ids, or image ids where a dataset has none); both
    populations see the same resample (paired). Each population's models are resampled too, so the
    spread holds both the test-sampling and the fine-tuning (or seed) variation of the mean."""
    rs = ClusterResample.draw(groups, n_groups, units, n_boot, seed)
    denom = rs.denominators()

    def mean_gap(correct: np.ndarray) -> np.ndarray:
        acc = rs.group_accuracy(correct)  # (B, R, G)
        gaps = gap(acc, denom[:, None, :])  # (B, R)
        return np.einsum("br,br->b", rs.model_weights(gaps.shape[1]), gaps)

    return mean_gap(var_correct) - mean_gap(base_correct)


def paired_accuracy_bootstrap(base_correct: np.ndarray, var_correct: np.ndarray, units: np.ndarray,
                              n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of the change of population-mean accuracy (variant minus baseline) on the
    same test images: units (subjects, or images) and each population's models resampled, paired as in
    `paired_gap_bootstrap`. correct arrays: (R, N)."""
    rs = ClusterResample.draw(np.zeros(len(units), dtype=np.int64), 1, units, n_boot, seed)

    def mean_accuracy(correct: np.ndarray) -> np.ndarray:
        acc = rs.group_accuracy(correct)[:, :, 0]  # (B, R)
        return np.einsum("br,br->b", rs.model_weights(acc.shape[1]), acc)

    return mean_accuracy(var_correct) - mean_accuracy(base_correct)


def bootstrap_p(estimate: float, boot: np.ndarray) -> float:
    """Two-sided p-value of 'no change' from a bootstrap distribution, by the normal approximation
    with the bootstrap standard error (percentile p-values cannot go below 1 / B, too coarse for a
    study-wide Holm correction)."""
    se = float(np.nanstd(boot, ddof=1)) if np.isfinite(boot).sum() > 1 else float("nan")
    return normal_p(estimate, se)


def normal_p(estimate: float, se: float) -> float:
    """Two-sided p-value of 'no change' for an estimate with standard error ``se`` (normal approximation)."""
    if not se > 0:
        return 1.0 if estimate == 0 else float("nan")
    return float(math.erfc(abs(estimate) / se / math.sqrt(2)))


def cluster_permutation_test(base_correct: np.ndarray, var_correct: np.ndarray, units: np.ndarray,
                             n_perm: int = 20000, seed: int = 0, exact_up_to: int = 14) -> float:
    """Two-sided p-value that baseline and variant are equally often right, swapping the two models'
    answers subject by subject (sign flips of each subject's net change). Exact over all flips when
    at most ``exact_up_to`` subjects change, else Monte Carlo with ``n_perm`` flips."""
    _, unit = np.unique(units, return_inverse=True)
    d = np.bincount(unit, weights=var_correct.astype(float) - base_correct.astype(float))
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    observed = abs(d.sum())
    if np.all(np.abs(d) == abs(d[0])):  # every changed subject changed by the same amount: the flips are binomial
        return sign_test(int((d < 0).sum()), int((d > 0).sum()))
    if len(d) <= exact_up_to:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)  # every sign pattern
        return float(np.mean(np.abs(signs @ d) >= observed - 1e-9))
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(d)))
    return float((1 + np.sum(np.abs(signs @ d) >= observed - 1e-9)) / (1 + n_perm))


def overall_disparity(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_groups: int, n_classes: int) -> float:
    """Mean over classes of (1 / (|G| - 1)) * sum_g (1 - recall_{g,y} / max_g' recall_{g',y})
    (Dominguez-Catena et al. 2022), over the groups with codes >= 0 (give -1 to groups too small to
    judge) that have images of the class. A class that no group recalls at all counts as 0, as in the
    authors' code; a class with images from fewer than two groups is left out."""
    known = groups >= 0
    terms = []
    for y in range(n_classes):
        m = known & (y_true == y)
        n = np.bincount(groups[m], minlength=n_groups)
        hit = np.bincount(groups[m], weights=(y_pred[m] == y), minlength=n_groups)
        present = n > 0
        if present.sum() < 2:
            continue
        recall = hit[present] / n[present]
        terms.append(0.0 if recall.max() == 0 else np.sum(1 - recall / recall.max()) / (present.sum() - 1))
    return float(np.mean(terms)) if terms else float("nan")


def class_rates(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest false positive and false negative rates per class (NaN where undefined)."""
    fpr, fnr = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
    for y in range(n_classes):
        pos, neg = y_true == y, y_true != y
        if pos.any():
            fnr[y] = np.mean(y_pred[pos] != y)
        if neg.any():
            fpr[y] = np.mean(y_pred[neg] == y)
    return fpr, fnr


def cev_sde(base: tuple[np.ndarray, np.ndarray], variant: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Blakeney et al.'s Combined Error Variance and Symmetric Distance Error between a baseline's
    and a variant's per-class (FPR, FNR). Classes whose baseline FPR or FNR is 0 (or undefined) are
    left out: the relative change is not defined there."""
    (bf, bn), (vf, vn) = base, variant
    ok = (bf > 0) & (bn > 0) & ~np.isnan(vf) & ~np.isnan(vn)
    if not ok.any():
        return float("nan"), float("nan")
    dfpr, dfnr = (vf[ok] - bf[ok]) / bf[ok], (vn[ok] - bn[ok]) / bn[ok]
    mean = np.array([dfpr.mean(), dfnr.mean()])
    cev = float(np.mean((dfpr - mean[0]) ** 2 + (dfnr - mean[1]) ** 2))
    sde = float(np.mean(np.abs(dfnr - dfpr)))
    return cev, sde


NO_MODE = -1  # a tie for the most frequent prediction


def modal(preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Most frequent prediction per image over a population (R, N); `NO_MODE` where two or more
    classes tie (e.g. three repeats that all disagree), rather than an arbitrary winner: breaking
    ties towards the lowest class would favour CK+'s 'neutral'."""
    preds = np.atleast_2d(preds)
    votes = np.zeros((n_classes, preds.shape[1]), dtype=np.int64)
    for row in preds:
        votes[row, np.arange(preds.shape[1])] += 1
    top = votes.max(0)
    return np.where((votes == top).sum(0) > 1, NO_MODE, votes.argmax(0))


def compression_identified(base_preds: np.ndarray, var_preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Hooker et al.'s compression-identified exemplars: images whose modal prediction over the
    variant's population differs from the modal prediction over the baseline population. A population
    with no mode on an image (a tie) does not agree with the other's label, so the image counts."""
    return modal(var_preds, n_classes) != modal(base_preds, n_classes)
