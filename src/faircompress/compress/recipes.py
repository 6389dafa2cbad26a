"""Compression recipes: ordered steps with parameters, each step a registered technique.

A recipe is written in a study config as a list of one-key mappings, e.g.
``[{prune: {sparsity: 0.5}}, {quantize: {mode: int8-weights}}]``. Steps act at one of two stages:
``train`` steps change the PyTorch model (and fine-tune it) before export; ``export`` steps decide
how the model is exported or transform the exported ONNX file. A new technique is one module that
defines a `Step` and registers it; recipes, validation and the study pick it up by name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..registry import Registry


class StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step:
    """One compression technique. Subclasses set ``name``, ``stage``, ``Params`` and ``example``;
    train-stage steps implement ``apply(model, ctx)``, export-stage steps ``transform(src, dst, calibration)``."""

    name: ClassVar[str]
    stage: ClassVar[Literal["train", "export"]]
    Params: ClassVar[type[StepParams]]
    example: ClassVar[dict[str, Any]] = {}  # valid parameters, for docs and registry-wide tests
    always_label: ClassVar[tuple[str, ...]] = ()  # parameters named in labels even at their defaults

    def __init__(self, params: StepParams) -> None:
        self.params = params

    def short(self) -> str:
        """A table-friendly name, e.g. 'prune 50%'; subclasses override. Defaults to `label`."""
        return self.label()

    def _extras(self, *main: str) -> str:
        """Non-default parameters other than ``main``, as ' [k=v, ...]'."""
        rest = {k: v for k, v in self.params.model_dump(exclude_defaults=True).items() if k not in main}
        return f" [{', '.join(f'{k}={v}' for k, v in rest.items())}]" if rest else ""

    def label(self) -> str:
        """Full form: the parameters that differ from their defaults (required ones included)."""
        shown = self.params.model_dump(exclude_defaults=True) | {k: getattr(self.params, k) for k in self.always_label}
        inner = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.name}({inner})"


STEPS: Registry[type[Step]] = Registry("compression step")


class RecipeError(ValueError):
    pass


@dataclass
class TuneContext:
    """What a train-stage step gets: ``fine_tune(model, epochs, after_step)`` runs the training
    recipe (best checkpoint kept) with ``after_step(step)`` called after every optimiser step."""

    fine_tune: Callable[[Any, int, Callable[[int], None] | None], Any]
    seed: int


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        return " + ".join(s.short() for s in self.steps) or "baseline (fp32)"

    @property
    def train_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.stage == "train")

    @property
    def export_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.stage == "export")

    def to_config(self) -> list[dict[str, dict[str, Any]]]:
        return [{s.name: s.params.model_dump(mode="json")} for s in self.steps]

    def key(self, steps: tuple[Step, ...] | None = None) -> str:
        blob = [{s.name: s.params.model_dump(mode="json")} for s in (self.steps if steps is None else steps)]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def parse_recipe(raw: Any, where: str = "recipe") -> Recipe:
    """Validate a recipe from its config form; errors name the recipe, the step and the field."""
    _import_builtin_steps()
    if not isinstance(raw, list):
        raise RecipeError(f"{where}: a recipe is a list of steps, e.g. [{{prune: {{sparsity: 0.5}}}}]")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        at = f"{where}, step {i + 1}"
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"{at}: each step is a one-key mapping like {{prune: {{sparsity: 0.5}}}}")
        (name, params), = item.items()
        if name not in STEPS:
            raise RecipeError(f"{at}: unknown step {name!r} (known: {', '.join(STEPS.names())})")
        cls = STEPS.get(name)
        try:
            steps.append(cls(cls.Params.model_validate(params or {})))
        except ValidationError as e:
            detail = "; ".join(f"{'.'.join(str(x) for x in er['loc'])}: {er['msg'].removeprefix('Value error, ')}" for er in e.errors())
            raise RecipeError(f"{at} ({name}): {detail}") from None
    _check_order(steps, where)
    return Recipe(tuple(steps))


def _check_order(steps: list[Step], where: str) -> None:
    names = [s.name for s in steps]
    for n in set(names):
        if names.count(n) > 1:
            raise RecipeError(f"{where}: step {n!r} appears {names.count(n)} times")
    stages = [s.stage for s in steps]
    if "export" in stages and "train" in stages[stages.index("export"):]:
        first = names[stages.index("export")]
        later = names[len(stages) - 1 - stages[::-1].index("train")]
        raise RecipeError(f"{where}: {later!r} cannot come after {first!r}: training steps change the PyTorch model, "
                          "which no longer exists once it is exported and quantised")


def _import_builtin_steps() -> None:
    from . import clustering, pruning, quantization  # noqa: F401  (each registers its step)
