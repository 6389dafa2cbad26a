"""Seeded splits for datasets that ship none (CK+) or ship no validation split (RAF-DB, SFEW)."""
from __future__ import annotations

import numpy as np

from .dataset import SPLITS

TRAIN, VAL, TEST = (SPLITS.index(s) for s in ("train", "val", "test"))


def subject_split(subjects: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """Split codes (int8, SPLITS order) with every subject's images in one split: ``test_fraction``
    of the subjects for test, then ``val_fraction`` of the remaining (training) subjects for
    validation."""
    uniq = np.unique(subjects)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_test = int(round(len(uniq) * test_fraction))
    n_val = int(round((len(uniq) - n_test) * val_fraction))
    code = np.full(len(uniq), TRAIN, dtype=np.int8)
    code[order[:n_test]] = TEST
    code[order[n_test : n_test + n_val]] = VAL
    return code[np.searchsorted(uniq, subjects)]


def carve_val(split: np.ndarray, subjects: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Move ``val_fraction`` of the training subjects (images, where subjects are per image) to val."""
    split = split.copy()
    train = split == TRAIN
    if val_fraction <= 0 or not train.any():
        return split
    sub = subject_split(subjects[train], 0.0, val_fraction, seed)
    split[np.flatnonzero(train)[sub == VAL]] = VAL
    return split
