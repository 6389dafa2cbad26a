"""The CNN of Stoychev & Gunes (2022), Tables 1 and 2 (after Kekre's FER tutorial / Goodfellow et al.)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .layers import Dropout
from .registry import MODELS


class Rescale(nn.Module):
    """Maps raw 0..255 pixels to the model's input scale, so the exported model takes raw pixels."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


# BatchNorm as the authors' Keras (momentum 0.99 of the old statistics = PyTorch's 0.01 of the new
# batch; eps 1e-3), or PyTorch's defaults. After a 2-3 epoch fine-tune Keras's running statistics
# have moved about half-way to the compressed network's, PyTorch's nearly all the way.
# Keras's slow statistics go with the authors' unscaled 0..255 input (input_scale 1.0): with inputs
# scaled to 0..1 the running variances start far above the batches' (initialised at 1), the
# evaluation-mode network predicts one class for epochs, the selection loss rises, and the plateau
# rule cuts the learning rate before it has learnt (measured: 25 % selection accuracy through epoch 8).
BATCHNORM = {"keras": {"momentum": 0.01, "eps": 1e-3}, "pytorch": {"momentum": 0.1, "eps": 1e-5}}


def _conv_block(cin: int, cout: int, k: int, dropout: float, bn: dict) -> list[nn.Module]:
    # Keras `same` padding for odd kernels; pooling floors odd sizes like Keras (25 -> 12).
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout, **bn), nn.ReLU(inplace=True), nn.MaxPool2d(2), Dropout(dropout)]


def _dense_block(cin: int, cout: int, dropout: float, bn: dict) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout, **bn), nn.ReLU(inplace=True), Dropout(dropout)]


class PaperCNN(nn.Module):
    """Conv 64 3x3 -> 128 5x5 -> 512 3x3 -> 512 3x3 (BN, ReLU, MaxPool 2, Dropout each);
    Dense 256 -> 512 (BN, ReLU, Dropout each); Dense to classes (logits; softmax lives in the loss)."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, dropout: float = 0.25, input_scale: float = 1.0,
                 batchnorm: Literal["keras", "pytorch"] = "keras") -> None:
        super().__init__()
        if batchnorm not in BATCHNORM:
            raise ValueError(f"batchnorm must be one of {', '.join(BATCHNORM)}, not {batchnorm!r}")
        bn = BATCHNORM[batchnorm]
        side = input_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for four 2x poolings (need >= 16)")
        self.rescale = Rescale(input_scale)
        self.features = nn.Sequential(
            *_conv_block(in_channels, 64, 3, dropout, bn),
            *_conv_block(64, 128, 5, dropout, bn),
            *_conv_block(128, 512, 3, dropout, bn),
            *_conv_block(512, 512, 3, dropout, bn),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *_dense_block(512 * side * side, 256, dropout, bn),
            *_dense_block(256, 512, dropout, bn),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) raw pixels -> (B, classes)
        return self.classifier(self.features(self.rescale(x)))


@MODELS.register("paper_cnn")
def paper_cnn(*, in_channels: int, num_classes: int, input_size: int, dropout: float = 0.25, input_scale: float = 1.0,
              batchnorm: Literal["keras", "pytorch"] = "keras") -> nn.Module:
    return PaperCNN(in_channels, num_classes, input_size, dropout=dropout, input_scale=input_scale, batchnorm=batchnorm)
