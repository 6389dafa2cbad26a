"""Resampling statistics over test subjects (torch-free, vectorised)."""
from __future__ import annotations

import numpy as np


def subject_bootstrap_accuracy(
    correct: np.ndarray, subjects: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[object, np.ndarray]:
    """Bootstrap distribution of each group's accuracy, resampling subjects within each group.

    correct: (N,) or (R, N) bool/0-1 (R = repeats, e.g. seeds, pooled); subjects, groups: (N,).
    Images of one subject stay together, so the spread reflects how many people were tested,
    not just how many images. Returns group -> (n_boot,) accuracies.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    rng = np.random.default_rng(seed)
    out = {}
    for g in np.unique(groups):
        m = groups == g
        subj_ids, inv = np.unique(subjects[m], return_inverse=True)
        hits = np.bincount(inv, weights=correct[:, m].sum(0), minlength=len(subj_ids))  # per subject, all repeats
        sizes = np.bincount(inv, minlength=len(subj_ids)) * correct.shape[0]
        S = len(subj_ids)
        w = rng.multinomial(S, np.full(S, 1 / S), size=n_boot)  # (n_boot, S) multiplicities
        out[g] = (w @ hits) / np.maximum(w @ sizes, 1)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo = (1 - level) / 2
    return float(np.quantile(samples, lo)), float(np.quantile(samples, 1 - lo))
