"""What a worker does with one planned run, wherever it runs (this process, a local worker process,
a Ray task): execute it, and hand back an `Outcome` for the driver, the store's single writer, to record."""
from __future__ import annotations

import os
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..atomic import EnvironmentFault
from ..config import StudyConfig
from ..data.dataset import FaceDataset
from ..data.identity import file_sha256
from ..plan import Hooks, PlannedRun, RunKind
from ..store import RunResult
from .quiet import current as quiet_lock


@dataclass
class Outcome:
    """A run's result, or why it failed. ``fault``: the machine, not the run, failed (e.g. a full
    disk): the study stops rather than fail every later run too."""

    run_id: str
    result: RunResult | None = None
    error: str | None = None
    trace: str | None = None
    fault: EnvironmentFault | None = None


def execute(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks) -> Outcome:
    """Run one planned run; exceptions become a failed outcome. The artefact's checksum is taken here,
    where the file was written."""
    try:
        with quiet_lock().running():
            result = _execute(cfg, run, data, out, hooks)
        result.artefact_sha256 = file_sha256(result.artefact)
        result.artefact = str(Path(result.artefact).relative_to(out))
        return Outcome(run.run_id, result=result)
    except EnvironmentFault as e:
        return Outcome(run.run_id, error=f"{type(e).__name__}: {e}", fault=e)
    except Exception as e:  # a failed run is recorded; the study carries on
        return Outcome(run.run_id, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=8))


def _execute(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks) -> RunResult:
    # the training stack is imported only when a study runs
    if run.kind is RunKind.BASELINE:
        from ..baseline import run_baseline

        return run_baseline(cfg, run, data, out, hooks)
    from ..variants import run_variant

    return run_variant(cfg, run, data, out, hooks)


Send = Callable[[tuple[str, str, Any]], None]


class RelayHooks(Hooks):
    """A worker's hooks: notes and epochs go to the driver as (run id, kind, payload) events; batches
    only let a waiting timing go first, and reach the driver at most twice a second."""

    def __init__(self, run_id: str, send: Send) -> None:
        self.run_id = run_id
        self.send = send
        self._last_batch = 0.0

    def note(self, text: str) -> None:
        self.send((self.run_id, "note", text))

    def epoch(self, log: Any) -> None:
        self.send((self.run_id, "epoch", log))

    def batch(self, epoch: int, done: int, total: int) -> None:
        quiet_lock().step_aside()
        now = time.monotonic()
        if now - self._last_batch >= 0.5 or done == total:
            self._last_batch = now
            self.send((self.run_id, "batch", (epoch, done, total)))


def worker_name() -> str:
    """This process as progress and the tests name it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads for a run, restored after it (0: leave PyTorch's default)."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
