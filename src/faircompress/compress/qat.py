"""Quantisation-aware training: fine-tune under int8-weights' rounding, then store those very weights.

Written ``{qat: {...}}``, or ``{quantize: {mode: qat, ...}}`` (the same step). The rounding is
`quantize`'s int8-weights scheme, so post-training and quantisation-aware int8 are comparable:
symmetric codes -127..127 with scale max|w|/127, per output channel for convolutions and per tensor
for dense layers (``per_channel_dense`` as there), kernels under 1,024 elements left float. Each such
kernel gets a parametrization whose forward pass is that rounding of the latent weights and whose
backward pass is the identity (the straight-through estimator), so the loss, the selection of the best
epoch and the exported file all see the int8 weights while Adam moves the float latents. Zeros of the
incoming model (e.g. from a `prune` step before it) are kept at zero: the mask is part of the
parametrization, so pruned weights get no gradient and round to exactly 0.

After fine-tuning the parametrizations are stripped, leaving the rounded weights in the model: the
saved checkpoint and its fp32 export hold exactly code x scale for every kernel. The export step then
writes the int8-weights file (`quantize_weights_int8` with ``exact=True``): per channel, the scale among
max|w|/127 and its float32 neighbours for which code x scale reproduces the trained weights exactly, so
the file's weights ARE the fake-quantised weights the model was trained and selected with. Tensors
QAT did not train (fixed buffers such as pca_mlp's PCA maps) are rounded as int8-weights rounds them.
Activations stay float, as in int8-weights; fake-quantised activations are not implemented.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from ..evaluate.size import KERNEL_MIN_ELEMENTS
from .quantization import quantize_weights_int8
from .recipes import STEPS, ExportStep, StepParams, TrainStep, TuneContext

QUANTISED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # exported as Conv and Gemm/MatMul: what int8-weights quantises


def fake_quant_int8(w: torch.Tensor, axis: int | None) -> torch.Tensor:
    """int8-weights' rounding in float: round(w / s) * s, codes clipped to -127..127, s = max|w| / 127
    per index of ``axis`` (one s for the tensor when None; 1 where the maximum is 0)."""
    w = w.detach()
    amax = w.abs().amax(dim=tuple(d for d in range(w.dim()) if d != axis), keepdim=True) if axis is not None else w.abs().amax()
    scale = amax / torch.full_like(amax, 127.0)  # elementwise IEEE division, as NumPy's (never a reciprocal multiply)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class _StraightThrough(torch.autograd.Function):
    """Forward: the rounded weights, exactly (not w + (q - w), which float rounding can move off the
    grid). Backward: the identity."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, axis: int | None) -> torch.Tensor:
        return fake_quant_int8(w, axis)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class FakeQuantInt8(nn.Module):
    """Parametrization: weight = int8-weights' rounding of the latent (times ``keep``, the incoming
    non-zeros, when the kernel had zeros), gradients straight through."""

    def __init__(self, axis: int | None, keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("keep", keep)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(w if self.keep is None else w * self.keep, self.axis)


def quantised_kernels(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose weight QAT rounds: conv and dense layers with float kernels of 1,024 or more elements."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTISED) and m.weight.dtype == torch.float32 and m.weight.numel() >= KERNEL_MIN_ELEMENTS}


def attach_fake_quant(model: nn.Module, per_channel_dense: bool = False) -> nn.Module:
    """Put the parametrization on every kernel int8-weights quantises (in place); their zeros stay zero."""
    for m in quantised_kernels(model).values():
        w = m.weight.detach()
        keep = None if bool((w != 0).all()) else (w != 0)
        axis = None if isinstance(m, nn.Linear) and not per_channel_dense else 0
        parametrize.register_parametrization(m, "weight", FakeQuantInt8(axis, keep))
    return model


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Leave the rounded weights in the model and remove the parametrizations (in place)."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], FakeQuantInt8):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model

# ----------------------------------------------------------------------------- recipe step

class QATParams(StepParams):
    epochs: int = Field(2, ge=0, description="fine-tuning epochs under int8 weights")
    per_channel_dense: bool = Field(False, description="dense layers per output channel (as int8-weights; TFLite: per tensor)")


@STEPS.register("qat")
class QATStep(TrainStep, ExportStep):
    """Both kinds: it fine-tunes the PyTorch model, then writes the int8 file."""

    name, Params = "qat", QATParams
    example = {"epochs": 1}
    spelled = ("quantize", "mode", "qat")  # {quantize: {mode: qat, ...}} is this step
    excludes = {"quantize": "qat writes the int8 file itself"}

    def short(self) -> str:
        return "int8-qat" + self._extras()

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        attach_fake_quant(model, p.per_channel_dense)
        if p.epochs:
            ctx.fine_tune(model, p.epochs, None)
        strip_fake_quant(model)

    def export_precision(self) -> Literal["fp32", "fp16"]:
        return "fp32"

    def transform(self, src: Path, dst: Path, calibration: np.ndarray) -> None:
        quantize_weights_int8(src, dst, self.params.per_channel_dense, exact=True)
