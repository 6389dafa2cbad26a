"""What a dataset is made of: how many images each split holds of each class and each combination of
attribute groups. The store keeps it for the splits it has no samples of (train, val), so the report
can describe the data without the images; `data check` prints it from the loaded dataset."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .dataset import SPLITS, FaceDataset


@dataclass(frozen=True)
class Composition:
    """Image counts: entry k holds ``n[k]`` images of split ``split[k]``, class ``label[k]`` and, for
    every attribute, group code ``codes[attribute][k]`` (``UNKNOWN`` for unknown)."""

    split: np.ndarray             # (K,) split names
    label: np.ndarray             # (K,) class indices
    codes: dict[str, np.ndarray]  # attribute -> (K,) group codes
    n: np.ndarray                 # (K,) images

    def where(self, mask: np.ndarray) -> "Composition":
        return Composition(self.split[mask], self.label[mask], {a: c[mask] for a, c in self.codes.items()}, self.n[mask])

    def rows(self) -> list[tuple[str, int, str, int]]:
        """As the store keeps it: (split, label, attributes_json, n)."""
        return [(str(s), int(lab), json.dumps({a: int(c[k]) for a, c in self.codes.items()}), int(n))
                for k, (s, lab, n) in enumerate(zip(self.split, self.label, self.n))]

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, attributes: list[str], where: str = "split_counts") -> "Composition":
        """From the store's rows (columns split, label, attributes_json, n); an attribute missing from a
        row's JSON raises ValueError naming ``where`` and the attribute."""
        parsed = [json.loads(text) for text in rows.attributes_json]
        codes = {}
        for attr in attributes:
            if any(attr not in d for d in parsed):
                raise ValueError(f"{where}: attribute {attr!r} missing from a recorded count (attributes_json)")
            codes[attr] = np.array([d[attr] for d in parsed], dtype=np.int64)
        return cls(rows.split.to_numpy(dtype=str), rows.label.to_numpy(dtype=np.int64), codes, rows.n.to_numpy(dtype=np.int64))

    @classmethod
    def of_images(cls, split: str, labels: np.ndarray, codes: dict[str, np.ndarray]) -> "Composition":
        """One entry per image of one split."""
        return cls(np.full(len(labels), split), np.asarray(labels, dtype=np.int64),
                   {a: np.asarray(c, dtype=np.int64) for a, c in codes.items()}, np.ones(len(labels), dtype=np.int64))


def composition(data: FaceDataset, splits: tuple[str, ...] = SPLITS) -> Composition:
    """The dataset's image counts in ``splits``, one entry per combination that occurs."""
    idx = data.indices(*splits)
    attrs = list(data.attributes)
    keys = np.column_stack([data.split[idx], data.labels[idx], *(data.attributes[a][idx] for a in attrs)]).astype(np.int64)
    combos, n = np.unique(keys, axis=0, return_counts=True)
    return Composition(np.array(SPLITS)[combos[:, 0]], combos[:, 1], {a: combos[:, 2 + i] for i, a in enumerate(attrs)}, n)


def join(*parts: Composition) -> Composition:
    """Several compositions (e.g. recorded splits and the test split) as one; they name the same attributes."""
    attrs = list(parts[0].codes)
    return Composition(np.concatenate([p.split for p in parts]), np.concatenate([p.label for p in parts]),
                       {a: np.concatenate([p.codes[a] for p in parts]) for a in attrs}, np.concatenate([p.n for p in parts]))
