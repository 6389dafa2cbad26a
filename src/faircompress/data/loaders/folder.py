"""Any image folder with a CSV of ``path,label[,subject][,split]`` and any number of attribute
columns (AffectNet, FairFace-annotated sets, your own data), without code. ``label`` holds class
codes (0-based) or class names; an optional ``label_name`` column names the codes. Without a
``split`` column, subjects are split with a seed; without ``subject``, each image is its own subject.
`faircompress data synth --out DIR` writes a folder in exactly this format."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import assemble, contained, encode_groups
from ..examples import make_folder
from ..dataset import SPLITS, FaceDataset
from ..images import Detector, Preprocess, is_image, load_images
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import subject_split
from ..tables import read_csv

KNOWN_COLUMNS = ("path", "label", "label_name", "subject", "split")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class FolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="folder the CSV's paths are relative to (paths leading outside it are refused)")
    csv: Path | None = Field(None, description="the label CSV; default <root>/labels.csv")
    classes: list[str] | None = Field(None, description="class names in code order; default: from label_name or sorted labels")
    attributes: list[str] | None = Field(None, description="attribute columns to use; default: every other column")
    image_size: int = Field(48, ge=16, le=512)
    channels: Literal[1, 3] = 1
    detector: Detector = "none"
    margin: float = Field(0.1, ge=0, le=1)
    test_fraction: float = Field(0.3, gt=0, lt=1, description="used when the CSV has no split column")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="used when the CSV has no split column")
    seed: int = 0


def _csv(p: FolderParams) -> Path:
    return p.csv if p.csv is not None else p.root / "labels.csv"


def load(p: FolderParams, report: LoadReport) -> FaceDataset:
    path = _csv(p)
    if not p.root.is_dir():
        raise DatasetError(f"{p.root}: folder not found (the images' root)")
    header, rows = read_csv(path, required=("path", "label"))
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    attr_cols = p.attributes if p.attributes is not None else [c for c in header if c not in KNOWN_COLUMNS]
    for col in attr_cols:
        if col not in header:
            raise DatasetError(f"{path}: attribute column {col!r} not found (columns: {', '.join(header)})")
    class_names, codes = _labels(p, path, header, rows)

    files, keep = [], []
    for row in rows:
        f = contained(p.root, row.values["path"])
        if f is None:
            report.problem("path outside the dataset root", row.values["path"], f"{path} line {row.line}: refused, not opened",
                           stop_if_strict=False)
        elif not f.is_file():
            report.problem("label without image", f, f"{path} line {row.line}: file not found", stop_if_strict=False)
        keep.append(f is not None and f.is_file())
        if keep[-1]:
            files.append(f)
    listed = {os.path.normpath(f) for f in files}
    for dirpath, _, names in os.walk(p.root):
        for name in sorted(names):
            f = Path(dirpath) / name
            if is_image(f) and os.path.normpath(f) not in listed:
                report.problem("image without label", f, f"not in {path.name}: skipped", stop_if_strict=False)
    # groups come from every row, so one whose images are all missing shows up as emptied, not vanished
    attrs, groups = {}, {}
    for col in attr_cols:
        codes_all, groups[col] = encode_groups([r.values[col] for r in rows])
        attrs[col] = codes_all[np.array(keep)]
    rows = [r for r, k in zip(rows, keep) if k]
    codes = codes[np.array(keep)]
    if not rows:
        raise DatasetError(f"{path}: none of the {len(keep)} listed files exists under {p.root}")

    has_subject = "subject" in header
    subjects = np.array([(r.values["subject"] if has_subject else "") or f"row{r.line}" for r in rows])
    if "split" in header:
        split = np.array([_split_code(path, r) for r in rows], dtype=np.int8)
    else:
        split = subject_split(subjects, p.test_fraction, p.val_fraction, p.seed)
    images, ok = load_images(files, Preprocess(p.image_size, p.channels, p.detector, p.margin), report)
    return assemble("folder", images, ok, codes, class_names, attrs, groups, subjects, split, report, meta={"source": str(path)})


def _labels(p: FolderParams, path: Path, header: list[str], rows) -> tuple[list[str], np.ndarray]:
    values = [r.values["label"] for r in rows]
    numeric = all(v.lstrip("-").isdigit() for v in values)
    if numeric:
        codes = np.array([int(v) for v in values])
        if p.classes is not None:
            names = list(p.classes)
        elif "label_name" in header:
            pairs = {}
            for r, c in zip(rows, codes):
                name = r.values["label_name"]
                if pairs.setdefault(int(c), name) != name:
                    raise DatasetError(f"{path} line {r.line}: label {c} is named {name!r} here but {pairs[int(c)]!r} earlier")
            names = [pairs.get(i, f"class {i}") for i in range(max(pairs) + 1)]
        else:
            names = [f"class {i}" for i in range(codes.max() + 1)]
        for r, c in zip(rows, codes):
            if not 0 <= c < len(names):
                raise DatasetError(f"{path} line {r.line}: label {c} is outside 0-{len(names) - 1} ({', '.join(names)})")
        return names, codes
    names = list(p.classes) if p.classes is not None else sorted(set(values))
    lookup = {n: i for i, n in enumerate(names)}
    for r, v in zip(rows, values):
        if v not in lookup:
            raise DatasetError(f"{path} line {r.line}: label {v!r} is not one of the classes ({', '.join(names)})")
    return names, np.array([lookup[v] for v in values])


def _split_code(path: Path, row) -> int:
    value = row.values["split"].lower()
    if value not in SPLIT_NAMES:
        raise DatasetError(f"{path} line {row.line}: split {row.values['split']!r} is not train, val or test")
    return SPLITS.index(SPLIT_NAMES[value])


def sources(p: FolderParams) -> list[Path]:
    return [p.root, _csv(p)]


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    return make_folder(root)


DATASETS.register("folder")(DatasetSource(params=FolderParams, load=load, sources=sources, version="1", example=example))
