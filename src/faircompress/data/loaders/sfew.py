"""SFEW 2.0 (Dhall et al. 2011): ``Train/Train_Aligned_Faces/<Emotion>/`` and
``Val/Val_Aligned_Faces/<Emotion>/``, or the flatter ``Train/<Emotion>/`` and ``Val/<Emotion>/``.
Test labels are not public, so Val is the test split (``test_split: val``, the default: SFEW 2.0's
person-independent protocol) and validation images come from Train. ``test_split: random`` is Dixit et
al.'s choice instead: Train and Val pooled and a seeded random ``test_fraction`` of the images drawn
for test, which is not subject-disjoint (SFEW has no subject ids; one actor appears in many clips).
Attributes come from a user CSV with a ``path`` column (relative to the root, or bare file names)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from ..common import assemble, attributes_from_csv
from ..examples import make_sfew
from ..dataset import FaceDataset, InputShape
from ..images import Detector, Preprocess, is_image, load_images
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import TEST, TRAIN, carve_val, subject_split
from ..tables import read_csv

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
LAYOUT = """SFEW/
  Train/Train_Aligned_Faces/<Emotion>/*.png   (or Train/<Emotion>/*.png)
  Val/Val_Aligned_Faces/<Emotion>/*.png       (or Val/<Emotion>/*.png)
  Emotion folders: Angry Disgust Fear Happy Neutral Sad Surprise"""
RANDOM_TEST_FRACTION = 0.1  # Dixit et al. 2.2: "10 percent split"


class SFEWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="the SFEW 2.0 folder holding Train/ and Val/")
    attributes_csv: Path | None = Field(None, description="CSV: path,<attribute>... (path relative to root, or file name)")
    image_size: int = Field(48, ge=16, le=512)
    channels: Literal[1, 3] = 1
    detector: Detector = "none"
    margin: float = Field(0.1, ge=0, le=1)
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training images held out for validation")
    seed: int = 0
    test_split: Literal["val", "random"] = Field("val", description="'val': SFEW's Val folder is the test split (its "
                                                 "person-independent protocol); 'random': Train and Val pooled and a random "
                                                 "test_fraction of the images drawn for test (Dixit et al.; not subject-disjoint)")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="with test_split 'random': the share of all images "
                                        "drawn for test (default 0.1, the paper's)")

    @model_validator(mode="after")
    def _fraction_goes_with_random(self) -> "SFEWParams":
        if self.test_split == "random" and self.test_fraction is None:
            self.test_fraction = RANDOM_TEST_FRACTION
        elif self.test_split == "val" and self.test_fraction is not None:
            raise ValueError("test_fraction goes with test_split 'random'; with 'val' the Val folder is the test split")
        return self

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The test split's fields only when they differ from SFEW's own protocol, so the parameters
        (and so the dataset's identity and every run id) of a study made before they existed stay as they were."""
        out = handler(self)
        if out.get("test_split") == "val":
            out.pop("test_split")
            out.pop("test_fraction", None)
        return out


def split_note(p: SFEWParams) -> str | None:
    """What a reader of the results must know about how the test split was drawn (None for SFEW's own protocol)."""
    if p.test_split != "random":
        return None
    whose = "the SFEW paper's choice" if p.test_fraction == RANDOM_TEST_FRACTION else "the SFEW paper drew 10 %"
    return (f"a random {100 * p.test_fraction:g} % of the Train and Val images (seed {p.seed}; {whose}); "
            "not subject-disjoint: a person may appear in both train and test, so accuracy is optimistic")


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
    if p.test_split == "random":  # one seeded draw by image: test, then val from the rest (SFEW has no subject ids)
        split = subject_split(keys_arr, p.test_fraction, p.val_fraction, p.seed)
        report.note(f"test split: {split_note(p)}")
    else:
        split = carve_val(np.array(split, dtype=np.int8), keys_arr, p.val_fraction, p.seed)
    return assemble("sfew", images, ok, np.array(labels), CLASSES, attrs, groups, keys_arr, split, report, meta={"source": str(p.root)})


def sources(p: SFEWParams) -> list[Path]:
    return [p.root / "Train", p.root / "Val"] + ([p.attributes_csv] if p.attributes_csv else [])


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    make_sfew(root, per_class=3)
    return {"root": str(root), "image_size": 16}


DATASETS.register("sfew")(DatasetSource(params=SFEWParams, load=load, sources=sources, version="1", example=example,
                                        shape=lambda p: InputShape(p.channels, len(CLASSES), p.image_size),
                                        split_note=split_note))
