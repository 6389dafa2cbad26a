"""The driver: the one process that writes the study's store. Executors tell it when a run starts
(on which worker), relay what its worker reports, and hand it each run's outcome, recorded exactly once."""
from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ..atomic import EnvironmentFault
from ..config import StudyConfig
from ..data.dataset import FaceDataset
from ..plan import Hooks, PlannedRun
from ..store import ResultStore
from .worker import Outcome


@dataclass
class Batch:
    """What an executor runs: the study's config, the runs to make (in plan order), the dataset and the
    study directory (where workers read baselines and write artefacts)."""

    cfg: StudyConfig
    runs: list[PlannedRun]
    data: FaceDataset
    out: Path


@dataclass
class Driver:
    store: ResultStore
    hooks: Hooks
    cfg: StudyConfig
    total: int
    versions: dict[str, str]
    commit: str
    dataset_key: str
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    _started: int = 0
    _runs: dict[str, PlannedRun] = field(default_factory=dict)
    _ended: set[str] = field(default_factory=set)

    def started(self, run: PlannedRun, worker: str = "") -> None:
        """A run began (again, after its worker died: its partial rows are cleared and attempts counted).
        Word of a start that comes after the run's outcome (a worker's events may be late) is ignored."""
        if run.run_id in self._ended:
            return
        if run.run_id not in self._runs:
            self.hooks.run_started(run, self._started, self.total)
            self._started += 1
        self._runs[run.run_id] = run
        if worker:
            self.hooks.run_worker(run, worker)
        self.store.start_run(run.run_id, study=self.cfg.name, identity=run.columns(), config=self.cfg.model_dump(mode="json"),
                             versions=self.versions, git_commit=self.commit, dataset_key=self.dataset_key)

    def relay(self, run_id: str, kind: str, payload: Any) -> None:
        """An event a worker sent about a run: a note, a finished epoch, a batch's progress."""
        run = self._runs.get(run_id)
        if run is None:
            return
        if kind == "note":
            self.hooks.note(f"{run.label}: {payload}")
        elif kind == "epoch":
            self.hooks.run_epoch(run, payload)
        elif kind == "batch":
            self.hooks.run_batch(run, *payload)

    def finished(self, run: PlannedRun, outcome: Outcome) -> None:
        """Record the outcome; a fault of the machine (e.g. a full disk) stops the study."""
        if run.run_id not in self._runs:  # e.g. Ray gave up on it before it began: recorded all the same
            self.started(run)
        self._ended.add(run.run_id)
        if outcome.fault is not None:
            self._stop(run, outcome.fault)
        if outcome.result is None:
            msg = str(outcome.error)
            self.store.fail_run(run.run_id, msg + ("\n" + outcome.trace if outcome.trace else ""))
            self.failed[run.run_id] = msg
            self.hooks.run_failed(run, msg)
            return
        try:
            self.store.finish_run(run.run_id, outcome.result)
        except EnvironmentFault as e:
            self._stop(run, e)
        self.ran.append(run.run_id)
        self.hooks.run_finished(run, outcome.result)

    def _stop(self, run: PlannedRun, fault: EnvironmentFault) -> NoReturn:
        """A full disk fails every later run too: stop, the run recorded as failed if the store still can."""
        with suppress(EnvironmentFault):
            self.store.fail_run(run.run_id, f"{type(fault).__name__}: {fault}")
        raise fault
