"""Models by name: `build_model(name, in_channels=..., num_classes=..., input_size=..., **params)`.
Every module of this folder is a possible plug-in: the registry imports them when first asked."""
from .registry import MODELS, FitsToData, build_model

__all__ = ["MODELS", "FitsToData", "build_model"]
