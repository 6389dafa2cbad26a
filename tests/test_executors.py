"""Executors: one study run one by one, side by side in worker processes, or on a local Ray, stores the
same results (same seeds and threads -> same predictions); a Ray worker killed mid-run is retried and
its run recorded once; the timing lock keeps runs quiet while a speed is measured."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_DATA
from faircompress.config import ConfigError, load_config
from faircompress.execute import Schedule, dependencies
from faircompress.execute.quiet import QuietLock
from faircompress.plan import Hooks, RunKind, plan
from faircompress.store import ResultStore
from faircompress.study import run_study

PRUNE = {"prune": {"sparsity": 0.5, "epochs": 1}}
RECIPES = [[PRUNE], [PRUNE, {"quantize": {"mode": "int8-weights"}}], [{"quantize": {"mode": "int8-weights"}}]]
DIE_ONCE = "FAIRCOMPRESS_TEST_DIE_ONCE"
# A small model whose first training step in a process that sees DIE_ONCE kills that process (SIGKILL),
# once: the file it names marks that it happened. What it computes is the same either way.
MODEL = f'''
import os
import signal

from torch import nn


class Small(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        marker = os.environ.get("{DIE_ONCE}")
        if marker and self.training and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.head(self.features(x / 255.0))


def build(*, in_channels, num_classes, input_size):
    return Small(in_channels, num_classes)
'''


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.py"
    path.write_text(MODEL)
    return path


def _config(out: Path, model: Path, **execution):
    return load_config(None, {
        "output_dir": str(out), "dataset.params": dict(TINY_DATA), "model": {"file": str(model), "function": "build"},
        "train.epochs": 2, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu", "evaluation.latency_runs": 3,
        "evaluation.memory": False, "recipes": RECIPES, "repeats": 2, **{f"execution.{k}": v for k, v in execution.items()}})


def _stored(out: Path) -> dict:
    """What a study stored that does not depend on the clock: every run's status, predictions and metrics."""
    store = ResultStore(out)
    try:
        c = store.conn
        return {
            "runs": c.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall(),
            "predictions": c.execute("SELECT run_id, sample, y_pred FROM predictions ORDER BY run_id, sample").fetchall(),
            "metrics": c.execute("SELECT run_id, metric, attribute, grp, value FROM metrics WHERE metric NOT IN "
                                 "('latency_ms', 'throughput_ips') ORDER BY run_id, metric, attribute, grp").fetchall(),
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory, model_file) -> dict:
    """The reference: the local executor, one run at a time: variants on one PyTorch thread, baselines on two."""
    out = tmp_path_factory.mktemp("one-by-one")
    cfg = _config(out, model_file, threads=1, baseline_threads=2)
    report = run_study(cfg)
    assert not report.failed and len(report.ran) == len(plan(cfg))
    return _stored(out)


def test_dependencies_wait_for_the_baseline_and_the_first_run_that_makes_a_shared_model(tmp_path, model_file):
    runs = plan(_config(tmp_path, model_file))
    deps = dependencies(runs)
    base = runs[0]
    assert base.kind is RunKind.BASELINE and deps[base.run_id] == []
    prune = [r for r in runs if r.recipe is not None and r.recipe.train_steps]
    for r in prune:  # prune and prune + int8 of one repeat share the fine-tuned model: the first makes it
        maker = next(x for x in prune if x.prefix_id == r.prefix_id)
        assert deps[r.run_id] == [base.run_id] + ([maker.run_id] if maker is not r else [])
    sched = Schedule(runs)
    first = sched.next_ready()
    assert first is base and sched.next_ready() is None  # everything else waits for the baseline
    sched.finished(base.run_id)
    assert sched.next_ready() is not None


def test_worker_processes_store_what_one_by_one_stores(tmp_path, model_file, one_by_one):
    report = run_study(_config(tmp_path, model_file, workers=2, threads=1, baseline_threads=2))
    assert not report.failed
    assert _stored(tmp_path) == one_by_one


def test_a_timing_waits_until_running_runs_step_aside(tmp_path):
    steps: list[float] = []
    stop = threading.Event()

    def training() -> None:
        lock = QuietLock(tmp_path)
        with lock.running():
            while not stop.is_set():
                lock.step_aside()
                steps.append(time.monotonic())
                time.sleep(0.005)

    t = threading.Thread(target=training)
    t.start()
    time.sleep(0.1)
    with QuietLock(tmp_path).timing():
        start = time.monotonic()
        time.sleep(0.3)
        end = time.monotonic()
    time.sleep(0.1)
    stop.set()
    t.join()
    assert steps and not [s for s in steps if start < s < end]
    assert any(s > end for s in steps)  # and it went on afterwards


def test_the_local_executor_imports_no_ray():
    code = ("import sys; from faircompress.config import load_config; from faircompress.execute import EXECUTORS; "
            "print(EXECUTORS.names(), load_config(None, {'execution.workers': 2}).execution.executor, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['local', 'ray'] local False"


def test_an_unknown_executor_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown executor 'dask' \\(known: local, ray\\)"):
        load_config(None, {"execution.executor": "dask"})


# --- Ray ----------------------------------------------------------------------------------------------

class Workers(Hooks):
    """Which worker each run was started on, each time."""

    def __init__(self) -> None:
        self.of: dict[str, list[str]] = {}

    def run_worker(self, run, worker: str) -> None:
        self.of.setdefault(run.run_id, []).append(worker)


@pytest.fixture(scope="module")
def on_ray(tmp_path_factory, model_file):
    """A study on a Ray started here, 2 tasks at once; the first training step kills its worker once."""
    pytest.importorskip("ray")
    out = tmp_path_factory.mktemp("ray")
    marker = out.parent / f"{out.name}-died"
    hooks = Workers()
    os.environ[DIE_ONCE] = str(marker)  # Ray's processes, started below, inherit it
    try:
        report = run_study(_config(out, model_file, executor="ray", resources={"cpus": 1}, threads=1, baseline_threads=2,
                                   retries=2), hooks)
    finally:
        del os.environ[DIE_ONCE]
    return out, report, hooks, marker


def test_ray_stores_what_the_local_executor_stores(on_ray, one_by_one):
    out, report, _, _ = on_ray
    assert not report.failed
    assert _stored(out) == one_by_one


def test_a_killed_ray_worker_is_retried_and_its_run_recorded_once(on_ray):
    out, report, hooks, marker = on_ray
    assert marker.exists()  # the baseline's first training step killed its worker
    store = ResultStore(out)
    try:
        runs = store.runs()
        base = runs[runs.kind == "baseline"]
        assert list(base.status) == ["finished"] and list(base.attempts) == [2]
        assert (runs[runs.kind == "variant"].attempts == 1).all()
        (run_id,) = base.run_id
        first, again = hooks.of[run_id]
        assert first != again  # started again in another worker process
        n = store.conn.execute("SELECT COUNT(*) FROM predictions WHERE run_id=?", (run_id,)).fetchone()[0]
        assert n == len(store.sample_rows(store.conn.execute("SELECT dataset_key FROM datasets").fetchone()[0]))
    finally:
        store.close()


@pytest.mark.parametrize("address, says", [("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1"),
                                           ("head-node", "'head-node' is not host:port")])
def test_a_bad_ray_address_is_a_clear_error(tmp_path, model_file, address, says):
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=says):
        run_study(_config(tmp_path, model_file, executor="ray", address=address))


def test_a_run_no_ray_node_could_take_is_refused(tmp_path, model_file):
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="a run asks for 4096 CPU but no node of the Ray cluster has more than"):
        run_study(_config(tmp_path, model_file, executor="ray", resources={"cpus": 4096}))


def test_a_ray_task_on_a_node_without_the_study_directory_fails_its_run_only(tmp_path, model_file):
    from faircompress.execute.executors.ray_cluster import _task

    sent: list = []

    class Events:  # the progress actor's handle, as a task sees it
        class put:
            remote = staticmethod(sent.append)

    run = plan(_config(tmp_path, model_file))[0]
    outcome = _task(None, run, None, str(tmp_path / "not-mounted"), 1, Events)
    assert outcome.result is None and outcome.fault is None  # the run fails; the study goes on
    assert "is not on this node" in outcome.error and sent[0][:2] == (run.run_id, "started")
