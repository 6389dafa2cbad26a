"""Offline augmentation (`dataset.augment`): augmented copies of every training image added to the
dataset before training, as Dixit et al. (SFEW, 2.2) grew their training set to three times its size
by "flipping the images horizontally, applying shift, scale and rotate, blurring the images, and
random brightness contrast".

The four transforms are albumentations 1.x's ``HorizontalFlip``, ``ShiftScaleRotate``, ``Blur`` and
``RandomBrightnessContrast`` with their default limits and probabilities, written here with OpenCV
(already a dependency): albumentations itself would install without changing a pin, but it is no
longer maintained (its last MIT release, 2.0.8, of July 2025), and its successor AlbumentationsX is
AGPL-licensed. One deliberate difference: rotation and scaling turn about the image's centre pixel,
((w - 1) / 2, (h - 1) / 2), where albumentations 1.x turned about (w / 2, h / 2), half a pixel off.

Each copy of each image draws its parameters from its own generator, seeded by (seed, copy, image
index), so a copy is the same bytes on every run and does not depend on which other images are
there. The copies are appended after every original image, so the original images keep their
indices (the test samples the store records are indices into the unaugmented dataset); validation
and test images are never augmented."""
from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .dataset import FaceDataset
from .splits import TRAIN

META_KEY = "augment"  # meta entry: the spec and the counts, as JSON


class AugmentSpec(BaseModel):
    """How many augmented copies of each training image, and the transforms' probabilities and limits
    (albumentations' defaults; each copy applies them in this order)."""

    model_config = ConfigDict(extra="forbid")
    copies: int = Field(2, ge=1, le=20, description="augmented copies of each training image (2 triples the training set, "
                                                    "as the SFEW paper did)")
    seed: int = Field(0, description="seeds every copy's transforms")
    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    shift_scale_rotate: float = Field(0.5, ge=0, le=1, description="probability of a shift, scale and rotation")
    shift_limit: float = Field(0.0625, ge=0, lt=1, description="shift up to this share of the width and of the height")
    scale_limit: float = Field(0.1, ge=0, lt=1, description="scale by 1 ± up to this")
    rotate_limit: float = Field(45.0, ge=0, le=180, description="rotate by up to this many degrees either way")
    blur: float = Field(0.5, ge=0, le=1, description="probability of a box blur")
    blur_limit: int = Field(7, ge=3, le=31, description="the box's side: an odd size from 3 to this")
    brightness_contrast: float = Field(0.5, ge=0, le=1, description="probability of a brightness and contrast change")
    brightness_limit: float = Field(0.2, ge=0, le=1, description="add up to ± this share of 255")
    contrast_limit: float = Field(0.2, ge=0, le=1, description="multiply by 1 ± up to this")

    @field_validator("blur_limit")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"blur_limit must be odd (a box of {v} pixels has no centre)")
        return v


class Draw(NamedTuple):
    """One copy's parameters; a transform whose flag is False is not applied."""

    flip: bool
    shift_scale_rotate: bool
    angle: float   # degrees, counter-clockwise
    scale: float
    dx: float      # share of the width
    dy: float      # share of the height
    blur: bool
    ksize: int
    brightness_contrast: bool
    alpha: float   # contrast: multiplies
    beta: float    # brightness: adds beta * 255


def draw(spec: AugmentSpec, rng: np.random.Generator) -> Draw:
    """Every parameter is drawn whatever the probabilities decide, so each transform's parameters do
    not depend on whether another one applies."""
    u = rng.random(4)
    angle = rng.uniform(-spec.rotate_limit, spec.rotate_limit)
    scale = rng.uniform(1 - spec.scale_limit, 1 + spec.scale_limit)
    dx, dy = rng.uniform(-spec.shift_limit, spec.shift_limit, size=2)
    ksize = int(rng.choice(np.arange(3, spec.blur_limit + 1, 2)))
    alpha = 1.0 + rng.uniform(-spec.contrast_limit, spec.contrast_limit)
    beta = rng.uniform(-spec.brightness_limit, spec.brightness_limit)
    return Draw(bool(u[0] < spec.flip), bool(u[1] < spec.shift_scale_rotate), float(angle), float(scale), float(dx), float(dy),
                bool(u[2] < spec.blur), ksize, bool(u[3] < spec.brightness_contrast), float(alpha), float(beta))


# --- the four transforms, on one image as OpenCV holds it: uint8 (H, W) or (H, W, C) -------------------
def hflip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def shift_scale_rotate(img: np.ndarray, angle: float, scale: float, dx: float, dy: float) -> np.ndarray:
    """Rotate by ``angle`` degrees and scale about the centre, then shift by (dx * width, dy * height);
    bilinear, the border reflected (OpenCV's BORDER_REFLECT_101), as albumentations' ShiftScaleRotate."""
    import cv2

    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    m[0, 2] += dx * w
    m[1, 2] += dy * h
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out.reshape(img.shape)  # OpenCV drops a single channel's axis


def box_blur(img: np.ndarray, ksize: int) -> np.ndarray:
    """The mean over a ``ksize`` x ``ksize`` box (albumentations' Blur)."""
    import cv2

    return cv2.blur(img, (ksize, ksize)).reshape(img.shape)


def brightness_contrast(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``img * alpha + beta * 255``, clipped to 0..255 and truncated to uint8 (albumentations'
    RandomBrightnessContrast with brightness_by_max, through the same lookup table)."""
    lut = np.clip(np.arange(256, dtype=np.float32) * alpha + beta * 255, 0, 255).astype(np.uint8)
    return lut[img]


def augment_image(img: np.ndarray, d: Draw) -> np.ndarray:
    """One copy of one image (uint8 (C, H, W), as FaceDataset holds it): flip, shift-scale-rotate,
    blur, brightness-contrast, each where ``d`` says."""
    out = np.ascontiguousarray(img.transpose(1, 2, 0))  # (H, W, C)
    if d.flip:
        out = hflip(out)
    if d.shift_scale_rotate:
        out = shift_scale_rotate(out, d.angle, d.scale, d.dx, d.dy)
    if d.blur:
        out = box_blur(out, d.ksize)
    if d.brightness_contrast:
        out = brightness_contrast(out, d.alpha, d.beta)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def augment_offline(data: FaceDataset, spec: AugmentSpec | dict[str, Any] | None) -> FaceDataset:
    """``data`` with ``spec.copies`` augmented copies of every training image appended (split train;
    the same label, attributes and subject as the image it was made from); ``data`` itself when
    ``spec`` is None. The original images keep their order and indices; val and test are untouched."""
    if spec is None:
        return data
    spec = spec if isinstance(spec, AugmentSpec) else AugmentSpec.model_validate(spec)
    train = np.flatnonzero(data.split == TRAIN)
    source = np.tile(train, spec.copies)
    copy = np.repeat(np.arange(spec.copies), len(train))
    made = np.empty((len(source), *data.images.shape[1:]), dtype=np.uint8)
    for k, (c, i) in enumerate(zip(copy, source)):
        made[k] = augment_image(data.images[i], draw(spec, np.random.default_rng((spec.seed, int(c), int(i)))))
    meta = dict(data.meta)
    meta[META_KEY] = json.dumps({"spec": spec.model_dump(mode="json"), "train": int(len(train)), "copies": int(len(source))})
    return FaceDataset(
        name=data.name,
        images=np.concatenate([data.images, made]),
        labels=np.concatenate([data.labels, data.labels[source]]),
        class_names=list(data.class_names),
        attributes={a: np.concatenate([v, v[source]]) for a, v in data.attributes.items()},
        attribute_groups={a: list(g) for a, g in data.attribute_groups.items()},
        subjects=np.concatenate([data.subjects, data.subjects[source]]),
        split=np.concatenate([data.split, np.full(len(source), TRAIN, dtype=data.split.dtype)]),
        meta=meta,
    )


def described(spec: AugmentSpec, train: int) -> str:
    """The note a study prints, e.g. 'train: 100 images + 200 augmented copies (...)'."""
    return (f"train: {train} images + {spec.copies * train} augmented copies (dataset.augment: {spec.copies} per image, seed "
            f"{spec.seed}; flip, shift-scale-rotate, blur, brightness-contrast); val and test not augmented")
