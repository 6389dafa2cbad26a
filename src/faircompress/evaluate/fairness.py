"""Fairness measures and the statistics that say which changes are real (torch-free, vectorised).

Sources: Wilson (1927) score interval; McNemar's exact (binomial) test; Holm (1979) step-down
correction; Blakeney et al. (2021) CEV and SDE; Dominguez-Catena et al. Overall Disparity;
Hooker et al. (2020) compression-identified exemplars.
"""
from __future__ import annotations

import math

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
    b = int(np.sum(base_correct & ~var_correct))
    c = int(np.sum(~base_correct & var_correct))
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
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


def paired_gap_bootstrap(base_correct: np.ndarray, var_correct: np.ndarray, groups: np.ndarray, n_groups: int,
                         units: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of gap(variant) - gap(baseline) on the same test images.

    base_correct (Rb, N), var_correct (Rv, N): correctness of each model of each population.
    units (N,): what is resampled (subject ids, or image ids where a dataset has none); both models
    see the same resample (paired). Each replicate also draws one model from each population, so
    the spread holds both the test-sampling and the fine-tuning (or seed) variation."""
    rng = np.random.default_rng(seed)
    known = groups >= 0
    _, unit = np.unique(units[known], return_inverse=True)
    g = groups[known]
    n_units = unit.max() + 1 if len(unit) else 0
    cell = unit * n_groups + g  # (unit, group) cell of each image
    counts = np.bincount(cell, minlength=n_units * n_groups).reshape(n_units, n_groups)
    weights = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=n_boot).astype(float)  # (B, U)
    denom = weights @ counts  # (B, G)

    def gaps(correct: np.ndarray) -> np.ndarray:
        correct = np.atleast_2d(correct)[:, known].astype(float)
        pick = rng.integers(0, len(correct), n_boot)
        acc = np.empty((n_boot, n_groups))
        for r in range(len(correct)):
            hits = np.bincount(cell, weights=correct[r], minlength=n_units * n_groups).reshape(n_units, n_groups)
            sel = pick == r
            with np.errstate(invalid="ignore", divide="ignore"):
                acc[sel] = (weights[sel] @ hits) / denom[sel]
        return gap(acc, denom)

    return gaps(var_correct) - gaps(base_correct)


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
