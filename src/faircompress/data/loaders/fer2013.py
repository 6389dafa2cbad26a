"""FER2013 (Goodfellow et al. 2013) from either published CSV: ``fer2013.csv`` (emotion,pixels,Usage)
or Kaggle's ``icml_face_data.csv`` (emotion, Usage, pixels). Usage gives the splits: Training ->
train, PublicTest -> val, PrivateTest -> test. FER2013 ships no demographics: sensitive attributes
come from a user CSV with an ``index`` column (the 0-based data row) and one column per attribute."""
from __future__ import annotations

import csv
from contextlib import closing
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import assemble, attributes_from_csv
from ..examples import make_fer2013
from ..dataset import FaceDataset, InputShape
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import TEST, TRAIN, VAL
from ..tables import text_lines

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
USAGE = {"training": TRAIN, "publictest": VAL, "privatetest": TEST}
FILE_NAMES = ("fer2013.csv", "icml_face_data.csv", "fer2013/fer2013.csv")
SIDE = 48


class FER2013Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="fer2013.csv / icml_face_data.csv, or the folder holding it")
    attributes_csv: Path | None = Field(None, description="CSV: index,<attribute>... (index = 0-based data row)")
    image_size: int = Field(48, ge=16, le=512)


def csv_path(root: Path) -> Path:
    if root.is_file():
        return root
    for name in FILE_NAMES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: no {' or '.join(FILE_NAMES)} found. Expected: the FER2013 CSV with columns "
                       "emotion,pixels,Usage (or Kaggle's emotion, Usage, pixels), or a folder holding it")


def load(p: FER2013Params, report: LoadReport) -> FaceDataset:
    path = csv_path(p.root)
    images, labels, split = [], [], []
    with closing(text_lines(path)) as lines:
        reader = csv.reader(lines, skipinitialspace=True)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("emotion", "pixels", "usage") if c not in header]
        if missing:
            raise DatasetError(f"{path} line 1: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'nothing'})")
        ie, ip, iu = (header.index(c) for c in ("emotion", "pixels", "usage"))
        for lineno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path} line {lineno}: {len(row)} fields, the header has {len(header)}")
            emotion, usage = row[ie].strip(), row[iu].strip().lower()
            if not emotion.isdigit() or not 0 <= int(emotion) < len(CLASSES):
                raise DatasetError(f"{path} line {lineno}: emotion {emotion!r} is not one of the codes 0-6")
            if usage not in USAGE:
                raise DatasetError(f"{path} line {lineno}: Usage {row[iu].strip()!r} is not Training, PublicTest or PrivateTest")
            pixels = np.array(row[ip].split(), dtype=np.int32) if row[ip].strip() else np.empty(0, np.int32)
            if pixels.size != SIDE * SIDE or pixels.min() < 0 or pixels.max() > 255:
                report.problem("unreadable image", f"{path} line {lineno}", f"pixels: {pixels.size} values (need {SIDE * SIDE} in 0-255)")
                images.append(None)
            else:
                images.append(pixels.astype(np.uint8).reshape(1, SIDE, SIDE))
            labels.append(int(emotion))
            split.append(USAGE[usage])
    if not labels:
        raise DatasetError(f"{path}: no data rows")
    ok = np.array([im is not None for im in images])
    stack = np.stack([im if im is not None else np.zeros((1, SIDE, SIDE), np.uint8) for im in images])
    if p.image_size != SIDE:
        import cv2

        stack = np.stack([cv2.resize(im[0], (p.image_size, p.image_size), interpolation=cv2.INTER_LINEAR)[None] for im in stack])
    keys = [str(i) for i in range(len(labels))]
    attrs, groups = attributes_from_csv(p.attributes_csv, keys, "index", report) if p.attributes_csv else ({}, {})
    if not attrs:
        report.note("no attributes_csv given: FER2013 ships no demographics, so there are no groups to compare")
    return assemble("fer2013", stack, ok, np.array(labels), CLASSES, attrs, groups, np.array(keys), np.array(split), report,
                    meta={"source": str(path)})


def sources(p: FER2013Params) -> list[Path]:
    return [csv_path(p.root)] + ([p.attributes_csv] if p.attributes_csv else [])


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    root.mkdir(parents=True, exist_ok=True)
    make_fer2013(root / "fer2013.csv", n=30)
    return {"root": str(root), "image_size": 16}


DATASETS.register("fer2013")(DatasetSource(params=FER2013Params, load=load, sources=sources, version="1", example=example,
                                           shape=lambda p: InputShape(1, len(CLASSES), p.image_size)))
