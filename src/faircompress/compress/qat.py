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
Activations stay float, as in int8-weights, unless ``activations: true``:

With ``activations: true`` (labelled ``int8-qat-static``) the input of every one of those kernels is
fake-quantised too, as int8-static's QDQ export quantises the inputs of Conv/Gemm/MatMul: uint8,
asymmetric, per tensor, round half to even of x / scale plus the zero point, clipped to 0..255, and
dequantised ((q - zero point) x scale, float32, as ONNX Runtime's QuantizeLinear/DequantizeLinear
compute). The ranges are calibrated once, before fine-tuning, on the first 256 calibration images
(``ctx.images()``, the seeded sample the export steps get; 256 is int8-static's default), with
int8-static's rule: ONNX Runtime's MinMax (minimum and maximum over all images, of the incoming float
model in eval mode) turned into a scale and zero point by its own ``compute_scale_zp``, taken on the
very tensor the layer gets (int8-static gives a tensor that comes out of a pooling, flattening or
reshaping op that op's input range instead: the same after ReLU and max pooling, wider after average
pooling). They are then kept FIXED, not tracked by an exponential moving average: the file's ranges
are known from the start, every epoch (and so the selection of the best one) is scored with exactly
the file's quantisation (in fp32 training; under bf16 autocast the dequantised values are rounded to bf16 on their way into the next layer, so training sees the file's codes to bf16's precision), and the restored best checkpoint cannot carry ranges from another epoch. Gradients pass straight through where the code
fell inside 0..255 and are zero where it was clipped (the usual straight-through estimator).

The quantisers are `ActivationQuant` children (``<layer>.input_quant``, buffers ``scale`` and
``zero_point`` in the checkpoint) run by a forward pre-hook; they stay on the model after training
(`rebuild` puts them back on a model loaded from the checkpoint), and export to ONNX as a
QuantizeLinear/DequantizeLinear pair on the layer's input holding those very buffers. The export step
then stores the weights as int8 codes exactly as above, so the file is a static QDQ file (int8
weights, uint8 activations at fixed scales) whose activation scales and zero points are, by
construction, the trained ones (nothing is recalibrated after training; ONNX Runtime's
``quantize_static`` with ``TensorQuantOverrides`` could pin them too, but would need them carried to the
export step by name; here they travel in the file). Unlike int8-static, only those inputs are
quantised: kernels under 1,024 elements and every other tensor (layer outputs, pooling, additions,
the logits) stay float, dense layers keep int8-weights' per-tensor scales, biases stay float and
BatchNorm is not folded into the kernels; so ONNX Runtime's CPU provider dequantises and computes in
float (its integer kernels need a quantised output too), and the file models int8 inputs rather
than running integer arithmetic. A model with no such kernel (pca_mlp) gets no activation quantiser,
and its file is int8-qat's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
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

# ----------------------------------------------------------------------------- activations

ACTIVATION_RANGE = (0, 255)  # uint8 codes, as int8-static's activations (QuantType.QUInt8, asymmetric)
CALIBRATION_IMAGES = 256  # int8-static's default sample (QuantizeParams.calibration_images)


class _FakeQuantActivation(torch.autograd.Function):
    """Forward: QuantizeLinear then DequantizeLinear in float32; backward: the identity where the code
    was not clipped, zero where it was. Exported as that QuantizeLinear/DequantizeLinear pair."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        zp = zero_point.float()
        code = torch.round(x.float() / scale) + zp  # division, as ONNX Runtime's QuantizeLinear (not x * 1/scale)
        lo, hi = ACTIVATION_RANGE
        ctx.save_for_backward((code >= lo) & (code <= hi))
        return ((torch.clamp(code, lo, hi) - zp) * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None

    @staticmethod
    def symbolic(g, x, scale, zero_point):
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)


class ActivationQuant(nn.Module):
    """A fixed uint8 fake-quantiser: buffers ``scale`` (float32) and ``zero_point`` (uint8), per tensor."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FakeQuantActivation.apply(x, self.scale, self.zero_point)


def _quantise_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_quant(args[0]), *args[1:])


def calibrate_inputs(model: nn.Module, images: np.ndarray, batch: int = 64) -> dict[str, tuple[float, float]]:
    """MinMax of each quantised kernel's input over ``images`` (raw pixels, as the file takes them),
    the model in eval mode: {layer: (min, max)}, as ONNX Runtime's MinMax calibrator gathers them."""
    seen: dict[str, list[torch.Tensor]] = {}

    def observe(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            seen.setdefault(name, []).append(torch.stack([x.min(), x.max()]).cpu())
        return hook

    handles = [m.register_forward_pre_hook(observe(name)) for name, m in quantised_kernels(model).items()]
    training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(torch.from_numpy(np.asarray(images[i : i + batch], dtype=np.float32)).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return {name: (float(torch.stack(v)[:, 0].min()), float(torch.stack(v)[:, 1].max())) for name, v in seen.items()}


def activation_params(low: float, high: float) -> tuple[float, int]:
    """int8-static's scale and zero point for a calibrated range: ONNX Runtime's own ``compute_scale_zp``
    (the range widened to hold 0; scale (max - min) / 255, zero point round(-min / scale))."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(onnx.TensorProto.UINT8)
    zero_point, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax)
    return float(np.float32(scale)), int(zero_point)


def attach_activation_quant(model: nn.Module, ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, ActivationQuant]:
    """Put a fake-quantiser on the input of every kernel QAT quantises (in place), from its calibrated
    range; without ``ranges``, placeholders for a checkpoint's buffers to fill."""
    added = {}
    for name, m in quantised_kernels(model).items():
        scale, zero_point = activation_params(*ranges[name]) if ranges is not None else (1.0, 0)
        m.add_module("input_quant", ActivationQuant(scale, zero_point).to(m.weight.device))
        m.register_forward_pre_hook(_quantise_input)
        added[name] = m.input_quant
    return added


def activation_quant_params(model: nn.Module) -> dict[str, dict[str, float | int]]:
    """Each quantised input's scale and zero point, by layer."""
    return {name: {"scale": float(m.scale), "zero_point": int(m.zero_point)}
            for name, m in model.named_modules() if isinstance(m, ActivationQuant)}


# ----------------------------------------------------------------------------- recipe step

class QATParams(StepParams):
    epochs: int = Field(2, ge=0, description="fine-tuning epochs under int8 weights")
    per_channel_dense: bool = Field(False, description="dense layers per output channel (as int8-weights; TFLite: per tensor)")
    activations: bool = Field(False, description="also fake-quantise the kernels' inputs (uint8, fixed calibrated ranges) "
                                                 "and write a static QDQ file with those ranges")


@STEPS.register("qat")
class QATStep(TrainStep, ExportStep):
    """Both kinds: it fine-tunes the PyTorch model, then writes the int8 file."""

    name, Params = "qat", QATParams
    example = {"epochs": 1}
    spelled = ("quantize", "mode", "qat")  # {quantize: {mode: qat, ...}} is this step
    excludes = {"quantize": "qat writes the int8 file itself"}
    quiet_defaults = ("activations",)  # added later: older recipes keep their keys and run ids

    def short(self) -> str:
        return ("int8-qat-static" if self.params.activations else "int8-qat") + self._extras("activations")

    def apply(self, model: nn.Module, ctx: TuneContext) -> None:
        p = self.params
        ranges = None
        if p.activations:
            if ctx.images is None:
                raise ValueError("qat with activations: true calibrates on training images, and none were given")
            ranges = calibrate_inputs(model, ctx.images()[:CALIBRATION_IMAGES])  # the incoming float model, as int8-static
        attach_fake_quant(model, p.per_channel_dense)
        if ranges is not None:
            if not attach_activation_quant(model, ranges):
                ctx.note("qat: no kernel of 1,024 elements or more, so no activation to quantise")
            ctx.details[self.name] = {"activations": activation_quant_params(model)}
        if p.epochs:
            ctx.fine_tune(model, p.epochs, None)
        strip_fake_quant(model)  # the activation quantisers stay: the checkpoint and the export carry them

    def rebuild(self, model: nn.Module, record: object, input_shape: tuple[int, ...]) -> None:
        if self.params.activations:  # placeholders; the checkpoint's buffers hold the trained values
            attach_activation_quant(model)

    def export_precision(self) -> Literal["fp32", "fp16"]:
        return "fp32"

    def transform(self, src: Path, dst: Path, calibration: np.ndarray) -> None:
        """The activation quantisers are in ``src`` already (exported from the trained model's buffers)."""
        quantize_weights_int8(src, dst, self.params.per_channel_dense, exact=True)
