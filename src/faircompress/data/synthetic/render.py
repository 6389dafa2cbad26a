"""Rendering a chunk of synthetic faces with vectorised NumPy, one function per facial feature.

A `Face` holds the chunk's geometry (each pixel's position in face coordinates) and its colours;
each feature function draws onto the image or returns a mask of dark feature lines, so a feature can
be changed, or tested, on its own. Face coordinates: x to the right, y downwards, the head about
0.55 wide and 0.75 high around the origin. The random draws happen in a fixed order (geometry,
colours, then the nuisances), so the same seed always gives the same images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import CUES, SyntheticParams

_FACE_SPAN = 0.8  # face units per half image: the head (half-height ~0.75) nearly fills the frame
_TONES = np.array([0.80, 0.58, 0.36])  # skin intensity per skin-tone group


def soft(d: np.ndarray, edge: float | np.ndarray) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance-like value (negative inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(d / edge, -30, 30)))


def segment_dist(x, y, x0, y0, x1, y1):
    """Distance from points (x, y) to segments (x0, y0)-(x1, y1); all broadcastable."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def blend(img: np.ndarray, color: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # img (B, C, H, W), color (B, C), mask (B, H, W)
    return img * (1 - mask[:, None]) + color[:, :, None, None] * mask[:, None]


@dataclass
class Face:
    """One chunk of B faces: pixel grids, face coordinates, per-image traits (each (B, 1, 1))."""

    frame: dict[str, np.ndarray]
    px: np.ndarray    # (S, S) pixel centres in [-1, 1]
    py: np.ndarray
    x: np.ndarray     # (B, S, S) face coordinates of each pixel
    y: np.ndarray
    edge: np.ndarray  # (B, 1, 1) about one pixel in face units
    skin: np.ndarray  # (B, C)
    hair: np.ndarray  # (B, C)

    def trait(self, key: str) -> np.ndarray:
        return self.frame[key][:, None, None]

    @property
    def child(self) -> np.ndarray:
        return (self.frame["age"] <= 1).astype(float)[:, None, None]

    @property
    def male(self) -> np.ndarray:
        return (self.frame["gender"] == 1).astype(float)[:, None, None]

    @property
    def dark(self) -> np.ndarray:
        """Feature colour: less contrast on darker skin, but never none; a group's `contrast` knob
        scales the features' difference from the skin."""
        base = np.clip(self.skin * 0.8 - 0.3, 0, 1)
        if "contrast" not in self.frame:
            return base
        return self.skin - self.frame["contrast"][:, None] * (self.skin - base)

    def cue(self, name: str) -> np.ndarray:
        return self.frame["cues"][:, CUES.index(name), None, None]


def place(p: SyntheticParams, frame: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[Face, np.ndarray]:
    """Each pixel's face coordinates (through the inverse of rotation, scale and shift) and the
    colours; returns the face and the background image (B, C, S, S)."""
    B, S, nz = len(frame["label"]), p.image_size, p.nuisance
    lin = (np.arange(S) + 0.5) / S * 2 - 1
    py, px = np.meshgrid(lin, lin, indexing="ij")
    theta = np.deg2rad(rng.uniform(-nz.rotation_deg, nz.rotation_deg, B))
    scale = rng.uniform(*nz.scale, B)
    shift = rng.normal(0, nz.shift, (B, 2))
    qx = px[None] - shift[:, 0, None, None]
    qy = py[None] - shift[:, 1, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    zoom = scale[:, None, None] / _FACE_SPAN  # the face fills the frame, like a detector's crop
    x, y = (c * qx + s * qy) / zoom, (-s * qx + c * qy) / zoom
    bg, skin, hair = _colours(p.rgb, frame, rng)
    img = np.broadcast_to(bg[:, :, None, None], (B, bg.shape[1], S, S)).copy()
    return Face(frame, px, py, x, y, (1.2 / S) / zoom, skin, hair), img


def _colours(rgb: bool, frame: dict[str, np.ndarray], rng: np.random.Generator):
    """Background, skin (by skin-tone group) and hair (greys with age) colours, (B, C) each."""
    B, age = len(frame["label"]), frame["age"]
    tone = _TONES[frame["skin_tone"]] + frame["skin_jitter"]
    if "skin_scale" in frame:  # a group drawn darker (or lighter) than its skin tone
        tone = tone * frame["skin_scale"]
    bg = rng.uniform(0.15, 0.95, (B, 1)) if not rgb else rng.uniform(0.1, 0.95, (B, 3))
    if "background" in frame:  # the shortcut tone, where a group's image carries one
        bg = np.where(np.isnan(frame["background"])[:, None], bg, frame["background"][:, None])
    if not rgb:
        hair = np.where(age >= 3, np.minimum(frame["hair_tone"] + 0.15 * (age - 2), 0.85), frame["hair_tone"])[:, None]
        return bg, tone[:, None], hair
    grey = np.clip(0.15 * (age - 2), 0, 0.5)[:, None]
    hair = (1 - grey) * frame["hair_tone"][:, None] * np.array([1.0, 0.8, 0.6]) + grey * 0.8
    return bg, tone[:, None] * np.array([1.08, 0.92, 0.78]), hair


def face_size(f: Face) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-height of the head; children's faces are rounder."""
    return f.trait("face_w") * (1 + 0.08 * f.child), f.trait("face_h") * (1 - 0.08 * f.child)


def head_distance(f: Face) -> np.ndarray:
    """Signed distance-like value of the head: an ellipse above the cheek line, a superellipse jaw
    below (squarer for male presentation)."""
    fw, fh = face_size(f)
    jaw_p = 2.0 + 1.4 * f.male - 0.3 * f.child
    pw = np.where(f.y > 0, jaw_p, 2.0)
    return (np.abs(f.x / fw) ** pw + np.abs(f.y / fh) ** pw) ** (1 / pw) - 1


def hair_mask(f: Face) -> np.ndarray:
    """A cap above the hairline, and for female presentation (not babies) long side strands."""
    fw, fh = face_size(f)
    x, y, edge = f.x, f.y, f.edge
    cap = soft(np.maximum(np.hypot(x / (fw * 1.1), (y + 0.04) / (fh * 1.08)) - 1, y + 0.45 * fh + 0.08 * x * x), edge)
    long_hair = (1 - f.male) * (1 - (f.frame["age"] == 0)[:, None, None])
    strands = long_hair * soft(np.maximum(np.maximum(np.abs(np.abs(x) - fw) - 0.09, y - 0.55), -0.75 * fh - y), edge)
    return np.clip(cap + strands, 0, 1)


def eye_y(f: Face) -> np.ndarray:
    return -0.08 + 0.08 * f.child  # children: lower


def draw_eyes(f: Face, img: np.ndarray) -> np.ndarray:
    """Sclera and iris; openness follows the eye_open cue (children: larger eyes)."""
    ey, eye_dx = eye_y(f), f.trait("eye_dx")
    ew = 0.09 * f.trait("eye_size") * (1 + 0.2 * f.child)
    eh = np.clip(0.05 * f.trait("eye_size") * (1 + 0.9 * f.cue("eye_open")), 0.006, 0.16)
    ax = np.abs(f.x)
    eye_mask = soft(np.hypot((ax - eye_dx) / ew, (f.y - ey) / eh) - 1, f.edge / eh)
    img = blend(img, np.clip(f.skin + 0.35, 0, 0.97), eye_mask)
    iris = soft(np.hypot(ax - eye_dx, f.y - ey) - 0.045, f.edge) * eye_mask
    return blend(img, f.dark * 0.6, iris)


def brows(f: Face) -> np.ndarray:
    """Brow segments: the whole brow moves with brow_raise, the inner ends with brow_tilt. The same
    for every group: a cue's visibility must not depend on gender."""
    eye_dx = f.trait("eye_dx")
    by = eye_y(f) - 0.13 - 0.13 * f.cue("brow_raise")
    inner_y = by - 0.1 * f.cue("brow_tilt")
    return soft(segment_dist(np.abs(f.x), f.y, eye_dx - 0.11, inner_y, eye_dx + 0.11, by + 0.01) - 0.028, f.edge)


def nose(f: Face, feat: np.ndarray) -> np.ndarray:
    """Ridge, nostrils, and wrinkle lines across the bridge (nose_wrinkle cue)."""
    nl, ax, x, y, edge = f.trait("nose_len"), np.abs(f.x), f.x, f.y, f.edge
    feat = np.maximum(feat, 0.45 * soft(segment_dist(x, y, 0.0, -0.02, 0.0, 0.16 * nl) - 0.01, edge))
    feat = np.maximum(feat, 0.8 * soft(np.hypot(ax - 0.05, y - 0.19 * nl) - 0.022, edge))
    wrinkle = np.clip(f.cue("nose_wrinkle"), 0, 1.5)
    for k in range(3):
        line = np.abs(y - (-0.02 + 0.04 * k)) - 0.01
        feat = np.maximum(feat, wrinkle * 0.8 * soft(np.maximum(line, ax - 0.09), edge))
    return feat


def mouth_width(f: Face) -> np.ndarray:
    return f.trait("mouth_w") * (1 + 0.15 * np.clip(f.cue("mouth_curve"), 0, 1))


def mouth_y(f: Face) -> np.ndarray:
    return 0.4 - 0.04 * f.child


def draw_mouth(f: Face, img: np.ndarray) -> np.ndarray:
    """A curve whose corners lift with mouth_curve and tilt with mouth_asym; mouth_open opens it,
    with a dark interior."""
    mw, my = mouth_width(f), mouth_y(f)
    u = np.clip(f.x / mw, -1.3, 1.3)
    centre = my - 0.2 * f.cue("mouth_curve") * u * u - 0.13 * f.cue("mouth_asym") * np.clip(u, 0, None) ** 2
    half_open = np.clip(0.11 * f.cue("mouth_open"), 0, 0.16) * np.clip(1 - u * u, 0, 1)
    lip = np.abs(f.y - centre) - (0.016 + half_open)
    img = blend(img, f.dark * 0.6, soft(np.maximum(lip, np.abs(f.x) - mw), f.edge))
    inside = np.maximum(np.abs(f.y - centre) - (half_open - 0.01), np.abs(f.x) - 0.8 * mw)
    return blend(img, f.dark * 0.2, soft(inside, f.edge))


def age_lines(f: Face, feat: np.ndarray) -> np.ndarray:
    """Forehead lines and nasolabial folds, stronger with age (none under 20)."""
    lines = np.clip((f.frame["age"] - 2) / 2, 0, 1)[:, None, None] * 0.5
    ax, y, edge = np.abs(f.x), f.y, f.edge
    for k in range(3):
        fl = np.abs(y - (-0.42 + 0.06 * k)) - 0.006
        feat = np.maximum(feat, lines * soft(np.maximum(fl, ax - 0.25), edge))
    naso = segment_dist(ax, y, 0.1, 0.22, mouth_width(f) + 0.04, 0.45) - 0.008
    return np.maximum(feat, lines * soft(naso, edge))


def stubble(f: Face, head_d: np.ndarray) -> np.ndarray:
    """Male presentation (not babies): shading on the chin, below the mouth, never over an expression cue."""
    shown = (f.frame["gender"] == 1) & (f.frame["age"] != 0)
    return 0.25 * shown[:, None, None] * soft(np.maximum(head_d, mouth_y(f) + 0.2 - f.y), f.edge)


def draw_face(f: Face, img: np.ndarray) -> np.ndarray:
    """Hair, head, eyes, then the dark feature lines (brows, nose, age lines, stubble) and the mouth."""
    head_d = head_distance(f)
    img = blend(img, f.hair, hair_mask(f))
    img = blend(img, f.skin, soft(head_d, f.edge / face_size(f)[0]))
    img = draw_eyes(f, img)
    feat = nose(f, brows(f))
    img = draw_mouth(f, img)
    feat = np.maximum(age_lines(f, feat), stubble(f, head_d))
    return blend(img, f.dark, feat * soft(head_d, f.edge))


def nuisances(p: SyntheticParams, f: Face, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Illumination gradient, occluder, blur and pixel noise."""
    B, S, C, nz = img.shape[0], p.image_size, img.shape[1], p.nuisance
    ang, strength = rng.uniform(0, 2 * np.pi, B), rng.uniform(0, nz.illumination, B)
    grad = 1 + strength[:, None, None] * (np.cos(ang)[:, None, None] * f.px + np.sin(ang)[:, None, None] * f.py)
    img = img * grad[:, None]
    occ = rng.random(B) < nz.occluder_prob
    if occ.any():
        ox, oy = rng.uniform(-0.6, 0.6, B), rng.uniform(-0.2, 0.8, B)
        orx, ory = rng.uniform(0.15, 0.35, B), rng.uniform(0.1, 0.3, B)
        occ_d = np.hypot((f.px - ox[:, None, None]) / orx[:, None, None], (f.py - oy[:, None, None]) / ory[:, None, None]) - 1
        img = blend(img, rng.uniform(0.1, 0.9, (B, C)), soft(occ_d, 2.0 / S) * occ[:, None, None])
    blur = rng.random(B) < nz.blur_prob
    if blur.any():
        img[blur] = box_blur(img[blur])
    return img + rng.normal(0, nz.noise, img.shape)


def box_blur(img: np.ndarray) -> np.ndarray:
    """3x3 binomial blur over the last two axes, edges replicated."""
    k = np.array([0.25, 0.5, 0.25])
    for axis in (-1, -2):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (1, 1)
        q = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w * np.take(q, range(i, i + n), axis=axis) for i, w in enumerate(k))
    return img


def render(p: SyntheticParams, frame: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Render one chunk of frames (every array in ``frame`` has one entry per image) as uint8 (B, C, S, S)."""
    face, img = place(p, frame, rng)
    img = nuisances(p, face, draw_face(face, img), rng)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
