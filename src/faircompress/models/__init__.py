"""Models by name: `build_model(name, in_channels=..., num_classes=..., input_size=..., **params)`."""
from .registry import MODELS, build_model
from . import paper_cnn  # noqa: F401  (registers itself)

__all__ = ["MODELS", "build_model"]
