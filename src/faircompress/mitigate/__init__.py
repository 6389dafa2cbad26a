"""Mitigation: fine-tuning objectives that replace plain cross-entropy in the fine-tuning a
compression step runs, written in a recipe as the step's ``fine_tune`` option, e.g.
``[{prune: {sparsity: 0.9, fine_tune: {objective: distill, alpha: 0.5, temperature: 4}}}]``.

An objective is one module in this folder that subclasses `Objective` and registers itself in
`OBJECTIVES`; validation, labels, the study and the report find it by name. It gets the batch's
logits, labels, images and their rows in the training split (so it can look up each image's groups),
and `ObjectiveInputs` at construction: the dataset, the training rows, the uncompressed baseline
(a teacher) and the training device. `fit` calls `start` before the first epoch, `loss` for every
batch (the value the optimiser minimises), `end_epoch` after every epoch and `end` once after the last
(also when training fails: it removes what `start` attached to the model); `record()` is kept in the
run's details (``steps.fine_tune``, one entry per fine-tuning, with its objective and parameters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Optional

import numpy as np
import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from ..registry import Registry

if TYPE_CHECKING:
    from ..data.dataset import FaceDataset


class ObjectiveParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ObjectiveInputs:
    """What an objective may use: ``data`` the study's dataset; ``train_rows`` the dataset rows of the
    images fine-tuning trains on, in the order `loss`'s ``rows`` index; ``teacher()`` the uncompressed
    baseline (a fresh copy, in eval mode, on ``device``); ``device`` and ``precision`` of training."""

    data: "FaceDataset"
    train_rows: np.ndarray
    teacher: Callable[[], torch.nn.Module]
    device: torch.device
    precision: str = "fp32"


class Objective:
    """A fine-tuning objective (subclass, set ``name`` and ``Params``, register in `OBJECTIVES`)."""

    name: ClassVar[str]
    Params: ClassVar[type[ObjectiveParams]]
    example: ClassVar[dict[str, Any]] = {}  # valid parameters, for registry-wide tests

    def __init__(self, params: ObjectiveParams, inputs: ObjectiveInputs) -> None:
        self.params, self.inputs = params, inputs

    def start(self, model: torch.nn.Module) -> None:
        """Before the first epoch, with ``model`` on the training device (compressed, not yet tuned)."""

    def loss(self, model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
             rows: torch.Tensor) -> torch.Tensor:
        """The batch's loss (a float32 scalar the optimiser minimises). ``logits`` of ``x`` (the
        augmented batch the model saw), ``y`` its labels, ``rows`` its positions in ``train_rows``."""
        raise NotImplementedError

    def end_epoch(self, model: torch.nn.Module, epoch: int) -> None:
        """After every epoch (the model holds that epoch's weights)."""

    def end(self, model: torch.nn.Module) -> None:
        """Once after the last epoch, also when training fails: detach from ``model`` whatever `start`
        attached (hooks), so the fine-tuned model leaves `fit` as plain as it came."""

    def record(self) -> dict[str, Any]:
        """What the run's details keep of the fine-tuning (JSON-able)."""
        return {}

    @classmethod
    def check_data(cls, params: ObjectiveParams, data: "FaceDataset", train_rows: np.ndarray) -> None:
        """A `ValueError` when the objective cannot run on ``data`` (e.g. it needs group labels the
        training images lack); a study checks it before anything is trained. Most objectives run on any data."""

    @classmethod
    def short(cls, params: ObjectiveParams) -> str:
        """For labels: the name and the parameters that differ from their defaults."""
        shown = params.model_dump(exclude_defaults=True)
        return cls.name + "".join(f" {k}={v}" for k, v in shown.items())


OBJECTIVES: Registry[type[Objective]] = Registry("fine-tuning objective", "faircompress.mitigate", "faircompress.objectives")


def parse_fine_tune(raw: Any) -> dict[str, Any] | None:
    """Validate a step's ``fine_tune`` option; returns it normalised ({objective: name, every
    parameter spelled out}), None for none. Errors name the field within the option (the recipe's
    error names the option)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or "objective" not in raw:
        raise ValueError("a mapping naming its objective, e.g. {objective: distill, alpha: 0.5}")
    name = raw["objective"]
    if name not in OBJECTIVES:
        raise ValueError(f"objective: unknown objective {name!r} (known: {', '.join(OBJECTIVES.names()) or 'none'})")
    cls = OBJECTIVES.get(name)
    try:
        params = cls.Params.model_validate({k: v for k, v in raw.items() if k != "objective"})
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(str(x) for x in er['loc'])}: {er['msg'].removeprefix('Value error, ')}"
                                   for er in e.errors())) from None
    return {"objective": name, **params.model_dump(mode="json")}


def build_objective(spec: dict[str, Any], inputs: ObjectiveInputs) -> Objective:
    """The objective a normalised ``fine_tune`` option names, made for ``inputs``."""
    cls = OBJECTIVES.get(spec["objective"])
    return cls(cls.Params.model_validate({k: v for k, v in spec.items() if k != "objective"}), inputs)


def check_data(spec: dict[str, Any] | None, data: "FaceDataset", train_rows: np.ndarray) -> None:
    """The named objective's `Objective.check_data` (nothing without one); its error names the option."""
    if spec is None:
        return
    cls = OBJECTIVES.get(spec["objective"])
    try:
        cls.check_data(cls.Params.model_validate({k: v for k, v in spec.items() if k != "objective"}), data, train_rows)
    except ValueError as e:
        raise ValueError(f"fine_tune: {e}") from None


def describe(spec: dict[str, Any] | None) -> str:
    """' [distill alpha=0.5]' for labels; '' without an objective."""
    if spec is None:
        return ""
    cls = OBJECTIVES.get(spec["objective"])
    return f" [{cls.short(cls.Params.model_validate({k: v for k, v in spec.items() if k != 'objective'}))}]"


FineTuneOption = Annotated[Optional[dict[str, Any]], AfterValidator(parse_fine_tune)]
FINE_TUNE_DESCRIPTION = ("a fine-tuning objective instead of cross-entropy (mitigation), e.g. {objective: distill, alpha: 0.5, "
                         "temperature: 4}; objectives: `faircompress plugins`")


def family(base: str, spec: dict[str, Any] | None) -> str:
    """A mitigated step's report family: its own with the objective's name ('prune-distill')."""
    return base if spec is None else f"{base}-{spec['objective']}"


def check_tunes(spec: dict[str, Any] | None, epochs: int) -> None:
    """A fine-tuning objective needs a fine-tuning: refused with 0 epochs."""
    if spec is not None and epochs == 0:
        raise ValueError(f"fine_tune: objective {spec['objective']!r} shapes the fine-tuning, but epochs is 0")
