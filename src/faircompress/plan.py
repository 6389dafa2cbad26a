"""What a study will run: typed planned runs (their identity is stored as columns, so nothing ever
parses a label), and the progress hooks the study and its executors call."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .compress.recipes import Recipe, TrainStep, parse_recipe

if TYPE_CHECKING:
    from .config import EvaluationConfig, StudyConfig
    from .store import RunResult

PROTOCOL_VERSION = 2  # bump when a change makes old results incomparable, and say why below
PROTOCOL_CHANGES = {
    2: "the paper CNN's BatchNorm follows Keras (momentum 0.99, eps 1e-3) and takes the authors' unscaled 0-255 input, "
       "the learning rate drops when Keras drops it "
       "(one epoch earlier), int8-weights quantises dense layers per tensor as TFLite does, and pruning keeps the "
       "selected checkpoint's own mask",
}


def stale_protocol(found: int | None) -> str | None:
    """Why results made under protocol ``found`` are not comparable with this version's; None if they are."""
    if found is None or found == PROTOCOL_VERSION:
        return None
    changes = "; ".join(f"protocol {v}: {PROTOCOL_CHANGES.get(v, 'see the changelog')}" for v in range(found + 1, PROTOCOL_VERSION + 1))
    return (f"made under protocol {found}, but this version runs protocol {PROTOCOL_VERSION} ({changes}): "
            "their numbers are not comparable with new runs")


def identity_hash(obj: Any, n: int = 20) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


class RunKind(str, Enum):
    BASELINE = "baseline"  # trains a model
    VARIANT = "variant"    # applies a recipe to a trained baseline and measures the exported file


@dataclass(frozen=True, eq=False)
class PlannedRun:
    kind: RunKind
    seed: int                     # the baseline's seed
    identity: dict[str, Any]      # everything that determines the run; hashed into run_id
    recipe: Recipe | None = None  # variants only
    repeat: int = 0
    baseline_id: str | None = None
    repeats: int = 1              # repeats of this recipe (for the label)
    run_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_id", identity_hash(self.identity))

    @property
    def tune_seed(self) -> int:
        return 1000 * (self.repeat + 1) + self.seed

    @property
    def label(self) -> str:
        """For progress lines only."""
        if self.recipe is None:
            return f"baseline seed={self.seed}"
        return f"{self.recipe.label} | seed={self.seed}" + (f" rep={self.repeat}" if self.repeats > 1 else "")

    @property
    def prefix_id(self) -> str:
        """Identity of the fine-tuned PyTorch model this variant exports: recipes that share their
        training steps (e.g. prune 50 % and prune 50 % + int8) share it, so it is trained once."""
        assert self.recipe is not None, "baselines have no prefix"
        return self.prefix_of(self.recipe.train_steps)

    def prefix_of(self, steps: tuple[TrainStep, ...]) -> str:
        """Identity of the model ``steps`` make of this run's baseline under this run's repeat (its
        baseline's id when there are none): a later round of an iterative technique finds the model
        of the round before under it."""
        if not steps:
            return self.baseline_id or ""
        return identity_hash({"baseline": self.baseline_id, "steps": Recipe(tuple(steps)).key(), "repeat": self.repeat})

    def columns(self) -> dict[str, Any]:
        """The typed identity the store keeps as columns (see `store.IDENTITY_COLUMNS`)."""
        cols: dict[str, Any] = {"kind": self.kind.value, "label": self.label, "seed": self.seed, "repeat": self.repeat,
                                "baseline_id": self.baseline_id}
        if self.recipe is not None:
            r = self.recipe
            cols |= {"recipe_json": r.to_config(), "variant": r.label, "recipe_key": r.key(), "technique": r.technique,
                     "level": r.level, "is_reference": int(r.is_reference)}
        return cols


_NOT_RESULTS = {"dataset": {"cache", "max_unreadable"}, "model": {"file"}, "train": {"device", "eval_batch_size"}}
_GIVEN_BASELINE = ("weights_sha256", "onnx_sha256")  # a given baseline's files by content, not where they lie


def result_fields(config: "StudyConfig | dict[str, Any]") -> dict[str, Any]:
    """The config fields that change what a baseline (and so every run) computes; the rest (the
    device, batch sizes of evaluation, caching, measurement settings, where your files lie) do not.
    Your own model's file and a given baseline's files count by their SHA-256; with a given ONNX
    file neither model nor training is used. ``config``: a config, or one as a run stored it (its JSON)."""
    raw = config if isinstance(config, dict) else config.model_dump(mode="json")
    given = {k: v for k, v in raw.get("baseline", {}).items() if k in _GIVEN_BASELINE}
    parts = ("dataset",) if "onnx_sha256" in given else ("dataset", "model", "train")
    fields = {part: {k: v for k, v in raw.get(part, {}).items() if k not in _NOT_RESULTS.get(part, ())} for part in parts}
    return fields | ({"baseline": given} if given else {})


def _given_baseline(given: dict[str, Any], seed: int) -> dict[str, Any]:
    """A given baseline's file in its run's identity: the seed's own weights only, so that adding a
    seed leaves the other runs' ids as they are."""
    if "weights_sha256" in given:
        return {"baseline": {"weights_sha256": given["weights_sha256"][str(seed)]}}
    return {"baseline": given} if given else {}


def measurement_identity(ev: "EvaluationConfig") -> dict[str, Any]:
    """The measurement settings in a variant's identity, so that turning a measure on measures the
    variant again. Threads change no measure's presence. Memory on is left out: variants measured
    before memory was measured keep their ids (they show no memory figures), rather than all
    being run again."""
    return ev.model_dump(mode="json", exclude={"threads"} | ({"memory"} if ev.memory else set()))


def plan(cfg: "StudyConfig") -> list[PlannedRun]:
    """Every run the study needs, in execution order: baselines, then each baseline's variants
    (its fp32 export first, then every recipe x repeat; recipes without fine-tuning run once)."""
    fields = result_fields(cfg)
    given = fields.pop("baseline", {})
    base = {"protocol": PROTOCOL_VERSION, **fields}
    evaluation = measurement_identity(cfg.evaluation)
    baselines = [PlannedRun(RunKind.BASELINE, s, {**base, "kind": "baseline", "seed": s, **_given_baseline(given, s)})
                 for s in cfg.seeds]
    variants = []
    for b in baselines:
        for raw in [[], *cfg.recipes]:
            recipe = parse_recipe(raw)
            repeats = cfg.repeats if recipe.train_steps else 1
            for r in range(repeats):
                ident = {"kind": "variant", "baseline": b.run_id, "recipe": recipe.to_config(), "repeat": r, "evaluation": evaluation}
                variants.append(PlannedRun(RunKind.VARIANT, b.seed, ident, recipe, r, b.run_id, repeats))
    return baselines + variants


class Hooks:
    """Progress callbacks; the CLI fills these with rich output, tests leave them quiet."""

    def run_started(self, run: PlannedRun, index: int, total: int) -> None: ...
    def run_skipped(self, run: PlannedRun) -> None: ...
    def run_finished(self, run: PlannedRun, result: "RunResult") -> None: ...
    def run_failed(self, run: PlannedRun, error: str) -> None: ...
    def note(self, text: str) -> None: ...
    def batch(self, epoch: int, done: int, total: int) -> None: ...
    def epoch(self, log: Any) -> None: ...

    # what a worker process reports of the run it executes (runs side by side: each line names its run)
    def run_worker(self, run: PlannedRun, worker: str) -> None: ...

    def run_epoch(self, run: PlannedRun, log: Any) -> None:
        self.epoch(log)

    def run_batch(self, run: PlannedRun, epoch: int, done: int, total: int) -> None: ...
