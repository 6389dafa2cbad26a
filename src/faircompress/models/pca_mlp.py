"""PCA + MLP on LPQ and PHOG features, as Dixit et al. have it for SFEW (after Dhall et al. 2011):
10 inputs (the first 5 principal components of the image's LPQ histogram and the first 5 of its
PHOG descriptor, each block of 5 standardised by its own mean and standard deviation), one hidden
layer of sigmoid units and the class layer.

The whole pipeline is torch operations inside ``forward``, so the model (and its ONNX file) takes
raw 0..255 pixels like every other model: LPQ as fixed convolutions (the STFT kernels), a sign test,
bit packing and a histogram (one-hot of each 4-bit half of the code, then a matrix product of the
two halves' one-hots: the joint 16 x 16 counts are the 256 bins); PHOG as fixed gradient
convolutions, orientation bins found by comparing the gradient with each bin boundary's direction
(no atan2), and average pooling over the pyramid cells; PCA and scaling as one fixed linear map per
block. Only the two ``nn.Linear`` layers are trained (and pruned and clustered); everything before
them is buffers, fitted once on the training images by ``fit_to_training`` and saved in the state
dict, so a checkpoint carries it. The NumPy reference is ``faircompress.data.descriptors``.

With ``input: features`` the model takes the features themselves, as SFEW distributes them (a
features table, e.g. the ``sfew_features`` dataset): float32 (N, F, 1, 1), the first F/2 the LPQ block
and the rest the PHOG block. Each block is standardised by its own mean and standard deviation
(pooled over its features, fitted on the training rows by ``fit_to_training``), a fixed linear map
per block in the same buffers; then the same sigmoid hidden layer and class layer. Its ONNX file
takes the F raw features.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.descriptors import LPQ_BINS, LUMA, lpq_filters, phog_crop, phog_size
from .registry import MODELS

_FIT_BATCH = 256
INPUTS = ("image", "features")
_IMAGE_ONLY = ("lpq_window", "phog_bins", "phog_levels", "phog_angle")  # the descriptors' parameters


def boundary_directions(bins: int, angle: int) -> np.ndarray:
    """(B, 2) direction (dx, dy) of each bin boundary inside [0, 180) degrees, above 0. Scaled so the
    larger component is 1 and near-zeros are 0: boundaries at multiples of 45 degrees are then exact
    ((1, 1), (0, 1), (-1, 1)), so integer gradients on a boundary compare exactly (as atan2 bins them)."""
    if angle == 360 and bins % 2:
        raise ValueError(f"phog_bins must be even over 360 degrees (each half-plane gets half), got {bins}")
    per_half = bins // 2 if angle == 360 else bins
    phi = np.radians(np.arange(1, per_half) * angle / bins)
    d = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    d[np.abs(d) < 1e-9] = 0.0
    return d / np.abs(d).max(axis=1, keepdims=True)


class LPQHistogram(nn.Module):
    """(N, 1, H, W) grey levels -> (N, 256) normalised LPQ histograms (Ojansivu & Heikkilä 2008)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.register_buffer("kernels", torch.tensor(lpq_filters(window), dtype=torch.float32)[:, None])
        nibbles = torch.zeros(2, 8, 1, 1)
        nibbles[0, :4, 0, 0] = nibbles[1, 4:, 0, 0] = torch.tensor([1.0, 2.0, 4.0, 8.0])
        self.register_buffer("nibbles", nibbles)  # bits 0-3 -> low half of the code, bits 4-7 -> high half
        self.register_buffer("levels", torch.arange(16, dtype=torch.float32)[:, None])

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        bits = (F.conv2d(g, self.kernels) > 0).to(g.dtype)
        halves = F.conv2d(bits, self.nibbles).flatten(2)  # (N, 2, P): the code's two 4-bit halves
        low = (halves[:, 0:1] == self.levels).to(g.dtype)  # (N, 16, P) one-hot
        high = (halves[:, 1:2] == self.levels).to(g.dtype)
        # counts scaled by a power of two >= the pixel count: exact in float32, no fp16 overflow
        pixels = halves.shape[2]
        scale = 2.0 ** -math.ceil(math.log2(pixels))
        joint = torch.matmul(high * scale, low.transpose(1, 2)) * (1 / (scale * pixels))  # [hi, lo]: bin 16 hi + lo
        return joint.flatten(1)


class PHOGDescriptor(nn.Module):
    """(N, 1, H, W) grey levels -> (N, bins * sum 4^l) PHOG (Bosch, Zisserman & Muñoz 2007)."""

    def __init__(self, size: int, bins: int, levels: int, angle: int) -> None:
        super().__init__()
        self.bins, self.levels, self.angle = bins, levels, angle
        self.crop = phog_crop(size, levels)
        central = torch.zeros(2, 1, 3, 3)
        central[0, 0, 1, 0], central[0, 0, 1, 2] = -1.0, 1.0  # gx = f(x+1) - f(x-1) along columns
        central[1, 0, 0, 1], central[1, 0, 2, 1] = -1.0, 1.0  # gy along rows
        self.register_buffer("central", central)
        d = torch.tensor(boundary_directions(bins, angle), dtype=torch.float32)
        self.register_buffer("dx", d[:, 0, None, None])
        self.register_buffer("dy", d[:, 1, None, None])

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        grads = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.central)
        start, length = self.crop
        grads = grads[:, :, start : start + length, start : start + length]
        gx, gy = grads[:, 0:1], grads[:, 1:2]
        weighted = self._onehot(gx, gy) * torch.sqrt(gx * gx + gy * gy)  # (N, K, h, w)
        return self._pyramid(weighted)

    def _onehot(self, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) one-hot orientation bins: fold into [0, 180), then theta >= phi_k exactly
        when the gradient lies counter-clockwise of boundary k (cross product >= 0)."""
        lower = (gy < 0) | ((gy == 0) & (gx < 0))
        fx, fy = torch.where(lower, -gx, gx), torch.where(lower, -gy, gy)
        at_least = (fy * self.dx - fx * self.dy >= 0).to(gx.dtype)  # (N, B, h, w), decreasing in k
        ones = torch.ones_like(gx)
        steps = torch.cat([ones, at_least, ones * 0], dim=1)
        half = steps[:, :-1] - steps[:, 1:]  # bin j: theta >= phi_j and not theta >= phi_{j+1}
        if self.angle == 180:
            return half
        low = lower.to(gx.dtype)
        return torch.cat([half * (1 - low), half * low], dim=1)

    def _pyramid(self, weighted: torch.Tensor) -> torch.Tensor:
        """Cells' shares of the total: a cell's mean / (4^l (L + 1) whole-image mean), so no sum can
        overflow in fp16 (this is its sum over the sum of the whole descriptor)."""
        length = weighted.shape[2]
        total = weighted.sum(1, keepdim=True).mean((2, 3), keepdim=True).clamp_min(1e-6) * (self.levels + 1)
        parts = []
        for level in range(self.levels + 1):
            side = length // 2**level
            cells = F.avg_pool2d(weighted, side) / (total * 4**level)  # (N, K, 2^l, 2^l)
            parts.append(cells.permute(0, 2, 3, 1).flatten(1))
        return torch.cat(parts, dim=1)


def pca_standardiser(x: np.ndarray, k: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with x @ W.T + b = the first ``k`` principal component scores of ``x`` (rows = images),
    standardised by the block's one mean and standard deviation (pooled over its k scores, as Dixit
    et al. section 2.2 normalise each block of five). Each component's sign: largest loading positive."""
    n, dim = x.shape
    if n <= k or dim < k:
        raise ValueError(f"pca_mlp: the {what} PCA needs more than {k} training images and {k} dimensions, got {n} and {dim}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[:k]
    v *= np.where(v[np.arange(k), np.abs(v).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    scores = (x - mean) @ v.T
    mu, sd = scores.mean(), scores.std()
    if not sd > 0:
        raise ValueError(f"pca_mlp: the {what} descriptors of the training images do not vary; cannot standardise")
    return v / sd, -(mean @ v.T + mu) / sd


def _check_params(in_channels: int, input_size: int, hidden: int, components: int, lpq_window: int, phog_bins: int,
                  phog_levels: int, phog_angle: int) -> None:
    """Stop on parameters the model cannot be built with, naming the parameter (the rest are checked
    where they are used: lpq_window by lpq_filters, phog_levels against the size by phog_crop)."""
    if input_size == 1:
        raise ValueError(f"pca_mlp with input: image takes images, but this input is {in_channels} features per sample "
                         "(N, F, 1, 1): set model.params.input: features")
    if in_channels not in (1, 3):
        raise ValueError(f"pca_mlp takes grey (1) or RGB (3) images, not in_channels {in_channels}")
    if input_size < lpq_window:
        raise ValueError(f"input_size {input_size} is too small for lpq_window {lpq_window}")
    if phog_angle not in (180, 360):
        raise ValueError(f"phog_angle must be 180 or 360, not {phog_angle}")
    if phog_bins < 2 or phog_levels < 0 or hidden < 1:
        raise ValueError(f"phog_bins must be >= 2, phog_levels >= 0 and hidden >= 1 (got {phog_bins}, {phog_levels}, {hidden})")
    if not 1 <= components <= min(LPQ_BINS, phog_size(phog_bins, phog_levels)):
        raise ValueError(f"components must be from 1 to the smaller descriptor's size, got {components}")


def _check_features(in_channels: int, input_size: int, components: int) -> None:
    """Stop on a features input the model cannot split into its LPQ and PHOG blocks."""
    if input_size != 1:
        raise ValueError(f"pca_mlp with input: features takes a features table's rows (N, F, 1, 1), but this input is images "
                         f"of {in_channels} x {input_size} x {input_size}: set model.params.input: image, or use a features "
                         "dataset (sfew_features)")
    if in_channels % 2 or in_channels // 2 != components:
        raise ValueError(f"pca_mlp with input: features splits the features into two equal blocks (LPQ, PHOG) of components "
                         f"({components}) each, but the input has {in_channels} features"
                         + (f": set components: {in_channels // 2}" if in_channels % 2 == 0 else ""))


class PCAMLP(nn.Module):
    """Raw 0..255 pixels -> LPQ + PHOG -> fixed PCA + scaling (10 features) -> sigmoid hidden -> classes;
    or (``input="features"``) the 10 raw features (N, 10, 1, 1) -> fixed scaling -> sigmoid hidden -> classes."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, hidden: int = 30, components: int = 5,
                 lpq_window: int = 7, phog_bins: int = 8, phog_levels: int = 3, phog_angle: int = 360,
                 input: str = "image") -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"pca_mlp's input is image or features, not {input!r}")
        self.takes_features = input == "features"
        if self.takes_features:
            if hidden < 1:
                raise ValueError(f"hidden must be >= 1, got {hidden}")
            _check_features(in_channels, input_size, components)
            self.register_buffer("luma", None)
            self.lpq = self.phog = None
            dims = {"lpq": components, "phog": components}  # each block's scaling: (k, k) diagonal
        else:
            _check_params(in_channels, input_size, hidden, components, lpq_window, phog_bins, phog_levels, phog_angle)
            self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32)[None, :, None, None] if in_channels == 3 else None)
            self.lpq = LPQHistogram(lpq_window)
            self.phog = PHOGDescriptor(input_size, phog_bins, phog_levels, phog_angle)
            dims = {"lpq": LPQ_BINS, "phog": phog_size(phog_bins, phog_levels)}
        for name, dim in dims.items():
            self.register_buffer(f"{name}_weight", torch.eye(components, dim))  # unfitted: the first coordinates
            self.register_buffer(f"{name}_bias", torch.zeros(components))
        self.hidden = nn.Linear(2 * components, hidden)
        self.out = nn.Linear(hidden, num_classes)

    def descriptors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(LPQ histograms, PHOG descriptors) of raw pixels (N, C, H, W); with features input, the
        two blocks of the raw features (N, F, 1, 1)."""
        if self.takes_features:
            k = self.lpq_weight.shape[0]
            flat = x.flatten(1)  # (N, F)
            return flat[:, :k], flat[:, k:]
        g = x if self.luma is None else (x * self.luma).sum(1, keepdim=True)
        return self.lpq(g), self.phog(g)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 10 standardised principal components (N, 2 * components). Computed at the buffers'
        precision: under bf16 autocast the sign tests and the counts would lose precision."""
        with torch.autocast(x.device.type, enabled=False):
            lpq, phog = self.descriptors(x.to(self.lpq_weight.dtype))
            return torch.cat([F.linear(lpq, self.lpq_weight, self.lpq_bias), F.linear(phog, self.phog_weight, self.phog_bias)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) raw pixels or (B, F, 1, 1) features -> (B, classes)
        return self.out(torch.sigmoid(self.hidden(self.features(x))))

    @torch.no_grad()
    def fit_to_training(self, images: np.ndarray) -> None:
        """Fit each block's PCA and scaling on the training images (uint8 (N, C, H, W)), in float64;
        with features input, each block's scaling on the training rows (float32 (N, F, 1, 1))."""
        if self.takes_features:
            self._fit_scaling(images)
            return
        lpq, phog = [], []
        for i in range(0, len(images), _FIT_BATCH):
            x = torch.from_numpy(images[i : i + _FIT_BATCH]).to(self.lpq_weight.device, torch.float32)
            a, b = self.descriptors(x)
            lpq.append(a.double().cpu().numpy())
            phog.append(b.double().cpu().numpy())
        k = self.lpq_weight.shape[0]
        for name, desc in (("lpq", np.concatenate(lpq)), ("phog", np.concatenate(phog))):
            w, b = pca_standardiser(desc, k, name.upper())
            getattr(self, f"{name}_weight").copy_(torch.from_numpy(w))
            getattr(self, f"{name}_bias").copy_(torch.from_numpy(b))

    def _fit_scaling(self, features: np.ndarray) -> None:
        """Each block standardised by its one mean and standard deviation over the training rows and
        the block's features (Dixit et al. section 2.2): weight I / sd, bias -mean / sd."""
        k = self.lpq_weight.shape[0]
        if features.ndim != 4 or features.shape[1:] != (2 * k, 1, 1):
            raise ValueError(f"pca_mlp was built for {2 * k} features (N, {2 * k}, 1, 1), got {features.shape}")
        if len(features) < 2:
            raise ValueError(f"pca_mlp: standardising the features needs at least 2 training rows, got {len(features)}")
        x = features.reshape(len(features), 2 * k).astype(np.float64)
        for name, block in (("lpq", x[:, :k]), ("phog", x[:, k:])):
            mu, sd = block.mean(), block.std()
            if not sd > 0:
                raise ValueError(f"pca_mlp: the {name.upper()} features of the training rows do not vary; cannot standardise")
            getattr(self, f"{name}_weight").copy_(torch.from_numpy(np.eye(k) / sd))
            getattr(self, f"{name}_bias").copy_(torch.full((k,), -mu / sd, dtype=torch.float64))


def _input_kind(params: dict) -> str:
    """What a study must feed the model: a features table's rows or images (see `models.registry.input_kind`)."""
    return "features" if params.get("input") == "features" else "image"


def _check_config(params: dict) -> None:
    """Config-time checks (the rest need the dataset): the input's name, and no descriptor parameter
    with features input, where there is no descriptor for it to change."""
    if params.get("input", "image") not in INPUTS:
        raise ValueError(f"model.params.input: pca_mlp takes image or features, not {params['input']!r}")
    given = [k for k in _IMAGE_ONLY if k in params]
    if params.get("input") == "features" and given:
        raise ValueError(f"model.params: {', '.join(given)} set the LPQ and PHOG descriptors, which input: features does not "
                         "compute (the table holds them); remove them")


@MODELS.register("pca_mlp")
def pca_mlp(*, in_channels: int, num_classes: int, input_size: int, hidden: int = 30, components: int = 5, lpq_window: int = 7,
            phog_bins: int = 8, phog_levels: int = 3, phog_angle: int = 360, input: str = "image") -> nn.Module:
    """Dixit et al.'s SFEW model: 5 principal components each of LPQ and PHOG, one sigmoid hidden layer; takes the image, or
    (input: features) the 10 features of a features table."""
    return PCAMLP(in_channels, num_classes, input_size, hidden=hidden, components=components, lpq_window=lpq_window,
                  phog_bins=phog_bins, phog_levels=phog_levels, phog_angle=phog_angle, input=input)


pca_mlp.input_kind = _input_kind
pca_mlp.check_params = _check_config
