"""The synthetic FER benchmark: procedural faces rendered with vectorised NumPy.

Subjects have a persistent identity and three sensitive attributes (gender presentation, skin-tone
group, age group) that change their appearance. Each CK+-like sequence yields one neutral frame and
``peak_frames`` frames of one expression, drawn from facial cues (brows, eyes, mouth, nose wrinkle)
scaled by a per-image intensity. Bias knobs act per group of any attribute.

`params.py` holds the parameters and cues, `sampling.py` who shows what, `render.py` draws each
facial feature.
"""
from __future__ import annotations

import numpy as np

from ..dataset import SPLITS, FaceDataset
from .params import (ATTRIBUTE_GROUPS, CKPLUS_CLASSES, CUES, RAFDB_CLASSES, GroupBias, Nuisance, SyntheticParams,
                     _EXPRESSION_CUES, shifted_cues)
from .render import render
from .sampling import _group_factor, _sample_images, _sample_subjects, _split_subjects

__all__ = ["ATTRIBUTE_GROUPS", "CKPLUS_CLASSES", "CUES", "RAFDB_CLASSES", "GroupBias", "Nuisance", "SyntheticParams", "generate"]


def generate(p: SyntheticParams) -> FaceDataset:
    """Generate the dataset; the same parameters always give identical arrays."""
    streams = np.random.SeedSequence(p.seed).spawn(6)  # spawn(6)[:5] == spawn(5): older sets stay identical
    r_subj, r_split, r_img, r_cue, r_noise, r_shortcut = (np.random.default_rng(s) for s in streams)
    subj = _sample_subjects(p, r_subj)
    subj_split = _split_subjects(p, subj, r_split)
    frames = _sample_images(p, subj, r_img)
    sid, label = frames["subject"], frames["label"]
    n = len(label)

    classes = p.class_names
    expr = np.array([_EXPRESSION_CUES[c] for c in classes])  # (K, cues)
    shown = _expression_cues(p, subj, expr)[sid, label]  # (n, cues): each subject's own expression-to-cue table
    cues = subj["resting"][sid] + frames["intensity"][:, None] * shown + r_cue.normal(0, p.nuisance.cue_noise, (n, len(CUES)))

    per_image = {k: subj[k][sid] for k in ("face_w", "face_h", "eye_dx", "eye_size", "mouth_w", "nose_len", "hair_tone", "skin_jitter")}
    per_image.update({attr: subj[attr][sid] for attr in ATTRIBUTE_GROUPS})
    per_image.update(label=label, cues=cues)
    contrast = _group_factor(p, subj, "contrast")
    if (contrast != 1).any():  # only then: the arrays of sets without the knob stay as they were
        per_image["contrast"] = contrast[sid]
    skin = _group_factor(p, subj, "skin")
    if (skin != 1).any():
        per_image["skin_scale"] = skin[sid]
    shortcut = _shortcut_backgrounds(p, subj, sid, label, r_shortcut)
    if shortcut is not None:
        per_image["background"] = shortcut
    chunk = 256
    images = np.concatenate(
        [render(p, {k: v[i : i + chunk] for k, v in per_image.items()}, r_noise) for i in range(0, n, chunk)]
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



def _shortcut_backgrounds(p: SyntheticParams, subj: dict[str, np.ndarray], sid: np.ndarray, label: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray | None:
    """Per image, the background tone that gives its expression away (NaN: an ordinary random
    background), for groups with a `shortcut` knob; None when no group has one (no draw is made)."""
    share = np.zeros(p.subjects)
    for attr, groups in p.bias.items():
        knob = np.array([groups.get(g, GroupBias()).shortcut for g in ATTRIBUTE_GROUPS[attr]])
        share = np.maximum(share, knob[subj[attr]])
    if not share.any():
        return None
    n, k = len(label), len(p.class_names)
    tone = 0.2 + 0.7 * label / max(k - 1, 1) + rng.normal(0, 0.02, n)
    return np.where(rng.random(n) < share[sid], tone, np.nan)


def _expression_cues(p: SyntheticParams, subj: dict[str, np.ndarray], expr: np.ndarray) -> np.ndarray:
    """(subjects, classes, cues): the expression-to-cue table each subject uses; a group with a
    `cue_shift` knob uses the table with its cues rotated (shifts of several attributes add up)."""
    shift = np.zeros(p.subjects, dtype=int)
    for attr, groups in p.bias.items():
        knob = np.array([groups.get(g, GroupBias()).cue_shift for g in ATTRIBUTE_GROUPS[attr]])
        shift += knob[subj[attr]]
    tables = np.stack([shifted_cues(expr, k % len(CUES)) for k in range(len(CUES))])
    return tables[shift % len(CUES)]
