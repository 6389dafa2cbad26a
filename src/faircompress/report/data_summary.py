"""The data behind the study (the paper's Figs. 3 and 6): images per class and split, each group's
size per split, and each class's share within each group, from the counts the store keeps (no images
needed). The paper explains gaps by such shares, e.g. a class rarer among one group's training images.
`data check` prints the same tables from a loaded dataset."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..data.composition import Composition, join
from ..data.dataset import SPLITS, UNKNOWN
from .results import StudyResults

UNKNOWN_GROUP = "unknown"


class DataSection(NamedTuple):
    table: str   # name in the report's tables (tables/report-<name>.*)
    title: str
    note: str


DATA_SECTIONS = [
    DataSection("data_classes", "The data: images per class and split", "Images of each class in each split (the paper's Fig. 3)."),
    DataSection("data_groups", "The data: images per group and split",
                "Images of each group of each attribute in each split (the paper's Fig. 6); 'unknown': no group recorded."),
    DataSection("data_class_shares", "The data: each group's class shares",
                "Share (%) of each class among a group's images in each split (each row sums to 100): a class rarer among "
                "one group's training images is one reason its accuracy may lag."),
]
NOT_RECORDED = ("The train and val counts were not recorded in this study's store (it was made before faircompress kept "
                "them; `faircompress run` on it records them): the test split only.")


def study_composition(res: StudyResults) -> tuple[Composition, tuple[str, ...]]:
    """The study's image counts and the splits they cover: the recorded train and val counts and the
    test samples, or the test samples alone when the store has no counts recorded."""
    test = Composition.of_images("test", res.y_true, {a: res.codes[a] for a in res.attributes})
    if res.other_splits is None:
        return test, ("test",)
    return join(res.other_splits, test), SPLITS


def class_counts(comp: Composition, class_names: list[str], splits: tuple[str, ...]) -> pd.DataFrame:
    """One row per class: its images in each split."""
    out = pd.DataFrame({"class": class_names})
    for split in splits:
        m = comp.split == split
        out[split] = np.bincount(comp.label[m], weights=comp.n[m], minlength=len(class_names)).astype(np.int64)
    return out


def group_counts(comp: Composition, groups: dict[str, list[str]], splits: tuple[str, ...]) -> pd.DataFrame:
    """One row per attribute and group (and 'unknown' where some images have none): its images in each split."""
    frames = []
    for attr, names in groups.items():
        codes, labels = _group_codes(comp, attr, names)
        frame = pd.DataFrame({"attribute": attr, "group": labels})
        for split in splits:
            m = comp.split == split
            frame[split] = _count_by(comp.codes[attr][m], comp.n[m], codes)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["attribute", "group", *splits])


def class_shares(comp: Composition, class_names: list[str], groups: dict[str, list[str]], splits: tuple[str, ...]) -> pd.DataFrame:
    """One row per attribute, split and group: its images and each class's share of them (sums to 1;
    NaN where the group has no image in that split)."""
    rows = []
    for attr, names in groups.items():
        codes, labels = _group_codes(comp, attr, names)
        for split in splits:
            for code, label in zip(codes, labels):
                m = (comp.split == split) & (comp.codes[attr] == code)
                per_class = np.bincount(comp.label[m], weights=comp.n[m], minlength=len(class_names))
                total = per_class.sum()
                shares = per_class / total if total else np.full(len(class_names), np.nan)
                rows.append({"attribute": attr, "split": split, "group": label, "images": int(total), **dict(zip(class_names, shares))})
    return pd.DataFrame(rows, columns=["attribute", "split", "group", "images", *class_names])


def data_tables(res: StudyResults) -> dict[str, pd.DataFrame]:
    """The report's data tables, named as in `DATA_SECTIONS`."""
    comp, splits = study_composition(res)
    groups = {a: res.groups[a] for a in res.attributes}
    return {"data_classes": class_counts(comp, res.class_names, splits), "data_groups": group_counts(comp, groups, splits),
            "data_class_shares": class_shares(comp, res.class_names, groups, splits)}


def shares_in_percent(shares: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """The share table for reading: each class's share in % with one decimal."""
    out = shares.copy()
    out[class_names] = (100 * out[class_names].astype(float)).round(1)
    return out


def _group_codes(comp: Composition, attr: str, names: list[str]) -> tuple[list[int], list[str]]:
    """The attribute's group codes and names, with UNKNOWN last when some images have it."""
    codes, labels = list(range(len(names))), list(names)
    if (comp.codes[attr][comp.n > 0] == UNKNOWN).any():
        codes.append(UNKNOWN)
        labels.append(UNKNOWN_GROUP)
    return codes, labels


def _count_by(codes: np.ndarray, n: np.ndarray, wanted: list[int]) -> np.ndarray:
    return np.array([int(n[codes == c].sum()) for c in wanted], dtype=np.int64)
