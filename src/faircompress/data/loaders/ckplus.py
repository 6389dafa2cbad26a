"""CK+ (Lucey et al. 2010) as distributed, with the paper's preprocessing.

Every sequence with a label file counts: its first frame is neutral, its last three frames carry the
labelled emotion. Faces are detected (OpenCV's Haar cascade by default; dlib's HOG detector, the
paper's, as an option), cropped with a 10 % margin on each side, and resized to 48x48 grayscale.
Gender comes from the authors' annotation (``resources/ckplus_gender.csv``); subjects are split
70/30 with a seed (the authors' unseeded split cannot be recovered), validation from training subjects.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..examples import make_ckplus
from ..dataset import FaceDataset, InputShape
from ..common import assemble, attributes_from_csv, require_dir
from ..images import Detector, Preprocess, is_image, load_images
from ..problems import DatasetError, LoadReport
from ..registry import DATASETS, DatasetSource
from ..splits import subject_split
from ..tables import read_text

CLASSES = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
LAYOUT = """CK+/
  cohn-kanade-images/S005/001/S005_001_00000001.png ...   (frames of each sequence)
  Emotion/S005/001/S005_001_00000011_emotion.txt          (one code 0-7, for labelled sequences)"""
PEAK_FRAMES = 3
AUTHORS_OTHER_GENDER = "female"  # the authors list the 39 male subjects; the other 84 are female


class CKPlusParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="the CK+ folder holding cohn-kanade-images/ and Emotion/")
    image_size: int = Field(48, ge=16, le=512)
    channels: Literal[1, 3] = Field(1, description="1 = grayscale (the paper), 3 = RGB")
    detector: Detector = "haar"
    margin: float = Field(0.1, ge=0, le=1, description="added on each side of the detected face")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of subjects in the test split")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="share of training subjects for validation")
    seed: int = 0
    gender_csv: Path | None = Field(None, description="CSV subject,<attributes...>; default: the authors' gender annotation")


def load(p: CKPlusParams, report: LoadReport) -> FaceDataset:
    images_dir = require_dir(p.root / "cohn-kanade-images", LAYOUT)
    emotion_dir = require_dir(p.root / "Emotion", LAYOUT)
    paths, labels, subjects = [], [], []
    labelled = empty = 0
    for seq in sorted(d for d in emotion_dir.glob("*/*") if d.is_dir()):
        label_files = sorted(f for f in seq.iterdir() if f.name.endswith("_emotion.txt"))
        if not label_files:
            empty += 1
            continue
        label = _read_label(label_files[-1])
        frames_dir = images_dir / seq.parent.name / seq.name
        frames = sorted(f for f in frames_dir.iterdir() if is_image(f)) if frames_dir.is_dir() else []
        if len(frames) < 2:
            report.problem("annotation without images", label_files[-1], f"{len(frames)} frame(s) in {frames_dir}", stop_if_strict=False)
            continue
        labelled += 1
        for i, frame in enumerate([frames[0], *frames[1:][-PEAK_FRAMES:]]):
            paths.append(frame)
            labels.append(0 if i == 0 else label)
            subjects.append(seq.parent.name)
    sequences = sum(1 for d in images_dir.glob("*/*") if d.is_dir())
    report.note(f"{labelled} labelled sequences used; {sequences - labelled} image sequences without a label file skipped "
                f"(as in the paper); {empty} empty Emotion folders")
    if not paths:
        raise DatasetError(f"{emotion_dir}: no labelled sequence with frames found. Expected layout:\n{LAYOUT}")

    images, ok = load_images(paths, Preprocess(p.image_size, p.channels, p.detector, p.margin), report)
    if p.gender_csv is None:
        with resources.as_file(resources.files("faircompress.data") / "resources" / "ckplus_gender.csv") as authors:
            attrs, groups = attributes_from_csv(authors, subjects, "subject", report, default={"gender": AUTHORS_OTHER_GENDER},
                                                report_unused=False)  # it lists subjects a copy may lack
    else:
        attrs, groups = attributes_from_csv(p.gender_csv, subjects, "subject", report)
    subjects = np.array(subjects)
    split = subject_split(subjects, p.test_fraction, p.val_fraction, p.seed)
    return assemble("ckplus", images, ok, np.array(labels), CLASSES, attrs, groups, subjects, split, report,
                    meta={"source": str(p.root)})


def _read_label(path: Path) -> int:
    text = read_text(path).strip()
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError):
        raise DatasetError(f"{path} line 1: label {text!r} is not a number 0-7") from None
    if not value.is_integer() or not 0 <= value < len(CLASSES):
        codes = ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES))
        raise DatasetError(f"{path} line 1: label {text!r} is not one of the codes 0-7 ({codes})")
    return int(value)


def sources(p: CKPlusParams) -> list[Path]:
    return [p.root / "cohn-kanade-images", p.root / "Emotion"] + ([p.gender_csv] if p.gender_csv is not None else [])


def example(root: Path) -> dict:
    """A tiny copy of the layout (noise images), for the registry tests."""
    make_ckplus(root, subjects=8, sequences=3, frames=6)
    return {"root": str(root), "detector": "none", "image_size": 16}


DATASETS.register("ckplus")(DatasetSource(params=CKPlusParams, load=load, sources=sources, version="1", example=example,
                                          shape=lambda p: InputShape(p.channels, len(CLASSES), p.image_size)))
