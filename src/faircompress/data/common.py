"""What every file-based loader shares: user attribute CSVs, assembling the FaceDataset, and an
audit that says what was dropped and why (nothing may vanish silently)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .dataset import SPLITS, UNKNOWN, FaceDataset
from .problems import DatasetError, LoadReport
from .tables import UNKNOWN_VALUES, read_csv

REPORT_KEY = "load_report"
UNREADABLE_KEY = "unreadable"  # per split: [images that could not be read, images listed]


def attributes_from_csv(path: str | os.PathLike, keys: list[str], key_column: str, report: LoadReport,
                        exclude: tuple[str, ...] = (), default: dict[str, str] | None = None,
                        report_unused: bool = True
                        ) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Sensitive attributes for ``keys`` from a CSV with a ``key_column`` and one column per attribute
    (group names as text; blank, ``unknown`` or ``unsure`` = unknown). Keys without a row get
    ``default``'s group, or unknown; rows without a key in the dataset are listed."""
    header, rows = read_csv(path, required=(key_column,))
    columns = [c for c in header if c != key_column and c not in exclude]
    if not columns:
        raise DatasetError(f"{path}: no attribute columns besides {key_column!r}")
    by_key: dict[str, dict[str, str]] = {}
    for row in rows:
        key = row.values[key_column]
        if key in by_key:
            raise DatasetError(f"{path} line {row.line}: {key_column} {key!r} appears twice")
        by_key[key] = row.values
    wanted = set(keys)
    unused = [k for k in by_key if k not in wanted] if report_unused else []
    for k in unused:
        report.problem("annotation without image", path, f"{key_column} {k!r} matches no image", stop_if_strict=False)
    missing = sorted({k for k in keys if k not in by_key})
    if missing and default is None:
        for k in missing:
            report.problem("image without annotation", path, f"no row for {key_column} {k!r}: attributes unknown", stop_if_strict=False)
    attrs, groups = {}, {}
    for col in columns:
        fallback = (default or {}).get(col, "")
        attrs[col], groups[col] = encode_groups([by_key[k][col] if k in by_key else fallback for k in keys])
    return attrs, groups


def encode_groups(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes into the sorted group names; blank, ``unknown``, ``unsure`` and the like -> UNKNOWN."""
    names = sorted({v for v in values if v.lower() not in UNKNOWN_VALUES})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup.get(v, UNKNOWN) for v in values], dtype=np.int64), names


def assemble(name: str, images: np.ndarray, ok: np.ndarray, labels: np.ndarray, class_names: list[str],
             attributes: dict[str, np.ndarray], groups: dict[str, list[str]], subjects: np.ndarray,
             split: np.ndarray, report: LoadReport, meta: dict[str, str] | None = None) -> FaceDataset:
    """Drop the images that could not be read, audit what is left, keep the report with the data."""
    keep = np.flatnonzero(ok)
    ds = FaceDataset(
        name=name, images=images[keep], labels=np.asarray(labels, dtype=np.int64)[keep], class_names=list(class_names),
        attributes={a: np.asarray(v, dtype=np.int64)[keep] for a, v in attributes.items()},
        attribute_groups={a: list(g) for a, g in groups.items()}, subjects=np.asarray(subjects).astype(str)[keep],
        split=np.asarray(split, dtype=np.int8)[keep], meta=dict(meta or {}),
    )
    audit(ds, report)
    ds.meta[REPORT_KEY] = report.to_json()
    bad = ~np.asarray(ok, dtype=bool)
    ds.meta[UNREADABLE_KEY] = json.dumps({s: [int((bad & (np.asarray(split) == i)).sum()), int((np.asarray(split) == i).sum())]
                                          for i, s in enumerate(SPLITS)})
    return ds


def unreadable(ds: FaceDataset) -> dict[str, tuple[int, int]]:
    """Per split: how many of its images could not be read, of how many listed."""
    counts = json.loads(ds.meta.get(UNREADABLE_KEY, "{}"))
    return {s: tuple(counts.get(s, (0, int((ds.split == i).sum())))) for i, s in enumerate(SPLITS)}


def audit(ds: FaceDataset, report: LoadReport) -> None:
    """Notes for every class, group or split left without images."""
    counts = ds.counts()
    for cls, n in counts["class"].items():
        if n == 0:
            report.note(f"class {cls!r} has no images (no labelled sample, or all of them unreadable)")
    for attr in ds.attribute_groups:
        for group, n in counts[attr].items():
            if n == 0:
                report.note(f"{attr} group {group!r} has no images")
    for s in SPLITS:
        if counts["split"][s] == 0:
            report.note(f"split {s!r} is empty")


def report_of(ds: FaceDataset) -> LoadReport:
    return LoadReport.from_json(ds.meta.get(REPORT_KEY, ""))


def require_dir(path: Path, layout: str) -> Path:
    from .problems import expected_layout_error

    if not path.is_dir():
        raise expected_layout_error(path, layout)
    return path


def contained(root: Path, entry: str) -> Path | None:
    """The path a dataset file names, relative to ``root``; None when it would lead outside the root
    (an absolute path, '..', or a symlink out), so that it is refused and never opened."""
    rel = Path(entry)
    if rel.is_absolute():
        return None
    full = root / rel
    try:
        inside = full.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return full if inside else None
