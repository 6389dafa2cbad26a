"""Ray: every run a task with the resources `execution.resources` asks for, on a cluster at
`execution.address` or on a Ray started on this machine. A variant's task takes its baseline's (and
its shared fine-tune's) task as arguments, so Ray starts it when they are done. Workers read and write
the study directory, which must be at the same path on every node (a shared filesystem); the driver
records every outcome. A task whose worker dies is started again up to `execution.retries` times.
Ray is an optional extra (pip install 'faircompress[ray]'), imported only here."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ...config import ConfigError, ExecutionConfig
from ...plan import RunKind
from .. import EXECUTORS, quiet
from ..driver import Batch, Driver
from ..graph import dependencies
from ..worker import Outcome, RelayHooks, execute, torch_threads, worker_name


class RayError(ConfigError):
    """Ray cannot be used as asked: not installed, or no cluster at the address."""


@EXECUTORS.register("ray")
class RayExecutor:
    """Tasks on a Ray cluster (or a Ray started on this machine)."""

    settings_used = ("address", "resources", "retries", "threads", "baseline_threads")  # of `ExecutionConfig`

    def __init__(self, settings: ExecutionConfig) -> None:
        self.settings = settings
        self.threads = settings.threads or max(1, int(settings.resources.cpus))
        self.baseline_threads = settings.baseline_threads or self.threads

    def describe(self) -> str:
        where = f"the Ray cluster at {self.settings.address}" if self.settings.address else "a Ray started on this machine"
        r = self.settings.resources
        return (f"executor: ray, on {where}; each run asks for {r.cpus:g} CPU" + (f" and {r.gpus:g} GPU" if r.gpus else "")
                + f", {self.threads} PyTorch thread(s); a baseline {self.baseline_threads} thread(s) and as many CPUs; speed is "
                "timed while the node's other runs wait")

    def run(self, batch: Batch, driver: Driver) -> None:
        ray = _connect(self.settings.address)
        try:
            self._run(ray, batch, driver)
        finally:
            ray.shutdown()

    def _run(self, ray: Any, batch: Batch, driver: Driver) -> None:
        s = self.settings
        remote, asks = ray.remote(_task), {"num_gpus": s.resources.gpus, "max_retries": s.retries, "retry_exceptions": False}
        task = remote.options(num_cpus=s.resources.cpus, **asks)
        baseline_task = remote.options(num_cpus=max(s.resources.cpus, self.baseline_threads), **asks)  # as many cores as threads
        _check_fits(ray, {"CPU": max(s.resources.cpus, self.baseline_threads), "GPU": s.resources.gpus})
        events, data = ray.remote(num_cpus=0)(Events).remote(), ray.put(batch.data)
        runs = {r.run_id: r for r in batch.runs}
        refs: dict[str, Any] = {}
        deps = dependencies(batch.runs)
        for run in batch.runs:  # plan order: the runs it waits for have their refs already
            base = run.kind is RunKind.BASELINE
            refs[run.run_id] = (baseline_task if base else task).remote(
                batch.cfg, run, data, str(batch.out), self.baseline_threads if base else self.threads, events,
                *[refs[w] for w in deps[run.run_id]])
        pending = {ref: run_id for run_id, ref in refs.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for event in ray.get(events.take.remote()):
                _relay(event, driver, runs)
            for ref in done:
                run_id = pending.pop(ref)
                driver.finished(runs[run_id], _outcome(ray, ref, run_id))


def _check_fits(ray: Any, asks: dict[str, float]) -> None:
    """Refuse a run that no node of the cluster could take (Ray would wait for such a node forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for what, n in asks.items():
        most = max((r.get(what, 0) for r in nodes), default=0)
        if n > most:
            raise RayError(f"execution: a run asks for {n:g} {what} but no node of the Ray cluster has more than {most:g} "
                           "(resources.cpus, resources.gpus, baseline_threads)")


def _relay(event: tuple, driver: Driver, runs: dict) -> None:
    run_id, kind, payload = event
    if kind == "started":
        driver.started(runs[run_id], payload)
    else:
        driver.relay(run_id, kind, payload)


class Events:
    """What tasks report, kept until the driver takes it. Tasks send without waiting for an answer: a
    task blocked in `ray.get` lends its CPU to another task, which would then run beside it."""

    def __init__(self) -> None:
        self.items: list[tuple] = []

    def put(self, item: tuple) -> None:
        self.items.append(item)

    def take(self) -> list[tuple]:
        items, self.items = self.items, []
        return items


def _outcome(ray: Any, ref: Any, run_id: str) -> Outcome:
    """The task's outcome; a task that Ray gave up on (its worker died more often than retries allow) failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        return Outcome(run_id, error=f"Ray could not complete the run: {type(e).__name__}: {str(e).splitlines()[0]}")


def _task(cfg, run, data, out: str, threads: int, events, *done_before: Outcome) -> Outcome:
    """One run in a Ray worker process (the outcomes it waited for are not needed, only their being done)."""
    study = Path(out)
    send = events.put.remote  # not waited for (`Events`)
    send((run.run_id, "started", worker_name()))
    if not (study / "results.sqlite").exists():
        return Outcome(run.run_id, error=f"the study directory {study} is not on this node ({socket.gethostname()}): put it on a "
                       "filesystem every node mounts at the same path")
    if not isinstance(quiet.current(), quiet.QuietLock):
        quiet.install(quiet.QuietLock())
    with torch_threads(threads):
        return execute(cfg, run, data, study, RelayHooks(run.run_id, send))


def _connect(address: str | None) -> Any:
    """Ray, connected: to the cluster at ``address`` (checked reachable first, for a clear error), else started here."""
    try:
        import ray
    except ImportError:
        raise RayError("execution.executor: ray needs Ray installed: pip install 'faircompress[ray]'") from None
    if address and address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as e:
        raise RayError(f"execution.address: no Ray cluster at {address!r} ({e}); start one with `ray start --head` "
                       "on the head node, or leave the address out to start Ray on this machine") from None
    return ray


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"execution.address: {address!r} is not host:port (e.g. 10.0.0.5:6379, ray://head:10001 or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise RayError(f"execution.address: cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                       "`ray start --head` on the head node, or leave the address out to start Ray on this machine") from None
