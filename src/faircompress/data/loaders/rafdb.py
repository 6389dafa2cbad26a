"""RAF-DB basic (Li et al. 2017) as distributed: aligned 100x100 faces, the original train/test
split, and gender, race and age from the manual attribute files. Gender "unsure" is unknown (counts
toward overall accuracy only). RAF-DB has no subject ids: validation images are drawn from training."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import assemble, require_dir
from ..examples import make_rafdb
from ..dataset import UNKNOWN, FaceDataset, InputShape
from ..images import Preprocess, load_images
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import TEST, TRAIN, carve_val
from ..tables import read_text

CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]  # codes 1-7
ATTRIBUTES = {  # the last three lines of each *_manu_attri.txt, in this order
    "gender": ["male", "female"],  # 2 = unsure -> unknown
    "race": ["Caucasian", "African-American", "Asian"],
    "age": ["0-3", "4-19", "20-39", "40-69", "70+"],
}
UNSURE = {"gender": 2}
LAYOUT = """RAF-DB basic/
  EmoLabel/list_patition_label.txt            (lines: train_00001.jpg 5)
  Image/aligned/train_00001_aligned.jpg       (100x100)
  Annotation/manual/train_00001_manu_attri.txt (5 landmark lines, then gender, race, age)"""


class RAFDBParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="the RAF-DB 'basic' folder")
    image_size: int = Field(100, ge=16, le=512)
    channels: Literal[1, 3] = Field(1, description="1 = grayscale (the paper), 3 = RGB")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of training images held out for validation")
    seed: int = 0


def load(p: RAFDBParams, report: LoadReport) -> FaceDataset:
    label_file = p.root / "EmoLabel" / "list_patition_label.txt"
    if not label_file.is_file():
        raise DatasetError(f"{label_file} is missing. Expected layout:\n{LAYOUT}")
    aligned = require_dir(p.root / "Image" / "aligned", LAYOUT)
    manual = require_dir(p.root / "Annotation" / "manual", LAYOUT)
    names, labels, split = _read_label_list(label_file)
    keep = _match_images(names, aligned, report)
    names = [n for n, k in zip(names, keep) if k]
    paths = [aligned / f"{stem}_aligned.jpg" for stem in names]
    labels, split = np.array(labels)[keep], np.array(split, dtype=np.int8)[keep]
    attrs = _read_all_attributes(names, manual, report)
    images, ok = load_images(paths, Preprocess(p.image_size, p.channels), report)
    subjects = np.array(names)  # no subject ids: each image is its own unit
    split = carve_val(split, subjects, p.val_fraction, p.seed)
    return assemble("rafdb", images, ok, labels, CLASSES, attrs, ATTRIBUTES, subjects, split, report, meta={"source": str(p.root)})


def _read_label_list(label_file: Path) -> tuple[list[str], list[int], list[int]]:
    """Image stems, 0-based labels and splits from list_patition_label.txt; bad lines name their line."""
    names, labels, split = [], [], []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text(label_file).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{label_file} line {lineno}: expected '<image> <code>', got {line.strip()!r}")
        name, code = fields[0], int(fields[1])
        if not 1 <= code <= len(CLASSES):
            raise DatasetError(f"{label_file} line {lineno}: emotion code {code} is outside 1-7")
        if name in seen:
            raise DatasetError(f"{label_file} line {lineno}: {name} already listed on line {seen[name]}")
        seen[name] = lineno
        stem = Path(name).stem
        if not (stem.startswith("train_") or stem.startswith("test_")):
            raise DatasetError(f"{label_file} line {lineno}: {name} is neither train_* nor test_*")
        names.append(stem)
        labels.append(code - 1)
        split.append(TRAIN if stem.startswith("train_") else TEST)
    return names, labels, split


def _match_images(names: list[str], aligned: Path, report: LoadReport) -> np.ndarray:
    """Which listed images exist; labels without images and images without labels are reported."""
    present = {f.name for f in aligned.iterdir()}
    keep = []
    for stem in names:
        fname = f"{stem}_aligned.jpg"
        keep.append(fname in present)
        if fname not in present:
            report.problem("label without image", aligned / fname, "listed in list_patition_label.txt but missing", stop_if_strict=False)
    listed = {f"{s}_aligned.jpg" for s in names}
    for extra in sorted(present - listed):
        if extra.endswith("_aligned.jpg"):
            report.problem("image without label", aligned / extra, "not in list_patition_label.txt: skipped", stop_if_strict=False)
    return np.array(keep, dtype=bool)


def _read_all_attributes(names: list[str], manual: Path, report: LoadReport) -> dict[str, np.ndarray]:
    """Gender, race and age codes of each image from its _manu_attri.txt (unknown where missing)."""
    attrs = {a: np.full(len(names), UNKNOWN, dtype=np.int64) for a in ATTRIBUTES}
    annotated = {f.name for f in manual.iterdir()}
    for i, stem in enumerate(names):
        fname = f"{stem}_manu_attri.txt"
        if fname not in annotated:
            report.problem("image without annotation", manual / fname, "missing: gender, race and age unknown", stop_if_strict=False)
            continue
        for attr, code in _read_attributes(manual / fname).items():
            attrs[attr][i] = code
    for extra in sorted(annotated - {f"{s}_manu_attri.txt" for s in names}):
        if extra.endswith("_manu_attri.txt"):
            report.problem("annotation without image", manual / extra, "no labelled image with this name", stop_if_strict=False)
    return attrs


def _read_attributes(path: Path) -> dict[str, int]:
    lines = [(i, ln.strip()) for i, ln in enumerate(read_text(path).splitlines(), start=1) if ln.strip()]
    if len(lines) < 3:
        raise DatasetError(f"{path}: {len(lines)} non-empty lines; expected landmarks then gender, race and age")
    out = {}
    for (attr, groups), (lineno, text) in zip(ATTRIBUTES.items(), lines[-3:]):
        if not text.lstrip("-").isdigit():
            raise DatasetError(f"{path} line {lineno}: {attr} code {text!r} is not a whole number")
        code = int(text)
        if code == UNSURE.get(attr):
            code = UNKNOWN
        elif not 0 <= code < len(groups):
            allowed = ", ".join(f"{i} {g}" for i, g in enumerate(groups)) + (f", {UNSURE[attr]} unsure" if attr in UNSURE else "")
            raise DatasetError(f"{path} line {lineno}: {attr} code {code} is out of range ({allowed})")
        out[attr] = code
    return out


def sources(p: RAFDBParams) -> list[Path]:
    return [p.root / "EmoLabel", p.root / "Image" / "aligned", p.root / "Annotation" / "manual"]


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    make_rafdb(root, train=24, test=8, side=32)
    return {"root": str(root), "image_size": 16}


DATASETS.register("rafdb")(DatasetSource(params=RAFDBParams, load=load, sources=sources, version="1", example=example,
                                         shape=lambda p: InputShape(p.channels, len(CLASSES), p.image_size)))
