"""This machine: one run at a time in this process (the default), or `workers` runs side by side,
each in a worker process of its own with `threads` PyTorch threads (by default the cores shared out).
A baseline trains on more threads than a variant's share (by default every core) and so runs alone:
its variants cannot start before it ends anyway."""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import suppress
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

from ...atomic import EnvironmentFault
from ...config import ExecutionConfig
from ...plan import PlannedRun, RunKind
from .. import EXECUTORS
from ..driver import Batch, Driver
from ..graph import Schedule
from ..pool_worker import KEY_VARIABLE
from ..worker import Outcome, execute, torch_threads


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
                with torch_threads(self.threads_for(run)):
                    outcome = execute(batch.cfg, run, batch.data, batch.out, driver.hooks)
                driver.finished(run, outcome)
            return
        with WorkerPool(self, batch) as pool:
            pool.run_all(driver)


class WorkerPool:
    """Worker processes, each a fresh interpreter (`execute.pool_worker`) connected to this one over a
    private socket: it is sent the dataset once, then one run at a time, and sends back events and
    outcomes. A worker that dies fails its run, and another takes its place."""

    def __init__(self, executor: LocalExecutor, batch: Batch) -> None:
        self.executor, self.batch, self.size = executor, batch, executor.workers
        self.folder = tempfile.mkdtemp(prefix="faircompress-pool-")
        self.key = os.urandom(16)
        self.listener = Listener(os.path.join(self.folder, "socket"), family="AF_UNIX", authkey=self.key)
        self.workers: dict[Connection, subprocess.Popen] = {}
        self.busy: dict[Connection, str] = {}  # worker -> the run it executes
        self.alone: str | None = None          # a run that has the machine to itself

    def __enter__(self) -> "WorkerPool":
        for _ in range(self.size):
            self._spawn()
        return self

    def __exit__(self, *exc: Any) -> None:
        for conn, proc in self.workers.items():
            with suppress(OSError):
                conn.send(None)
            if exc[0] is not None:
                proc.kill()  # stopping (an interrupt, a fault): the runs in flight are not recorded and rerun on resume
        for proc in self.workers.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self.listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _spawn(self) -> None:
        env = {**os.environ, KEY_VARIABLE: self.key.hex()}
        proc = subprocess.Popen([sys.executable, "-m", "faircompress.execute.pool_worker", str(self.listener.address)], env=env)
        accepted: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: accepted.put(self.listener.accept()), daemon=True).start()
        while True:
            with suppress(queue.Empty):
                conn = accepted.get(timeout=0.2)
                break
            if proc.poll() is not None:
                raise WorkerError(f"a worker process could not start (exit code {proc.returncode}); its error is above")
        b = self.batch
        conn.send((b.cfg, b.data, b.out))
        self.workers[conn] = proc

    def run_all(self, driver: Driver) -> None:
        sched = Schedule(self.batch.runs)
        runs = {r.run_id: r for r in sched.runs}
        while sched.left or self.busy:
            self._dispatch(sched)
            for conn in wait(list(self.busy), timeout=1.0):
                try:
                    event = conn.recv()
                except (EOFError, OSError):
                    self._died(conn, driver, runs, sched)
                    continue
                self._handle(event, driver, runs, sched, conn)

    def _dispatch(self, sched: Schedule) -> None:
        """Hand out ready runs to idle workers; a run on more threads than a worker's share waits
        until nothing else runs, and nothing starts beside it."""
        for conn in [c for c in self.workers if c not in self.busy]:
            run = sched.peek() if self.alone is None else None
            if run is None:
                return
            threads = self.executor.threads_for(run)
            if threads > self.executor.threads:
                if self.busy:
                    return
                self.alone = run.run_id
            sched.take(run)
            try:
                conn.send((run, threads))
            except OSError:  # the worker died while idle: another takes its place, and the run waits for it
                sched.give_back(run)
                self.alone = None if self.alone == run.run_id else self.alone
                self.workers.pop(conn).wait()
                self._spawn()
                return
            self.busy[conn] = run.run_id

    def _handle(self, event: tuple, driver: Driver, runs: dict, sched: Schedule, conn: Connection) -> None:
        run_id, kind, payload = event
        if kind == "started":
            driver.started(runs[run_id], payload)
        elif kind == "outcome":
            self._ended(conn, run_id, sched)
            driver.finished(runs[run_id], payload)
        else:
            driver.relay(run_id, kind, payload)

    def _ended(self, conn: Connection, run_id: str, sched: Schedule) -> None:
        self.busy.pop(conn, None)
        sched.finished(run_id)
        if self.alone == run_id:
            self.alone = None

    def _died(self, conn: Connection, driver: Driver, runs: dict, sched: Schedule) -> None:
        proc = self.workers.pop(conn)
        code = proc.wait()
        run_id = self.busy[conn]
        self._ended(conn, run_id, sched)
        driver.finished(runs[run_id], Outcome(run_id, error=f"its worker process {proc.pid} died (exit code {code})"))
        self._spawn()
