"""Post-training quantisation of an exported ONNX file (ONNX Runtime's quantisation tools).

Modes:
  int8-weights  the paper's TFLite dynamic-range setting: int8 symmetric weights (-127..127), per
                output channel for convolutions and per tensor for dense layers (as TFLite's
                FULLY_CONNECTED; `per_channel_dense` for per channel), tensors under 1,024 elements
                and biases left float. The file holds each kernel as int8 plus its scale(s), feeding
                a DequantizeLinear, so ONNX Runtime computes in float. TFLite's hybrid kernels differ
                there: they also quantise the activations to int8 on the fly and multiply in
                integers, so their outputs (not the stored weights) can differ slightly. ONNX Runtime
                ships no weight-only pass for Conv, so this one is written here.
  int8-static   full-integer QDQ, per-channel weights, activation ranges calibrated on training images.
  int8-dynamic  onnxruntime.quantization.quantize_dynamic, for comparison.
(fp16 is produced at export time: see export.py.)
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import Field

from ..atomic import atomic_path, partial_path
from ..evaluate.size import KERNEL_MIN_ELEMENTS
from .recipes import STEPS, ExportStep, StepParams



@contextmanager
def _quiet_ort():
    """ORT's quantiser logs advice on the root logger (e.g. per-channel axes of 1-D BatchNorm weights,
    which it rightly skips); keep a study's output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


def quantize_weights_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel_dense: bool = False,
                          exact: bool = False) -> dict[str, bool]:
    """int8 symmetric (-127..127) weights feeding DequantizeLinear: per output channel for Conv,
    per tensor for Gemm/MatMul unless ``per_channel_dense``. Returns, per quantised tensor, whether
    its codes x scales reproduce it exactly.

    ``exact`` (for weights already on an int8 grid, as quantisation-aware training leaves them): per
    channel, the scale is the first of max|w|/127 and its float32 neighbours (up to 2 steps away) for
    which code x scale gives back every weight bit for bit; channels that none reproduces keep
    max|w|/127, so weights not on a grid are rounded exactly as without ``exact``."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes = []
    reproduced: dict[str, bool] = {}
    for node in g.node:
        idx = WEIGHT_INPUT.get(node.op_type)
        name = node.input[idx] if idx is not None and len(node.input) > idx else None
        init = inits.get(name) if name else None
        if init is None or np.prod(init.dims) < KERNEL_MIN_ELEMENTS or init.data_type != onnx.TensorProto.FLOAT:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(init)
        axis = _output_axis(node, w) if node.op_type == "Conv" or per_channel_dense else None
        q, scale = _exact_int8(w, axis) if exact else _symmetric_int8(w, axis)
        reproduced[name] = bool(np.array_equal(_dequantized(q, scale, axis), w))
        g.initializer.remove(init)
        g.initializer.extend([
            numpy_helper.from_array(q, name + "_int8"),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero"),
        ])
        extra = {} if axis is None else {"axis": axis}
        new_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"], [name],
                                          name=name + "_dequantize", **extra))
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(model)
    _save(model, dst)
    return reproduced


def _symmetric_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and float32 scales: one per index of ``axis``, or a scalar when ``axis`` is None."""
    reduce = tuple(a for a in range(w.ndim) if a != axis)
    scale = np.abs(w).max(axis=reduce, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(()) if axis is None else scale.reshape(-1)


def _exact_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """As `_symmetric_int8`, but each channel's scale is the first of max|w|/127, one float32 step
    down, one up, two down, two up, whose codes reproduce the channel exactly (else max|w|/127)."""
    q, scale = _symmetric_int8(w, axis)
    moved = np.moveaxis(w, axis, 0) if axis is not None else w[None]
    rows = moved.reshape(len(moved), -1)  # one row per channel (one row: per tensor)
    first = scale.reshape(-1)
    codes = (np.moveaxis(q, axis, 0) if axis is not None else q[None]).reshape(rows.shape).copy()
    scales, done = first.copy(), np.zeros(len(first), dtype=bool)
    for step in (0, -1, 1, -2, 2):
        cand = first
        for _ in range(abs(step)):
            cand = np.nextafter(cand, np.float32(np.inf if step > 0 else 0)).astype(np.float32)
        c = np.clip(np.round(rows / cand[:, None]), -127, 127).astype(np.float32)
        ok = ~done & (cand > 0) & (c * cand[:, None] == rows).all(1)
        codes[ok], scales[ok] = c[ok], cand[ok]
        done |= ok
        if done.all():
            break
    codes = codes.reshape(moved.shape)
    return (np.moveaxis(codes, 0, axis) if axis is not None else codes[0]).astype(np.int8), scales.reshape(scale.shape)


def _dequantized(q: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """What DequantizeLinear computes: code x scale in float32."""
    shape = [1] * q.ndim
    if axis is not None:
        shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape if axis is not None else ())


def _output_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    """The weight axis that indexes output channels."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else w.ndim - 1
    return w.ndim - 1  # MatMul: (in, out)


class _Calibration:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self.batches = iter([images[i : i + batch].astype(np.float32) for i in range(0, len(images), batch)])

    def get_next(self):
        x = next(self.batches, None)
        return None if x is None else {"pixels": x}


def quantize_static_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    pre = partial_path(dst.with_name(dst.name + ".pre.onnx"))  # named so that a killed run's copy is a leftover
    try:
        with atomic_path(dst) as tmp, _quiet_ort():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        pre.unlink(missing_ok=True)


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT's CPU ConvInteger takes uint8 weights only, so weights are uint8 here
    with atomic_path(dst) as tmp, _quiet_ort():
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QUInt8, per_channel=False)


def _save(model: onnx.ModelProto, dst: str | os.PathLike) -> None:
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)

# ----------------------------------------------------------------------------- recipe step

class QuantizeParams(StepParams):
    mode: Literal["int8-weights", "int8-static", "int8-dynamic", "fp16"] = "int8-weights"
    per_channel_dense: bool = Field(False, description="int8-weights: dense layers per output channel (TFLite: per tensor)")
    calibration_images: int = Field(256, ge=1, description="training images for int8-static ranges")


@STEPS.register("quantize")
class QuantizeStep(ExportStep):
    name, Params = "quantize", QuantizeParams
    example = {"mode": "int8-weights"}
    always_label = ("mode",)

    def short(self) -> str:
        return self.params.mode + self._extras("mode")

    def export_precision(self) -> Literal["fp32", "fp16"]:
        return "fp16" if self.params.mode == "fp16" else "fp32"

    def transform(self, src: Path, dst: Path, calibration: np.ndarray) -> None:
        """src: the exported file; dst: the quantised file (fp16 is done at export: a copy)."""
        mode = self.params.mode
        if mode == "int8-weights":
            quantize_weights_int8(src, dst, self.params.per_channel_dense)
        elif mode == "int8-static":
            quantize_static_int8(src, dst, calibration[: self.params.calibration_images])
        elif mode == "int8-dynamic":
            quantize_dynamic_int8(src, dst)
        else:
            import shutil

            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
