"""This machine: one run at a time in this process (the default), or `workers` runs side by side,
each in a worker process of its own with `threads` PyTorch threads (by default the cores shared out).
A baseline trains on more threads than a variant's share (by default every core) and so runs alone:
its variants cannot start before it ends anyway."""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
from contextlib import contextmanager
from typing import Any, Iterator

from ...atomic import EnvironmentFault
from ...config import ExecutionConfig
from ...plan import PlannedRun, RunKind
from .. import EXECUTORS, quiet
from ..driver import Batch, Driver
from ..graph import Schedule
from ..worker import Outcome, RelayHooks, execute, set_threads


class WorkerError(EnvironmentFault):
    """The worker processes cannot run the study (one exits before taking a run)."""


@EXECUTORS.register("local")
class LocalExecutor:
    """This machine, one run at a time or in worker processes."""

    settings_used = ("workers", "threads", "baseline_threads")  # of `ExecutionConfig`

    def __init__(self, settings: ExecutionConfig) -> None:
        import torch

        self.workers = settings.workers
        cores = torch.get_num_threads()
        self.threads = settings.threads or (0 if self.workers == 1 else max(1, cores // self.workers))
        self.baseline_threads = settings.baseline_threads or (0 if self.workers == 1 else cores)

    def describe(self) -> str:
        def n(threads: int) -> str:
            return f"{threads} PyTorch thread{'s' * (threads > 1)}" if threads else "PyTorch's default threads"

        if self.workers == 1:
            return f"executor: local, one run at a time; baselines train on {n(self.baseline_threads)}, variants on {n(self.threads)}"
        return (f"executor: local, {self.workers} worker processes side by side, {n(self.threads)} each; baselines train on "
                f"{n(self.baseline_threads)}{' alone' if self.baseline_threads > self.threads else ''}; speed is timed while "
                "the others wait")

    def threads_for(self, run: PlannedRun) -> int:
        return self.baseline_threads if run.kind is RunKind.BASELINE else self.threads

    def run(self, batch: Batch, driver: Driver) -> None:
        if self.workers == 1:
            for run in batch.runs:  # plan order: every run after the runs it depends on
                driver.started(run)
                with _torch_threads(self.threads_for(run)):
                    outcome = execute(batch.cfg, run, batch.data, batch.out, driver.hooks)
                driver.finished(run, outcome)
            return
        with WorkerPool(self, batch) as pool:
            pool.run_all(driver)


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
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


class WorkerPool:
    """Worker processes (spawned: a fresh interpreter, given the dataset once) taking runs from one
    queue and putting events and outcomes on another. A worker that dies fails its run, and another takes its place."""

    def __init__(self, executor: LocalExecutor, batch: Batch) -> None:
        self.ctx = mp.get_context("spawn")
        self.executor, self.batch, self.size = executor, batch, executor.workers
        self.jobs: Any = self.ctx.Queue()
        self.events: Any = self.ctx.Queue()
        self.procs: list[Any] = []
        self.busy: dict[int, str] = {}  # worker pid -> run id
        self.queued: list[str] = []     # handed to the queue, not started yet
        self.alone: str | None = None   # a run that has the machine to itself
        self.served: set[int] = set()   # workers that took a run

    def __enter__(self) -> "WorkerPool":
        for _ in range(self.size):
            self._spawn()
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()  # stopping (an interrupt, a fault): the runs in flight are not recorded and rerun on resume
            p.join(timeout=10)

    def _spawn(self) -> None:
        b = self.batch
        p = self.ctx.Process(target=_worker_main, args=(b.cfg, b.data, b.out, self.jobs, self.events), daemon=True)
        p.start()
        self.procs.append(p)

    def run_all(self, driver: Driver) -> None:
        sched = Schedule(self.batch.runs)
        runs = {r.run_id: r for r in sched.runs}
        while sched.left or self.queued or self.busy:
            self._dispatch(sched)
            try:
                self._handle(self.events.get(timeout=0.5), driver, runs, sched)
                while True:  # every event that has arrived, before looking for dead workers
                    self._handle(self.events.get_nowait(), driver, runs, sched)
            except queue.Empty:
                self._replace_dead(driver, runs, sched)

    def _dispatch(self, sched: Schedule) -> None:
        """Hand out ready runs while a worker is free; a run on more threads than a worker's share waits
        until nothing else runs, and nothing starts beside it."""
        in_flight = len(self.queued) + len(self.busy)
        while in_flight < self.size and self.alone is None and (run := sched.peek()) is not None:
            threads = self.executor.threads_for(run)
            if threads > self.executor.threads:
                if in_flight:
                    return
                self.alone = run.run_id
            sched.take(run)
            self.jobs.put((run, threads))
            self.queued.append(run.run_id)
            in_flight += 1

    def _handle(self, event: tuple, driver: Driver, runs: dict, sched: Schedule) -> None:
        pid, run_id, kind, payload = event
        if kind == "started":
            self.served.add(pid)
            self.queued.remove(run_id)
            self.busy[pid] = run_id
            driver.started(runs[run_id], payload)
        elif kind == "outcome":
            self._ended(pid, run_id, sched)
            driver.finished(runs[run_id], payload)
        else:
            driver.relay(run_id, kind, payload)

    def _ended(self, pid: int, run_id: str, sched: Schedule) -> None:
        self.busy.pop(pid, None)
        sched.finished(run_id)
        if self.alone == run_id:
            self.alone = None

    def _replace_dead(self, driver: Driver, runs: dict, sched: Schedule) -> None:
        """Called when no event is waiting: a dead worker's last events have all been read. A worker
        that dies before taking any run cannot start at all: the study stops rather than spawn forever."""
        for p in [p for p in self.procs if not p.is_alive()]:
            self.procs.remove(p)
            run_id = self.busy.get(p.pid)
            if run_id is None and p.pid not in self.served:
                raise WorkerError(f"a worker process could not start (exit code {p.exitcode}); its error is above")
            if run_id is not None:
                self._ended(p.pid, run_id, sched)
                driver.finished(runs[run_id], Outcome(run_id, error=f"its worker process {p.pid} died (exit code {p.exitcode})"))
            self._spawn()


def _worker_main(cfg, data, out, jobs: Any, events: Any) -> None:
    """A worker process: take runs until the pool is closed."""
    quiet.install(quiet.QuietLock())
    pid = os.getpid()
    send = lambda event: events.put((pid, *event))  # noqa: E731
    while True:
        run, threads = jobs.get()
        set_threads(threads)
        send((run.run_id, "started", f"{os.uname().nodename}:{pid}"))
        outcome = execute(cfg, run, data, out, RelayHooks(run.run_id, send))
        send((run.run_id, "outcome", outcome))
