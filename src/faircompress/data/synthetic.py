"""The synthetic FER benchmark: procedural faces rendered with vectorised NumPy.

Subjects have a persistent identity and three sensitive attributes (gender presentation, skin-tone
group, age group) that change their appearance. Each CK+-like sequence yields one neutral frame and
``peak_frames`` frames of one expression, drawn from facial cues (brows, eyes, mouth, nose wrinkle)
scaled by a per-image intensity. Bias knobs act per group of any attribute.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .dataset import SPLITS, FaceDataset

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
    """Bias knobs for one group. Neutral values: 1, 1, 0."""

    model_config = ConfigDict(extra="forbid")
    representation: float = Field(1.0, gt=0, description="relative number of sequences per subject")
    intensity: float = Field(1.0, gt=0, le=2, description="scale of expression intensity (< 1: subtler)")
    label_noise: float = Field(0.0, ge=0, lt=1, description="rate of wrong labels in train/val images")


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
        return self

    @property
    def class_names(self) -> list[str]:
        return CKPLUS_CLASSES if self.classes == "ckplus" else RAFDB_CLASSES


# ----------------------------------------------------------------------------- sampling
def _exact_counts(props: list[float], n: int) -> np.ndarray:
    """Largest-remainder rounding of ``props`` to integer counts summing to ``n``."""
    p = np.asarray(props, dtype=float)
    raw = p / p.sum() * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def _spread(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels with exactly ``counts[v]`` copies of each v, interleaved so that every contiguous run
    holds them in near-proportional numbers (a low-discrepancy order with a random phase per label)."""
    labels = np.concatenate([np.full(c, v) for v, c in enumerate(counts)]).astype(int)
    pos = np.concatenate([(np.arange(c) + rng.uniform()) / c for c in counts if c])
    return labels[np.argsort(pos, kind="stable")]


def _stratified(keys: list[np.ndarray], counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign labels with exact ``counts`` so that they are spread evenly within the strata ``keys``."""
    n = int(np.sum(counts))
    order = np.lexsort((rng.random(n), *reversed(keys)))  # by keys[0], then keys[1], ..., random within
    out = np.empty(n, dtype=int)
    out[order] = _spread(counts, rng)
    return out


def _sample_subjects(p: SyntheticParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject attributes with exact overall proportions, and identity features.

    Each attribute is spread evenly within the groups of the attributes before it, so the attributes
    are (nearly exactly) independent: a gender gap cannot come from, say, more children among one
    gender's subjects."""
    n = p.subjects
    subj: dict[str, np.ndarray] = {}
    for attr, groups in ATTRIBUTE_GROUPS.items():
        props = p.proportions.get(attr, [1.0] * len(groups))
        subj[attr] = _stratified([subj[a] for a in subj], _exact_counts(props, n), rng)
    # identity: persistent face shape and features
    subj["face_w"] = rng.uniform(0.5, 0.6, n)
    subj["face_h"] = rng.uniform(0.7, 0.8, n)
    subj["eye_dx"] = rng.uniform(0.2, 0.26, n)
    subj["eye_size"] = rng.uniform(0.85, 1.15, n)
    subj["mouth_w"] = rng.uniform(0.17, 0.23, n)
    subj["nose_len"] = rng.uniform(0.85, 1.15, n)
    subj["hair_tone"] = rng.uniform(0.05, 0.45, n)
    subj["skin_jitter"] = rng.normal(0, 0.04, n)
    subj["resting"] = rng.normal(0, p.nuisance.idiosyncrasy, (n, len(CUES)))
    return subj


def _group_factor(p: SyntheticParams, subj: dict[str, np.ndarray], knob: str) -> np.ndarray:
    """Product over attributes of each subject's group knob (label noise combines as 1-prod(1-r))."""
    out = np.ones(p.subjects)
    for attr, groups in p.bias.items():
        names = ATTRIBUTE_GROUPS[attr]
        vals = np.array([getattr(groups.get(g, GroupBias()), knob) for g in names])
        v = vals[subj[attr]]
        out *= (1 - v) if knob == "label_noise" else v
    return 1 - out if knob == "label_noise" else out


def _split_subjects(p: SyntheticParams, subj: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Subject-disjoint split, stratified by every attribute so each split has the same composition."""
    n_test = int(round(p.subjects * p.test_fraction))
    n_val = int(round(p.subjects * p.val_fraction))
    counts = np.array([p.subjects - n_test - n_val, n_val, n_test])  # SPLITS order: train, val, test
    return _stratified([subj[a] for a in ATTRIBUTE_GROUPS], counts, rng).astype(np.int8)


def _sample_images(p: SyntheticParams, subj: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sequences -> frames: a neutral frame plus ``peak_frames`` frames of one expression each."""
    classes = p.class_names
    mix = CKPLUS_SEQUENCE_MIX if p.classes == "ckplus" else RAFDB_SEQUENCE_MIX
    emotions = np.array([classes.index(c) for c in mix])
    emo_p = np.array(list(mix.values()), dtype=float)
    # every subject gets a sequence; the rest go by representation weight
    weight = _group_factor(p, subj, "representation")
    extra = rng.choice(p.subjects, p.sequences - p.subjects, p=weight / weight.sum())
    seq_subject = np.concatenate([np.arange(p.subjects), extra])
    seq_emotion = rng.choice(emotions, p.sequences, p=emo_p / emo_p.sum())
    lo, hi = p.intensity_range
    seq_intensity = rng.uniform(lo, hi, p.sequences) * _group_factor(p, subj, "intensity")[seq_subject]

    frames = 1 + p.peak_frames
    subject = np.repeat(seq_subject, frames)
    label = np.repeat(seq_emotion, frames)
    label[::frames] = classes.index("neutral")
    ramp = np.linspace(0.85, 1.0, p.peak_frames) if p.peak_frames > 1 else np.ones(1)
    intensity = (seq_intensity[:, None] * np.concatenate([[0.0], ramp])[None, :]).ravel()
    return {"subject": subject, "label": label, "intensity": intensity}


# ----------------------------------------------------------------------------- rendering
_FACE_SPAN = 0.8  # face units per half image: the head (half-height ~0.75) nearly fills the frame
def _soft(d: np.ndarray, edge: float | np.ndarray) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance-like value (negative inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -30, 30)))


def _segment_dist(x, y, x0, y0, x1, y1):
    """Distance from points (x, y) to segments (x0, y0)-(x1, y1); all broadcastable."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _blend(img: np.ndarray, color: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # img (B, C, H, W), color (B, C), mask (B, H, W)
    return img * (1 - mask[:, None]) + color[:, :, None, None] * mask[:, None]


def _render(p: SyntheticParams, frame: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Render one chunk of frames. Every array in ``frame`` has one entry per image."""
    B, S, nz = len(frame["label"]), p.image_size, p.nuisance
    C = 3 if p.rgb else 1
    g = lambda k: frame[k][:, None, None]  # noqa: E731  (B,) -> (B, 1, 1)

    # pixel grid -> face coordinates through the inverse of rotation, scale and shift
    lin = (np.arange(S) + 0.5) / S * 2 - 1
    py, px = np.meshgrid(lin, lin, indexing="ij")
    theta = np.deg2rad(rng.uniform(-nz.rotation_deg, nz.rotation_deg, B))
    scale = rng.uniform(*nz.scale, B)
    shift = rng.normal(0, nz.shift, (B, 2))
    qx = px[None] - shift[:, 0, None, None]
    qy = py[None] - shift[:, 1, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    zoom = scale[:, None, None] / _FACE_SPAN  # the face fills the frame, like a detector's crop
    x = (c * qx + s * qy) / zoom
    y = (-s * qx + c * qy) / zoom
    edge = (1.2 / S) / zoom  # about one pixel in face units

    age = frame["age"]
    child = (age <= 1).astype(float)
    gender_m = (frame["gender"] == 1).astype(float)
    # colours: background, skin (by skin-tone group), hair (greys with age), features
    tone = np.array([0.80, 0.58, 0.36])[frame["skin_tone"]] + frame["skin_jitter"]
    if C == 1:
        bg = rng.uniform(0.15, 0.95, (B, 1))
        skin = tone[:, None]
        hair_c = np.where(age >= 3, np.minimum(frame["hair_tone"] + 0.15 * (age - 2), 0.85), frame["hair_tone"])[:, None]
    else:
        bg = rng.uniform(0.1, 0.95, (B, 3))
        skin = tone[:, None] * np.array([1.08, 0.92, 0.78])
        grey = np.clip(0.15 * (age - 2), 0, 0.5)[:, None]
        hair_c = (1 - grey) * frame["hair_tone"][:, None] * np.array([1.0, 0.8, 0.6]) + grey * 0.8
    img = np.broadcast_to(bg[:, :, None, None], (B, C, S, S)).copy()

    # head: ellipse above the cheek line, a superellipse jaw below (squarer for male presentation)
    fw = g("face_w") * (1 + 0.08 * child[:, None, None])
    fh = g("face_h") * (1 - 0.08 * child[:, None, None])
    jaw_p = 2.0 + 1.4 * gender_m[:, None, None] - 0.3 * child[:, None, None]
    pw = np.where(y > 0, jaw_p, 2.0)
    head_d = (np.abs(x / fw) ** pw + np.abs(y / fh) ** pw) ** (1 / pw) - 1
    # hair: a cap above the hairline, and for female presentation long side strands
    cap = _soft(np.maximum(np.hypot(x / (fw * 1.1), (y + 0.04) / (fh * 1.08)) - 1, y + 0.45 * fh + 0.08 * x * x), edge)
    long_hair = (1 - gender_m)[:, None, None] * (1 - (age == 0)[:, None, None])
    strands = long_hair * _soft(np.maximum(np.maximum(np.abs(np.abs(x) - fw) - 0.09, y - 0.55), -0.75 * fh - y), edge)
    img = _blend(img, hair_c, np.clip(cap + strands, 0, 1))
    img = _blend(img, skin, _soft(head_d, edge / fw))

    # expression cues for this frame: resting offset + intensity * expression + jitter
    cue = frame["cues"]  # (B, len(CUES))
    brow_raise, brow_tilt, eye_open, mouth_curve, mouth_open, mouth_asym, wrinkle = (cue[:, i, None, None] for i in range(len(CUES)))
    dark = np.clip(skin * 0.8 - 0.3, 0, 1)  # features: less contrast on darker skin, but never none
    feat = np.zeros((B, S, S))

    # eyes (children: lower and larger)
    eye_y = -0.08 + 0.08 * child[:, None, None]
    eye_dx = g("eye_dx")
    ew = 0.09 * g("eye_size") * (1 + 0.2 * child[:, None, None])
    eh = np.clip(0.05 * g("eye_size") * (1 + 0.9 * eye_open), 0.006, 0.16)
    ax = np.abs(x)
    eye_d = np.hypot((ax - eye_dx) / ew, (y - eye_y) / eh) - 1
    eye_mask = _soft(eye_d, edge / eh)
    sclera = np.clip(skin + 0.35, 0, 0.97)
    img = _blend(img, sclera, eye_mask)
    iris = _soft(np.hypot(ax - eye_dx, y - eye_y) - 0.045, edge) * eye_mask
    img = _blend(img, dark * 0.6, iris)

    # brows: segments whose inner ends move with tilt, whole brow with raise
    by = eye_y - 0.13 - 0.13 * brow_raise
    inner_y = by - 0.1 * brow_tilt
    brow_d = _segment_dist(ax, y, eye_dx - 0.11, inner_y, eye_dx + 0.11, by + 0.01) - 0.028  # same for every group: cue visibility must not depend on gender
    feat = np.maximum(feat, _soft(brow_d, edge))

    # nose: ridge, nostrils, and wrinkle lines across the bridge
    nl = g("nose_len")
    ridge = _segment_dist(x, y, 0.0, -0.02, 0.0, 0.16 * nl) - 0.01
    feat = np.maximum(feat, 0.45 * _soft(ridge, edge))
    nostrils = np.hypot(ax - 0.05, y - 0.19 * nl) - 0.022
    feat = np.maximum(feat, 0.8 * _soft(nostrils, edge))
    for k in range(3):
        line = np.abs(y - (-0.02 + 0.04 * k)) - 0.01
        feat = np.maximum(feat, np.clip(wrinkle, 0, 1.5) * 0.8 * _soft(np.maximum(line, ax - 0.09), edge))

    # mouth: a curve whose corners lift with curvature, tilt with asymmetry, opening below
    mw = g("mouth_w") * (1 + 0.15 * np.clip(mouth_curve, 0, 1))
    my = 0.4 - 0.04 * child[:, None, None]
    u = np.clip(x / mw, -1.3, 1.3)
    centre = my - 0.2 * mouth_curve * u * u - 0.13 * mouth_asym * np.clip(u, 0, None) ** 2
    half_open = np.clip(0.11 * mouth_open, 0, 0.16) * np.clip(1 - u * u, 0, 1)
    lip = np.abs(y - centre) - (0.016 + half_open)
    mouth_d = np.maximum(lip, np.abs(x) - mw)
    img = _blend(img, dark * 0.6, _soft(mouth_d, edge))
    inside = np.maximum(np.abs(y - centre) - (half_open - 0.01), np.abs(x) - 0.8 * mw)  # open mouth: dark interior
    img = _blend(img, dark * 0.2, _soft(inside, edge))

    # age lines: forehead and nasolabial folds, stronger with age
    lines = np.clip((age - 2) / 2, 0, 1)[:, None, None] * 0.5
    for k in range(3):
        fl = np.abs(y - (-0.42 + 0.06 * k)) - 0.006
        feat = np.maximum(feat, lines * _soft(np.maximum(fl, ax - 0.25), edge))
    naso = _segment_dist(ax, y, 0.1, 0.22, mw + 0.04, 0.45) - 0.008
    feat = np.maximum(feat, lines * _soft(naso, edge))
    # male presentation: stubble shading on the chin, below the mouth (never over an expression cue)
    stub = 0.25 * (gender_m * (age != 0))[:, None, None] * _soft(np.maximum(head_d, my + 0.2 - y), edge)
    feat = np.maximum(feat, stub)
    img = _blend(img, dark, feat * _soft(head_d, edge))

    # nuisances: illumination gradient, occluder, blur, noise
    ang = rng.uniform(0, 2 * np.pi, B)
    strength = rng.uniform(0, nz.illumination, B)
    grad = 1 + strength[:, None, None] * (np.cos(ang)[:, None, None] * px + np.sin(ang)[:, None, None] * py)
    img = img * grad[:, None]
    occ = rng.random(B) < nz.occluder_prob
    if occ.any():
        ox, oy = rng.uniform(-0.6, 0.6, B), rng.uniform(-0.2, 0.8, B)
        orx, ory = rng.uniform(0.15, 0.35, B), rng.uniform(0.1, 0.3, B)
        occ_d = np.hypot((px - ox[:, None, None]) / orx[:, None, None], (py - oy[:, None, None]) / ory[:, None, None]) - 1
        occ_mask = _soft(occ_d, 2.0 / S) * occ[:, None, None]
        img = _blend(img, rng.uniform(0.1, 0.9, (B, C)), occ_mask)
    blur = rng.random(B) < nz.blur_prob
    if blur.any():
        img[blur] = _box_blur(img[blur])
    img = img + rng.normal(0, nz.noise, img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 binomial blur over the last two axes, edges replicated."""
    k = np.array([0.25, 0.5, 0.25])
    for axis in (-1, -2):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (1, 1)
        q = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w * np.take(q, range(i, i + n), axis=axis) for i, w in enumerate(k))
    return img


def generate(p: SyntheticParams) -> FaceDataset:
    """Generate the dataset; the same parameters always give identical arrays."""
    streams = np.random.SeedSequence(p.seed).spawn(5)
    r_subj, r_split, r_img, r_cue, r_noise = (np.random.default_rng(s) for s in streams)
    subj = _sample_subjects(p, r_subj)
    subj_split = _split_subjects(p, subj, r_split)
    frames = _sample_images(p, subj, r_img)
    sid, label = frames["subject"], frames["label"]
    n = len(label)

    classes = p.class_names
    expr = np.array([_EXPRESSION_CUES[c] for c in classes])  # (K, cues)
    cues = subj["resting"][sid] + frames["intensity"][:, None] * expr[label] + r_cue.normal(0, p.nuisance.cue_noise, (n, len(CUES)))

    per_image = {k: subj[k][sid] for k in ("face_w", "face_h", "eye_dx", "eye_size", "mouth_w", "nose_len", "hair_tone", "skin_jitter")}
    per_image.update({attr: subj[attr][sid] for attr in ATTRIBUTE_GROUPS})
    per_image.update(label=label, cues=cues)
    chunk = 256
    images = np.concatenate(
        [_render(p, {k: v[i : i + chunk] for k, v in per_image.items()}, r_noise) for i in range(0, n, chunk)]
    )

    split = subj_split[sid]
    # label noise touches only the annotated data a practitioner trains and selects on, not the test set
    noise_rate = _group_factor(p, subj, "label_noise")[sid]
    flip = (r_cue.random(n) < noise_rate) & (split != SPLITS.index("test"))
    wrong = (label + r_cue.integers(1, len(classes), n)) % len(classes)
    label = np.where(flip, wrong, label)

    return FaceDataset(
        name="synthetic",
        images=images,
        labels=label.astype(np.int64),
        class_names=list(classes),
        attributes={a: subj[a][sid].astype(np.int64) for a in ATTRIBUTE_GROUPS},
        attribute_groups={a: list(g) for a, g in ATTRIBUTE_GROUPS.items()},
        subjects=np.array([f"S{i:03d}" for i in sid]),
        split=split.astype(np.int8),
        meta={"source": "synthetic", "seed": str(p.seed), "label_noise_flipped": str(int(flip.sum()))},
    )

