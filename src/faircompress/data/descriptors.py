"""LPQ and PHOG image descriptors in NumPy, vectorised over a batch of images.

These are the reference implementations: the ``pca_mlp`` model computes the same descriptors with
torch operations inside its forward pass (so its ONNX file takes the image), and its tests check
that both give the same histograms.

- LPQ, Local Phase Quantization: Ojansivu & Heikkilä (2008), "Blur insensitive texture
  classification using local phase quantization", ICISP, LNCS 5099, 236-243. The short-term Fourier
  transform over an M x M window at the four frequencies u1 = (a, 0), u2 = (0, a), u3 = (a, a),
  u4 = (a, -a), a = 1/M; the signs of the real and imaginary parts of the four coefficients give an
  8-bit code per pixel (bit 1 where the part is > 0, as in the authors' lpq.m); the descriptor is the
  normalised 256-bin histogram of the codes over the valid pixels. The optional decorrelation
  (whitening) step is not done.
- PHOG, Pyramid Histogram of Oriented Gradients: Bosch, Zisserman & Muñoz (2007), "Representing
  shape with a spatial pyramid kernel", CIVR, 401-408. Gradient orientations binned into K bins over
  0-360 (or 0-180) degrees, each pixel weighted by its gradient magnitude, histogrammed over the cells
  of a spatial pyramid (level l: a 2^l x 2^l grid, l = 0..L), concatenated cell by cell and level by
  level, and normalised to sum 1. Bosch et al. count Canny edge pixels only; here every pixel counts,
  weighted by its magnitude (as HOG does), which needs no edge detector. Gradients are central
  differences [-1, 0, 1] with the border replicated, and the gradient image is centre-cropped to a
  multiple of 2^L on each side so that the finest cells are equal.
"""
from __future__ import annotations

import numpy as np

LPQ_BINS = 256
# ITU-R BT.601 luma (0.299, 0.587, 0.114, as MATLAB's rgb2gray) in 16-bit fixed point, summing to
# exactly 1: grey levels are then exact in float32 too, and a grey image stored as RGB keeps its values.
LUMA = np.array([19595, 38470, 7471]) / 65536


def grey(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images (C = 1 or 3) -> (N, H, W) float64 grey levels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {images.shape}")
    x = images.astype(np.float64)
    return x[:, 0] if x.shape[1] == 1 else np.einsum("nchw,c->nhw", x, LUMA)


# ----------------------------------------------------------------------------- LPQ
def lpq_filters(window: int) -> np.ndarray:
    """(8, M, M) real kernels for cross-correlation: Re and Im of exp(-2 pi i u.y) over the centred
    window y in {-r..r}^2 (y = (column offset, row offset)), for u1..u4, interleaved
    [Re u1, Im u1, Re u2, Im u2, Re u3, Im u3, Re u4, Im u4] (bit j of the code is kernel j).

    Each value is rounded to a multiple of 2^-10 and the centre adjusted so that every kernel sums to
    exactly 0 (the exact STFT at a non-zero frequency ignores a constant). Why: with integer pixels
    every product and partial sum is then a multiple of 2^-10 below 2^14, exact in float32 whatever
    the summation order (M <= 7), so a flat patch gives exactly 0 (bit 0) and float32 (torch, ONNX Runtime)
    and float64 (NumPy) give the same codes; unrounded, the sign of a zero response is rounding noise."""
    if window not in (3, 5, 7):  # 7 x 7 x 255 < 2^14: the largest window whose sums stay exact
        raise ValueError(f"lpq_window must be 3, 5 or 7, got {window}")
    a, r = 1.0 / window, window // 2
    dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    kernels = []
    for ux, uy in ((a, 0.0), (0.0, a), (a, a), (a, -a)):
        phase = -2 * np.pi * (ux * dx + uy * dy)
        kernels += [np.cos(phase), np.sin(phase)]
    k = np.round(np.stack(kernels) * 1024) / 1024
    k[:, r, r] -= k.sum(axis=(1, 2))
    return k


def lpq_codes(images: np.ndarray, window: int = 7) -> np.ndarray:
    """(N, H - M + 1, W - M + 1) uint8 LPQ codes of the valid pixels."""
    g = grey(images)
    windows = np.lib.stride_tricks.sliding_window_view(g, (window, window), axis=(1, 2))
    response = np.einsum("nhwij,kij->nkhw", windows, lpq_filters(window))
    bits = (response > 0).astype(np.uint8)
    return np.einsum("nkhw,k->nhw", bits, 1 << np.arange(8)).astype(np.uint8)


def code_histogram(codes: np.ndarray, bins: int = LPQ_BINS) -> np.ndarray:
    """(N, ...) integer codes -> (N, bins) histograms normalised to sum 1 per image."""
    n = len(codes)
    flat = codes.reshape(n, -1).astype(np.int64)
    counts = np.bincount((flat + bins * np.arange(n)[:, None]).ravel(), minlength=bins * n)
    return counts.reshape(n, bins) / flat.shape[1]


def lpq_histogram(images: np.ndarray, window: int = 7) -> np.ndarray:
    """(N, 256) normalised LPQ histograms."""
    return code_histogram(lpq_codes(images, window))


# ----------------------------------------------------------------------------- PHOG
def gradients(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences f(x+1) - f(x-1) along columns (gx) and rows (gy), border replicated."""
    g = np.pad(grey(images), ((0, 0), (1, 1), (1, 1)), mode="edge")
    return g[:, 1:-1, 2:] - g[:, 1:-1, :-2], g[:, 2:, 1:-1] - g[:, :-2, 1:-1]


def orientation_bins(gx: np.ndarray, gy: np.ndarray, bins: int, angle: int) -> np.ndarray:
    """Bin of each gradient's orientation atan2(gy, gx), over [0, angle) in ``bins`` equal bins
    (angle 180: a gradient and its opposite share a bin). A zero gradient falls in bin 0."""
    theta = np.degrees(np.arctan2(gy, gx)) % angle
    return np.minimum((theta // (angle / bins)).astype(np.int64), bins - 1)  # 359.99...% rounding up to 360


def phog_crop(size: int, levels: int) -> tuple[int, int]:
    """(start, length) of the centred crop to a multiple of 2^levels."""
    cells = 2 ** levels
    if size < cells:
        raise ValueError(f"phog_levels {levels} needs images of at least {cells} pixels a side, got {size}")
    length = size // cells * cells
    return (size - length) // 2, length


def phog(images: np.ndarray, bins: int = 8, levels: int = 3, angle: int = 360) -> np.ndarray:
    """(N, bins * sum_l 4^l) PHOG descriptors, normalised to sum 1 (all zeros for a flat image).
    Layout: level 0, then level 1, ...; within a level cells row by row, each cell's ``bins`` bins."""
    gx, gy = gradients(images)
    (top, h), (left, w) = phog_crop(gx.shape[1], levels), phog_crop(gx.shape[2], levels)
    gx, gy = gx[:, top : top + h, left : left + w], gy[:, top : top + h, left : left + w]
    magnitude = np.hypot(gx, gy)
    onehot = orientation_bins(gx, gy, bins, angle)[:, None] == np.arange(bins)[None, :, None, None]
    weighted = onehot * magnitude[:, None]  # (N, K, h, w)
    n = len(images)
    parts = []
    for level in range(levels + 1):
        c = 2**level
        cells = weighted.reshape(n, bins, c, h // c, c, w // c).sum(axis=(3, 5))  # (N, K, c, c)
        parts.append(cells.transpose(0, 2, 3, 1).reshape(n, -1))
    out = np.concatenate(parts, axis=1)
    total = out.sum(axis=1, keepdims=True)
    return out / np.where(total > 0, total, 1.0)


def phog_size(bins: int, levels: int) -> int:
    return bins * sum(4**level for level in range(levels + 1))
