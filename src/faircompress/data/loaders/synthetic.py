"""The built-in default: the procedural synthetic FER benchmark (`data/synthetic/`), generated in memory."""
from __future__ import annotations

from pathlib import Path

from ..dataset import InputShape
from ..registry import DATASETS, DatasetSource
from ..synthetic import SyntheticParams, generate


def example(root: Path) -> dict:
    """A tiny set (54 images at 16 px); nothing is written."""
    return {"subjects": 12, "sequences": 18, "peak_frames": 2, "image_size": 16, "seed": 3}


def shape(p: SyntheticParams) -> InputShape:
    return InputShape(3 if p.rgb else 1, len(p.class_names), p.image_size)


DATASETS.register("synthetic")(DatasetSource(params=SyntheticParams, load=lambda p, report: generate(p), version="3", example=example,
                                            shape=shape))
