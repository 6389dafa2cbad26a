"""SFEW 2.0 (Dhall et al. 2011): ``Train/Train_Aligned_Faces/<Emotion>/`` and
``Val/Val_Aligned_Faces/<Emotion>/``, or the flatter ``Train/<Emotion>/`` and ``Val/<Emotion>/``.
Test labels are not public, so Val is the test split and validation images come from Train.
Attributes come from a user CSV with a ``path`` column (relative to the root, or bare file names)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import assemble, attributes_from_csv
from ..examples import make_sfew
from ..dataset import FaceDataset, InputShape
from ..images import Detector, Preprocess, is_image, load_images
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import TEST, TRAIN, carve_val
from ..tables import read_csv

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
LAYOUT = """SFEW/
  Train/Train_Aligned_Faces/<Emotion>/*.png   (or Train/<Emotion>/*.png)
  Val/Val_Aligned_Faces/<Emotion>/*.png       (or Val/<Emotion>/*.png)
  Emotion folders: Angry Disgust Fear Happy Neutral Sad Surprise"""


class SFEWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="the SFEW 2.0 folder holding Train/ and Val/")
    attributes_csv: Path | None = Field(None, description="CSV: path,<attribute>... (path relative to root, or file name)")
    image_size: int = Field(48, ge=16, le=512)
    channels: Literal[1, 3] = 1
    detector: Detector = "none"
    margin: float = Field(0.1, ge=0, le=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of Train images held out for validation")
    seed: int = 0


def _emotion_root(root: Path, part: str) -> Path:
    aligned = root / part / f"{part}_Aligned_Faces"
    if aligned.is_dir():
        return aligned
    if (root / part).is_dir():
        return root / part
    raise DatasetError(f"{root / part} is missing. Expected layout:\n{LAYOUT}")


def load(p: SFEWParams, report: LoadReport) -> FaceDataset:
    paths, labels, split = [], [], []
    for part, code in (("Train", TRAIN), ("Val", TEST)):
        base = _emotion_root(p.root, part)
        for folder in sorted(d for d in base.iterdir() if d.is_dir()):
            files = sorted(f for f in folder.iterdir() if is_image(f))
            if folder.name.lower() not in CLASSES:
                for f in files:
                    report.problem("unknown emotion folder", f, f"folder {folder.name!r} is not one of {', '.join(CLASSES)}: skipped",
                                   stop_if_strict=False)
                continue
            paths += files
            labels += [CLASSES.index(folder.name.lower())] * len(files)
            split += [code] * len(files)
    if (p.root / "Test").is_dir():
        report.note("Test/ ignored: SFEW's test labels are not public")
    if not paths:
        raise DatasetError(f"{p.root}: no images in any emotion folder. Expected layout:\n{LAYOUT}")
    keys = [os.path.relpath(f, p.root).replace(os.sep, "/") for f in paths]
    attrs, groups = {}, {}
    if p.attributes_csv:
        _, rows = read_csv(p.attributes_csv, required=("path",))
        by_name = rows and all("/" not in r.values["path"] for r in rows)
        attrs, groups = attributes_from_csv(p.attributes_csv, [Path(k).name if by_name else k for k in keys], "path", report)
    else:
        report.note("no attributes_csv given: SFEW ships no demographics, so there are no groups to compare")
    images, ok = load_images(paths, Preprocess(p.image_size, p.channels, p.detector, p.margin), report)
    keys_arr = np.array(keys)
    split = carve_val(np.array(split, dtype=np.int8), keys_arr, p.val_fraction, p.seed)
    return assemble("sfew", images, ok, np.array(labels), CLASSES, attrs, groups, keys_arr, split, report, meta={"source": str(p.root)})


def sources(p: SFEWParams) -> list[Path]:
    return [p.root / "Train", p.root / "Val"] + ([p.attributes_csv] if p.attributes_csv else [])


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    make_sfew(root, per_class=3)
    return {"root": str(root), "image_size": 16}


DATASETS.register("sfew")(DatasetSource(params=SFEWParams, load=load, sources=sources, version="1", example=example,
                                        shape=lambda p: InputShape(p.channels, len(CLASSES), p.image_size)))
