"""Who is in the synthetic set and what they show: subjects with attributes and identity, their
subject-disjoint split, and the frames of each expression sequence."""
from __future__ import annotations

import numpy as np

from .params import ATTRIBUTE_GROUPS, CKPLUS_SEQUENCE_MIX, CUES, RAFDB_SEQUENCE_MIX, GroupBias, SyntheticParams


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


def _draw_emotions(p: SyntheticParams, subj: dict[str, np.ndarray], seq_subject: np.ndarray, mix: dict[str, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Each sequence's expression (class index), from the dataset's mix weighted, per subject, by its
    groups' `expressions` knobs (weights of several attributes multiply)."""
    emotions = np.array([p.class_names.index(c) for c in mix])
    emo_p = np.array(list(mix.values()), dtype=float)
    if not any(b.expressions for groups in p.bias.values() for b in groups.values()):
        return rng.choice(emotions, p.sequences, p=emo_p / emo_p.sum())  # the draw every older set was made with
    weight = np.ones((p.subjects, len(mix)))
    for attr, groups in p.bias.items():
        per_group = np.array([[groups.get(g, GroupBias()).expressions.get(e, 1.0) for e in mix] for g in ATTRIBUTE_GROUPS[attr]])
        weight *= per_group[subj[attr]]
    if not weight.any(axis=1).all():
        raise ValueError("the bias's expression weights leave some subjects no expression to show")
    prob = emo_p * weight[seq_subject]
    cdf = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
    pick = (rng.random(p.sequences)[:, None] > cdf).sum(axis=1)
    return emotions[np.minimum(pick, len(mix) - 1)]


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
    # every subject gets a sequence; the rest go by representation weight
    weight = _group_factor(p, subj, "representation")
    extra = rng.choice(p.subjects, p.sequences - p.subjects, p=weight / weight.sum())
    seq_subject = np.concatenate([np.arange(p.subjects), extra])
    seq_emotion = _draw_emotions(p, subj, seq_subject, mix, rng)
    lo, hi = p.intensity_range
    seq_intensity = rng.uniform(lo, hi, p.sequences) * _group_factor(p, subj, "intensity")[seq_subject]

    frames = 1 + p.peak_frames
    subject = np.repeat(seq_subject, frames)
    label = np.repeat(seq_emotion, frames)
    label[::frames] = classes.index("neutral")
    ramp = np.linspace(0.85, 1.0, p.peak_frames) if p.peak_frames > 1 else np.ones(1)
    intensity = (seq_intensity[:, None] * np.concatenate([[0.0], ramp])[None, :]).ravel()
    return {"subject": subject, "label": label, "intensity": intensity}


