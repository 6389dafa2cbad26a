"""Which planned runs must finish before another starts: a variant waits for its baseline, and for
the first run that makes the model it starts from (recipes sharing training steps share one
fine-tuned model; recipes with none share the baseline's export). Chains that build on a model of
another recipe (a ticket's earlier rounds) are made safe by a lock on that model, not by an edge."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..plan import PlannedRun, RunKind


def dependencies(runs: list[PlannedRun]) -> dict[str, list[str]]:
    """Run id -> ids of runs in ``runs`` it waits for (each earlier in the list, so plan order is a
    valid order to run them in)."""
    todo = {r.run_id for r in runs}
    first_maker: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for run in runs:
        waits: list[str] = []
        if run.kind is RunKind.VARIANT:
            if run.baseline_id in todo:
                waits.append(str(run.baseline_id))
            maker = first_maker.setdefault(run.prefix_id, run.run_id)
            if maker != run.run_id:
                waits.append(maker)
        deps[run.run_id] = waits
    return deps


@dataclass
class Schedule:
    """Runs handed out in plan order as their dependencies finish (successfully or not: a variant of
    a failed baseline runs, and fails saying so, as it does one by one)."""

    runs: list[PlannedRun]
    deps: dict[str, list[str]] = field(default_factory=dict)
    _finished: set[str] = field(default_factory=set)
    _handed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.deps = self.deps or dependencies(self.runs)

    def next_ready(self) -> PlannedRun | None:
        """The first run (in plan order) whose dependencies have finished, handed out."""
        run = self.peek()
        if run is not None:
            self.take(run)
        return run

    def peek(self) -> PlannedRun | None:
        for run in self.runs:
            if run.run_id not in self._handed and all(d in self._finished for d in self.deps[run.run_id]):
                return run
        return None

    def take(self, run: PlannedRun) -> None:
        self._handed.add(run.run_id)

    def give_back(self, run: PlannedRun) -> None:
        """A run handed out that never started (its worker was gone): ready again."""
        self._handed.discard(run.run_id)

    def finished(self, run_id: str) -> None:
        self._finished.add(run_id)

    @property
    def left(self) -> int:
        """Runs not handed out yet."""
        return len(self.runs) - len(self._handed)
