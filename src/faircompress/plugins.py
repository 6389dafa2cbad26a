"""What is registered, described from the registries themselves (for `faircompress plugins` and the
README's pointer to it): a new plug-in shows up here the moment its file exists."""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class PluginRow:
    name: str
    parameters: str
    about: str


OWN_MODEL = PluginRow(
    "your own", "model: {file: path.py, function: build} or {name: 'package.module:function'}; params: its keywords",
    "Any f(*, in_channels, num_classes, input_size, **params) returning an nn.Module from raw 0..255 pixels (N, C, H, W) to "
    "logits (N, classes); checked when the config loads (README: Your own model).")


def describe_plugins() -> dict[str, list[PluginRow]]:
    from .compress.recipes import STEPS
    from .config import ExecutionConfig
    from .data.registry import DATASETS
    from .execute import EXECUTORS
    from .evaluate.metrics import GROUP_METRICS
    from .export import EXPORT_FORMATS
    from .mitigate import OBJECTIVES
    from .models.registry import FIXED_ARGUMENTS, MODELS

    datasets = [PluginRow(n, _fields(s.params), _first_line(sys.modules.get(s.load.__module__))) for n, s in DATASETS.items()]
    models = [PluginRow(n, _signature(f, FIXED_ARGUMENTS), _first_line(f) or _first_line(sys.modules.get(f.__module__)))
              for n, f in MODELS.items()] + [OWN_MODEL]
    steps = [PluginRow(n, _fields(cls.Params), f"{_kind(cls)} step"
                       + (f", level = {cls.level}" if cls.level else "") + f"; {_first_line(sys.modules.get(cls.__module__))}")
             for n, cls in STEPS.items()]
    metrics = [PluginRow(n, "", _first_line(f)) for n, f in GROUP_METRICS.items()]
    exports = [PluginRow(n, "", _first_line(f)) for n, f in EXPORT_FORMATS.items()]
    objectives = [PluginRow(n, _fields(cls.Params), _first_line(sys.modules.get(cls.__module__))) for n, cls in OBJECTIVES.items()]
    executors = [PluginRow(n, ", ".join(f"{k}={_short(ExecutionConfig.model_fields[k].get_default(call_default_factory=True))}"
                                     for k in cls.settings_used), _first_line(cls)) for n, cls in EXECUTORS.items()]
    return {"datasets": datasets, "models": models, "compression steps": steps, "group metrics": metrics, "export formats": exports,
            "fine-tuning objectives (a step's fine_tune option)": objectives, "executors (execution.executor)": executors}


def _kind(cls: type) -> str:
    from .compress.recipes import ExportStep, TrainStep

    return " + ".join(k for k, base in (("train", TrainStep), ("export", ExportStep)) if issubclass(cls, base))


def _fields(params: type[BaseModel]) -> str:
    return ", ".join(f"{k}" + ("" if f.is_required() else f"={_short(f.get_default(call_default_factory=True))}")
                     for k, f in params.model_fields.items())


def _signature(fn: Any, fixed: tuple[str, ...]) -> str:
    ps = [p for p in inspect.signature(fn).parameters.values() if p.name not in fixed]
    return ", ".join(p.name + ("" if p.default is inspect.Parameter.empty else f"={_short(p.default)}") for p in ps)


def _short(value: Any) -> str:
    text = repr(value.model_dump() if isinstance(value, BaseModel) else value)
    return text if len(text) <= 30 else text[:27] + "..."


def _first_line(obj: Any) -> str:
    """The first sentence of an object's docstring."""
    doc = inspect.getdoc(obj) if obj is not None else None
    if not doc:
        return ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".") + "."
