"""Models by name. A model is one module in `models/` that registers a factory
``f(*, in_channels, num_classes, input_size, **params) -> nn.Module`` taking raw 0..255 pixels.
A factory may carry ``f.check_params(params: dict) -> None``: config validation calls it when a
config loads (before any dataset or run), and a ValueError it raises stops the config, naming the field;
and ``f.file_params``, the names of parameters that are file paths, whose contents are hashed into the
study's identity (a changed weights file is refused like a changed dataset); and
``f.input_kind(params: dict) -> "image" | "features"``, for a model that can take a features table's
rows (float32 (N, F, 1, 1), e.g. ``pca_mlp`` with ``input: features``) instead of pixels; a study
refuses a model whose kind is not its dataset's (a factory without it takes images).
A model whose state is fitted to the training images before training (say, a PCA) implements
`FitsToData`; the baseline calls it once, and the fitted state lives in buffers, so the state dict
(every checkpoint, and every variant that loads one) carries it."""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
from torch import nn

from ..registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model", "faircompress.models", "faircompress.models")
FIXED_ARGUMENTS = ("in_channels", "num_classes", "input_size")  # set from the dataset, not the config


@runtime_checkable
class FitsToData(Protocol):
    """A model with state fitted to its training images, kept in buffers (not trained, not compressed)."""

    def fit_to_training(self, images: np.ndarray) -> None:
        """Fit on the uint8 (N, C, H, W) images (a features table's float32 (N, F, 1, 1) rows) the model will be
        trained on (never test images)."""


def input_kind(factory: ModelFactory, params: dict[str, Any]) -> str:
    """'features' where the model with ``params`` takes a features table's rows, else 'image'."""
    kind = getattr(factory, "input_kind", None)
    return kind(params) if kind is not None else "image"


def build_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **params: Any) -> nn.Module:
    """Build a registered model for inputs of ``in_channels`` x ``input_size`` x ``input_size``."""
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, input_size=input_size, **params)
