"""The in-memory dataset every loader produces and every stage consumes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..atomic import atomic_path

SPLITS = ("train", "val", "test")
UNKNOWN = -1  # attribute code for "unknown" / "unsure": counts toward overall metrics only


class InputShape(NamedTuple):
    """What a model is built for: images of ``channels`` x ``size`` x ``size`` and ``num_classes`` classes
    (a features table's rows: ``channels`` features, ``size`` 1)."""

    channels: int
    num_classes: int
    size: int

    def batch(self, n: int | str = "N") -> str:
        """The shape of a batch of ``n`` images, e.g. '(N, 1, 48, 48)'."""
        return f"({n}, {self.channels}, {self.size}, {self.size})"


@dataclass
class FaceDataset:
    """Face images with expression labels, sensitive attributes, subjects and splits.

    images:     uint8 (N, C, H, W) pixels, or float32 (N, F, 1, 1): F precomputed features per sample
                (a features table, e.g. SFEW's LPQ and PHOG components; see ``is_features``)
    labels:     int64 (N,) index into ``class_names``
    attributes: name -> int64 (N,) codes into ``attribute_groups[name]``; ``UNKNOWN`` (-1) = unknown
    subjects:   (N,) str subject ids (image index as a string where a dataset has none)
    split:      int8 (N,) index into ``SPLITS``
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    attributes: dict[str, np.ndarray]
    attribute_groups: dict[str, list[str]]
    subjects: np.ndarray
    split: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype not in (np.uint8, np.float32):
            raise ValueError(f"{self.name}: images must be uint8 (N, C, H, W) or float32 features (N, F, 1, 1), "
                             f"got {self.images.dtype} {self.images.shape}")
        if self.is_features and (self.images.shape[2:] != (1, 1) or not np.isfinite(self.images).all()):
            raise ValueError(f"{self.name}: features must be finite float32 (N, F, 1, 1), got shape {self.images.shape}")
        for what, arr in [("labels", self.labels), ("subjects", self.subjects), ("split", self.split)]:
            if len(arr) != n:
                raise ValueError(f"{self.name}: {what} has {len(arr)} entries for {n} images")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")
        if set(self.attributes) != set(self.attribute_groups):
            raise ValueError(f"{self.name}: attribute codes and group names name different attributes")
        for attr, codes in self.attributes.items():
            if len(codes) != n:
                raise ValueError(f"{self.name}: attribute {attr!r} has {len(codes)} entries for {n} images")
            if n and (codes.min() < UNKNOWN or codes.max() >= len(self.attribute_groups[attr])):
                raise ValueError(f"{self.name}: attribute {attr!r} has codes outside its groups")

    # --- shape -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_features(self) -> bool:
        """Precomputed features (float32 (N, F, 1, 1)), not pictures: nothing may flip, rotate or show them."""
        return self.images.dtype == np.float32

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> InputShape:
        return InputShape(self.channels, self.num_classes, self.image_size[0])

    # --- selection ---------------------------------------------------------
    def attribute_codes(self, attribute: str, rows: np.ndarray | None = None) -> np.ndarray:
        """The group codes of ``attribute`` for ``rows`` (all rows when None); a `ValueError` naming
        the dataset's attributes when it has no such attribute."""
        if attribute not in self.attributes:
            known = ", ".join(self.attributes) or "none"
            raise ValueError(f"dataset {self.name} has no attribute {attribute!r} (its attributes: {known})")
        codes = np.asarray(self.attributes[attribute])
        return codes if rows is None else codes[rows]

    def indices(self, *splits: str) -> np.ndarray:
        codes = [SPLITS.index(s) for s in splits]
        return np.flatnonzero(np.isin(self.split, codes))

    def subset(self, *splits: str) -> "FaceDataset":
        return self.take(self.indices(*splits))

    def take(self, idx: np.ndarray) -> "FaceDataset":
        return FaceDataset(
            name=self.name,
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            attributes={k: v[idx] for k, v in self.attributes.items()},
            attribute_groups={k: list(v) for k, v in self.attribute_groups.items()},
            subjects=self.subjects[idx],
            split=self.split[idx],
            meta=dict(self.meta),
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """Image counts per split, class and group (for summaries and checks)."""
        out: dict[str, dict[str, int]] = {"split": {}, "class": {}}
        for i, s in enumerate(SPLITS):
            out["split"][s] = int((self.split == i).sum())
        for i, c in enumerate(self.class_names):
            out["class"][c] = int((self.labels == i).sum())
        for attr, names in self.attribute_groups.items():
            codes = self.attributes[attr]
            out[attr] = {g: int((codes == i).sum()) for i, g in enumerate(names)}
            unknown = int((codes == UNKNOWN).sum())
            if unknown:
                out[attr]["unknown"] = unknown
        return out

    # --- cache -------------------------------------------------------------
    def save_npz(self, path: str | os.PathLike) -> None:
        """Write atomically (temp name, then rename), uncompressed for fast reloads."""
        arrays = {
            "images": self.images,
            "labels": self.labels,
            "subjects": self.subjects.astype(str),
            "split": self.split,
            "name": np.array(self.name),
            "class_names": np.array(self.class_names),
            "attribute_names": np.array(list(self.attributes), dtype=str),
            "meta_keys": np.array(list(self.meta), dtype=str),
            "meta_values": np.array(list(self.meta.values()), dtype=str),
        }
        for attr in self.attributes:
            arrays[f"attr__{attr}"] = self.attributes[attr]
            arrays[f"groups__{attr}"] = np.array(self.attribute_groups[attr])
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a name
            np.savez(fh, **arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "FaceDataset":
        with np.load(path, allow_pickle=False) as z:
            attrs = [str(a) for a in z["attribute_names"]]
            return cls(
                name=str(z["name"]),
                images=z["images"],
                labels=z["labels"],
                class_names=[str(c) for c in z["class_names"]],
                attributes={a: z[f"attr__{a}"] for a in attrs},
                attribute_groups={a: [str(g) for g in z[f"groups__{a}"]] for a in attrs},
                subjects=z["subjects"],
                split=z["split"],
                meta=dict(zip((str(k) for k in z["meta_keys"]), (str(v) for v in z["meta_values"]))),
            )
