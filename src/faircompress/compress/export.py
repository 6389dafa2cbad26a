"""Export a PyTorch model to one self-contained ONNX file that takes raw 0..255 pixels."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path

OPSET = 17
INPUT, OUTPUT = "pixels", "logits"


class _Half(nn.Module):
    """fp16 weights and compute inside, float32 at the file's input and output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, int, int], fp16: bool = False) -> Path:
    """Write ``model`` (eval mode, on the CPU) as a single .onnx file with a dynamic batch axis.

    Constant folding is off so BatchNorm is not folded into the preceding kernels: folding rescales
    each output channel and would undo the zeros' pattern and the shared values of clustering in the
    stored file. ONNX Runtime fuses BatchNorm when it loads the model, so inference speed is unchanged.
    """
    path = Path(path)
    model = model.cpu().eval()
    module = _Half(model) if fp16 else model
    dummy = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module, (dummy,), str(tmp), dynamo=False, external_data=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=False,
        )
    if fp16:
        model.float()
    return path
