"""Models by name: `build_model(name, in_channels=..., num_classes=..., input_size=..., **params)`."""
from . import paper_cnn  # noqa: F401  (registers itself)
from .registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
