"""Compression recipes: ordered steps with parameters, each step a registered technique.

A recipe is written in a study config as a list of one-key mappings, e.g.
``[{prune: {sparsity: 0.5}}, {quantize: {mode: int8-weights}}]``. Steps are of two kinds:
`TrainStep`s change the PyTorch model (and fine-tune it) before export; `ExportStep`s decide how the
model is exported and transform the exported ONNX file. A new technique is one module in
`compress/` that defines a step class and registers it; recipes, validation and the study find it.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..registry import Registry


class StepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(ABC):
    """One compression technique: a name, a parameter model, and the parameter that is its level
    (what the report puts on the x-axis, e.g. pruning's sparsity; None when it has none). Subclass
    `TrainStep` or `ExportStep`, not this."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    level: ClassVar[str | None] = None
    example: ClassVar[dict[str, Any]] = {}  # valid parameters, for docs and registry-wide tests
    always_label: ClassVar[tuple[str, ...]] = ()  # parameters named in labels even at their defaults
    spelled: ClassVar[tuple[str, str, str] | None] = None  # (step, parameter, value): another spelling of this step
    excludes: ClassVar[dict[str, str]] = {}  # steps a recipe with this one cannot also hold, and why
    # parameters added after results existed: left out of the normalised config (so of recipe keys and
    # run ids) while at their defaults, so the recipes written before them keep their ids
    quiet_defaults: ClassVar[tuple[str, ...]] = ()
    # resets weights to the baseline's initial ones (`TuneContext.initial_model`): only a baseline the
    # study trains has them, so a config with given baseline weights refuses the step
    needs_initial: ClassVar[bool] = False

    def __init__(self, params: StepParams) -> None:
        self.params = params

    def config(self) -> dict[str, Any]:
        """The normalised parameters: every one spelled out, except `quiet_defaults` at their defaults."""
        dumped = self.params.model_dump(mode="json")
        fields = type(self.params).model_fields
        return {k: v for k, v in dumped.items()
                if not (k in self.quiet_defaults and getattr(self.params, k) == fields[k].get_default(call_default_factory=True))}

    def technique(self) -> str:
        """The family the report groups this step's variants into (one curve per family); the step's
        name unless a parameter makes a different technique (e.g. prune's method: random)."""
        return self.name

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

    def level_value(self) -> float | None:
        """The value of this step's level parameter, as a number."""
        if self.level is None:
            return None
        value = getattr(self.params, self.level)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class TrainStep(Step):
    """Changes the PyTorch model (and fine-tunes it) before export. A step may be both a `TrainStep`
    and an `ExportStep` (quantisation-aware training): it then trains with the other training steps
    and transforms the file with the export steps, and is ordered as an export step."""

    @abstractmethod
    def apply(self, model: Any, ctx: "TuneContext") -> None:
        """Compress ``model`` in place; ``ctx.fine_tune`` runs the training recipe."""

    def rebuild(self, model: Any, record: Any, input_shape: tuple[int, ...]) -> None:
        """Give a freshly built full-size ``model`` the architecture `apply` left, from what `apply` put
        in ``ctx.records[self.name]`` (None when it put nothing), so the fine-tuned checkpoint's state
        dict loads into it. Steps that keep the architecture (most) leave this as is: nothing to do."""

    def check_data(self, data: Any, rows: Any) -> None:
        """A `ValueError` (one line, naming the field) when the step cannot run on the dataset ``data``
        whose training images are ``rows`` (e.g. it needs group labels the dataset lacks); checked when a
        study starts, before anything is trained. Most steps run on any data: nothing to check."""


class ExportStep(Step):
    """Decides how the model is exported, or transforms the exported ONNX file."""

    def export_precision(self) -> Literal["fp32", "fp16"]:
        """The precision the PyTorch model is exported at, before `transform` runs."""
        return "fp32"

    @abstractmethod
    def transform(self, src: Path, dst: Path, calibration: np.ndarray) -> None:
        """Write the compressed form of the ONNX file ``src`` to ``dst``; ``calibration`` holds
        training images (uint8, N x C x H x W; a features table's rows: float32 N x F x 1 x 1) for steps that calibrate
        activation ranges."""


STEPS: Registry[type[Step]] = Registry("compression step", "faircompress.compress", "faircompress.steps")
REFERENCE_LABEL = "baseline (fp32)"  # the recipe with no steps: the baseline's own fp32 export


class RecipeError(ValueError):
    pass


@dataclass
class TuneContext:
    """What a `TrainStep` gets: ``fine_tune(model, epochs, after_step)`` runs the training
    recipe (best checkpoint kept; returns the `train.FitResult`) with ``after_step(step)`` called after
    every optimiser step (a study's also takes ``on_epoch=f``, ``f(log)`` called after every epoch with
    the model holding that epoch's weights, and ``objective=spec``, a normalised ``fine_tune`` option
    (`mitigate.parse_fine_tune`): the loss it names instead of cross-entropy, what it records appended
    to ``details['fine_tune']``); ``seed`` the run's tuning seed; ``images()`` a seeded
    sample of training images (as `ExportStep.transform`'s calibration; None where the caller has none)
    for steps that look at activations; ``note(text)`` a progress note; ``details[step name]``: what a
    step records of what it did (JSON-able), kept in the run's stored details.
    Where the caller has them (a study does; None otherwise): ``initial_model()`` the model as its
    baseline was built before training (same seed, same weights file; nothing fitted to data yet), and
    ``initial_model(seed)`` the architecture freshly initialised from scratch under another seed;
    ``accuracy(model, split)`` a model's accuracy on a split of the study's data ("val", "test");
    ``train_epochs`` the baseline's training epochs. ``input_shape``, one input's (C, H, W), for
    steps that trace the model. A step that changes the architecture puts what `TrainStep.rebuild`
    needs (JSON-serialisable) in ``records[its name]``; it is saved with the fine-tuned checkpoint.
    Where the caller has them (a study does): ``earlier(step)`` the model the recipe's training steps
    before this one and then ``step`` in its place make, and what its steps recorded (a study makes it
    once and shares it with the runs that have those steps: a later round of an iterative technique
    continues from the round before); ``rewind(epoch)`` the baseline after that many epochs of its
    own training (replayed from its initial weights and seed) and a record of the replay.
    ``training_data()`` the images fine-tuning trains on with their labels and groups, as a
    `FaceDataset` of those rows (the training splits, `train.training_splits`), for steps that score
    weights per group (fairgrape); ``device`` the training device (None: the CPU)."""

    fine_tune: Callable[..., Any]
    seed: int
    images: Callable[[], np.ndarray] | None = None
    note: Callable[[str], None] = lambda text: None
    details: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    records: dict[str, Any] = field(default_factory=dict)
    initial_model: Callable[..., Any] | None = None
    accuracy: Callable[[Any, str], float] | None = None
    train_epochs: int | None = None
    earlier: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None
    rewind: Callable[[int], tuple[Any, dict[str, Any]]] | None = None
    training_data: Callable[[], Any] | None = None
    device: Any = None


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]

    @property
    def label(self) -> str:
        return " + ".join(s.short() for s in self.steps) or REFERENCE_LABEL

    @property
    def is_reference(self) -> bool:
        return not self.steps

    @property
    def technique(self) -> str:
        """The steps' techniques (their names, e.g. 'prune + quantize'; 'prune-random' for random
        pruning); 'baseline' for the reference."""
        return " + ".join(s.technique() for s in self.steps) or "baseline"

    @property
    def level(self) -> float | None:
        """The level of the first step that declares one (e.g. 0.5 for prune 50 % + int8)."""
        return next((v for v in (s.level_value() for s in self.steps) if v is not None), None)

    @property
    def train_steps(self) -> tuple[TrainStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, TrainStep))

    @property
    def export_steps(self) -> tuple[ExportStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, ExportStep))

    @property
    def export_precision(self) -> str:
        """fp16 when an export step asks for it, else fp32."""
        return "fp16" if any(s.export_precision() == "fp16" for s in self.export_steps) else "fp32"

    def to_config(self) -> list[dict[str, dict[str, Any]]]:
        return [{s.name: s.config()} for s in self.steps]

    def key(self, steps: tuple[Step, ...] | None = None) -> str:
        blob = [{s.name: s.config()} for s in (self.steps if steps is None else steps)]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def parse_recipe(raw: Any, where: str = "recipe") -> Recipe:
    """Validate a recipe from its config form; errors name the recipe, the step and the field."""
    if not isinstance(raw, list):
        raise RecipeError(f"{where}: a recipe is a list of steps, e.g. [{{prune: {{sparsity: 0.5}}}}]")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        at = f"{where}, step {i + 1}"
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"{at}: each step is a one-key mapping like {{prune: {{sparsity: 0.5}}}}")
        (name, params), = item.items()
        name, params = _respelled(name, params)
        if name not in STEPS:
            raise RecipeError(f"{at}: unknown step {name!r} (known: {', '.join(STEPS.names())})")
        cls = STEPS.get(name)
        if not issubclass(cls, (TrainStep, ExportStep)):
            raise RecipeError(f"{at}: step {name!r} is neither a TrainStep nor an ExportStep")
        try:
            steps.append(cls(cls.Params.model_validate(params or {})))
        except ValidationError as e:
            detail = "; ".join((f"{'.'.join(str(x) for x in er['loc'])}: " if er["loc"] else "")  # a whole-step check has no field
                               + er["msg"].removeprefix("Value error, ") for er in e.errors())
            raise RecipeError(f"{at} ({name}): {detail}") from None
    _check_order(steps, where)
    return Recipe(tuple(steps))


def _respelled(name: str, params: Any) -> tuple[str, Any]:
    """A step written as another step with a parameter's value (e.g. {quantize: {mode: qat}} for
    {qat: {}}): its own name and the other parameters. The canonical form is what configs normalise to."""
    if not isinstance(params, dict):
        return name, params
    for own, cls in STEPS.items():
        if cls.spelled is not None and cls.spelled[0] == name and params.get(cls.spelled[1]) == cls.spelled[2]:
            return own, {k: v for k, v in params.items() if k != cls.spelled[1]}
    return name, params


def _check_order(steps: list[Step], where: str) -> None:
    names = [s.name for s in steps]
    for n in set(names):
        if names.count(n) > 1:
            raise RecipeError(f"{where}: step {n!r} appears {names.count(n)} times")
    for s in steps:
        for other, why in s.excludes.items():
            if other in names:
                raise RecipeError(f"{where}: {s.name!r} cannot be combined with {other!r}: {why}")
    stages = ["export" if isinstance(s, ExportStep) else "train" for s in steps]
    if "export" in stages and "train" in stages[stages.index("export"):]:
        first = names[stages.index("export")]
        later = names[len(stages) - 1 - stages[::-1].index("train")]
        raise RecipeError(f"{where}: {later!r} cannot come after {first!r}: training steps change the PyTorch model, "
                          "which no longer exists once it is exported and quantised")

