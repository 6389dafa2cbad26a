"""The synthetic benchmark's parameters, classes, attributes and facial cues."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


CKPLUS_CLASSES = ["neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
RAFDB_CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
# CK+'s labelled sequences per emotion (327 in all), used as the default expression mix.
CKPLUS_SEQUENCE_MIX = {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28, "surprise": 83}
RAFDB_SEQUENCE_MIX = {"surprise": 1, "fear": 1, "disgust": 1, "happiness": 1, "sadness": 1, "anger": 1}

ATTRIBUTE_GROUPS = {
    "gender": ["female", "male"],
    "skin_tone": ["light", "medium", "dark"],
    "age": ["0-3", "4-19", "20-39", "40-69", "70+"],
}

# Facial cues: brow raise, brow tilt (+ = inner ends up), eye openness, mouth curvature (+ = corners
# up), mouth opening, mouth asymmetry, nose wrinkle. One row per expression at full intensity.
CUES = ["brow_raise", "brow_tilt", "eye_open", "mouth_curve", "mouth_open", "mouth_asym", "nose_wrinkle"]
_EXPRESSION_CUES = {
    "neutral":  [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "anger":    [-0.7, -1.0, -0.1, -0.4, 0.0, 0.0, 0.3],
    "contempt": [0.0, 0.0, -0.1, 0.2, 0.0, 1.0, 0.0],
    "disgust":  [-0.4, -0.3, -0.4, -0.6, 0.3, 0.0, 1.0],
    "fear":     [0.6, 0.9, 0.8, -0.3, 0.5, 0.0, 0.0],
    "happy":    [0.0, 0.0, -0.3, 1.0, 0.35, 0.0, 0.0],
    "sadness":  [0.1, 1.0, -0.3, -0.8, 0.0, 0.0, 0.0],
    "surprise": [1.0, 0.2, 1.0, 0.0, 1.0, 0.0, 0.0],
}
_EXPRESSION_CUES["happiness"] = _EXPRESSION_CUES["happy"]


class GroupBias(BaseModel):
    """Bias knobs for one group. Neutral values: 1, 1, 0, 0, 1, 0, 1 and no expression weights."""

    model_config = ConfigDict(extra="forbid")
    representation: float = Field(1.0, gt=0, description="relative number of sequences per subject")
    intensity: float = Field(1.0, gt=0, le=2, description="scale of expression intensity (< 1: subtler)")
    label_noise: float = Field(0.0, ge=0, lt=1, description="rate of wrong labels in train/val images")
    cue_shift: int = Field(0, ge=0, lt=7, description="the group shows each expression through other facial cues "
                           "(the expression-to-cue table rotated by this many cues): a mapping of its own to learn")
    contrast: float = Field(1.0, gt=0, le=2, description="contrast of the group's facial features against its skin "
                            "(< 1: fainter brows, eyes, mouth and lines, as under poor lighting or with darker skin)")
    shortcut: float = Field(0.0, ge=0, le=1, description="share of the group's images whose background tone gives the "
                            "expression away (as when each expression was posed in its own session): an easy cue that "
                            "other groups' images lack")
    skin: float = Field(1.0, gt=0, le=1.2, description="the group's skin drawn at this share of its tone's luminance "
                        "(< 1: darker skin, and with it darker features, as the renderer draws darker skin tones)")
    expressions: dict[str, float] = Field(default_factory=dict, description="relative weight of each named expression "
                                          "in the group's sequences (multiplies the dataset's expression mix; unnamed "
                                          "ones 1): a group that mostly shows the expressions others rarely do")

    @field_validator("expressions")
    @classmethod
    def _check_expressions(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()):
            raise ValueError("expression weights must be non-negative")
        return v

    @model_serializer(mode="wrap")
    def _without_new_neutral_knobs(self, handler):
        # a knob added later is left out at its neutral value, so studies made before it keep their identity
        out = handler(self)
        for knob, neutral in (("contrast", 1.0), ("shortcut", 0.0), ("skin", 1.0), ("expressions", {})):
            if out.get(knob) == neutral:
                out.pop(knob)
        return out


def shifted_cues(expressions: np.ndarray, shift: int) -> np.ndarray:
    """The expression-to-cue table (classes x cues) with its cue columns rotated by ``shift``."""
    return np.roll(expressions, shift, axis=1)


class Nuisance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rotation_deg: float = Field(10.0, ge=0, le=45)
    shift: float = Field(0.05, ge=0, le=0.3, description="std of face shift, in half-image units")
    scale: tuple[float, float] = (0.9, 1.1)
    illumination: float = Field(0.35, ge=0, le=1, description="max strength of a linear light gradient")
    noise: float = Field(0.025, ge=0, le=0.5, description="std of pixel noise (0..1 scale)")
    blur_prob: float = Field(0.25, ge=0, le=1)
    occluder_prob: float = Field(0.1, ge=0, le=1)
    cue_noise: float = Field(0.1, ge=0, le=2, description="per-image jitter of every facial cue")
    idiosyncrasy: float = Field(0.15, ge=0, le=2, description="per-subject resting offset of every cue")


class SyntheticParams(BaseModel):
    """Parameters of the synthetic FER benchmark. Defaults are CK+-like."""

    model_config = ConfigDict(extra="forbid")
    classes: Literal["ckplus", "rafdb"] = "ckplus"
    subjects: int = Field(123, ge=6)
    sequences: int = Field(327, ge=1)
    peak_frames: int = Field(3, ge=1, le=10)
    image_size: int = Field(48, ge=16, le=256)
    rgb: bool = False
    proportions: dict[str, list[float]] = Field(
        default_factory=lambda: {
            "gender": [84, 39],
            "skin_tone": [70, 18, 12],
            "age": [2, 13, 60, 20, 5],
        }
    )
    bias: dict[str, dict[str, GroupBias]] = Field(default_factory=dict)
    intensity_range: tuple[float, float] = (0.6, 1.0)
    nuisance: Nuisance = Field(default_factory=Nuisance)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    val_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 0

    @field_validator("proportions")
    @classmethod
    def _check_proportions(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for attr, props in v.items():
            if attr not in ATTRIBUTE_GROUPS:
                raise ValueError(f"unknown attribute {attr!r} (known: {', '.join(ATTRIBUTE_GROUPS)})")
            if len(props) != len(ATTRIBUTE_GROUPS[attr]):
                raise ValueError(f"{attr} needs {len(ATTRIBUTE_GROUPS[attr])} proportions, got {len(props)}")
            if any(p < 0 for p in props) or sum(props) <= 0:
                raise ValueError(f"{attr} proportions must be non-negative with a positive sum")
        return v

    @field_validator("bias")
    @classmethod
    def _check_bias(cls, v: dict[str, dict[str, GroupBias]]) -> dict[str, dict[str, GroupBias]]:
        for attr, groups in v.items():
            if attr not in ATTRIBUTE_GROUPS:
                raise ValueError(f"unknown attribute {attr!r} (known: {', '.join(ATTRIBUTE_GROUPS)})")
            for g in groups:
                if g not in ATTRIBUTE_GROUPS[attr]:
                    raise ValueError(f"unknown {attr} group {g!r} (known: {', '.join(ATTRIBUTE_GROUPS[attr])})")
        return v

    @model_validator(mode="after")
    def _check_sizes(self) -> "SyntheticParams":
        if self.sequences < self.subjects:
            raise ValueError(f"sequences ({self.sequences}) must be at least subjects ({self.subjects})")
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("test_fraction + val_fraction leaves too few training subjects")
        lo, hi = self.intensity_range
        if not 0 < lo <= hi <= 2:
            raise ValueError("intensity_range must satisfy 0 < low <= high <= 2")
        self._check_expression_weights()
        return self

    def _check_expression_weights(self) -> None:
        """A group's `expressions` name only expressions a sequence can show, and leave it at least one."""
        mix = CKPLUS_SEQUENCE_MIX if self.classes == "ckplus" else RAFDB_SEQUENCE_MIX
        for attr, groups in self.bias.items():
            for g, b in groups.items():
                unknown = sorted(set(b.expressions) - set(mix))
                if unknown:
                    raise ValueError(f"bias.{attr}.{g}.expressions: unknown expression(s) {', '.join(unknown)} "
                                     f"(known: {', '.join(mix)})")
                if not any(b.expressions.get(e, 1.0) > 0 for e in mix):
                    raise ValueError(f"bias.{attr}.{g}.expressions leave the group no expression to show")

    @property
    def class_names(self) -> list[str]:
        return CKPLUS_CLASSES if self.classes == "ckplus" else RAFDB_CLASSES


