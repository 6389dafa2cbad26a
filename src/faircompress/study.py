"""A study: the grid of runs one config describes, executed resumably into a results store."""
from __future__ import annotations

import fcntl
import platform
import subprocess
import traceback
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .atomic import EnvironmentFault, remove_leftovers, write_text_atomic
from .config import StudyConfig, dump_config
from .data.dataset import FaceDataset
from .data.registry import DATASETS, cache_key, default_cache_dir, load_dataset
from .plan import PROTOCOL_VERSION, Hooks, PlannedRun, RunKind, plan, stale_protocol
from .store import ResultStore, RunResult, StoreError

__all__ = ["PROTOCOL_VERSION", "Hooks", "PlannedRun", "StudyReport", "plan", "run_study", "study_lock"]


def package_versions() -> dict[str, str]:
    import fairlearn
    import numpy
    import torch

    from . import __version__

    return {"faircompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "fairlearn": fairlearn.__version__}


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class StudyReport:
    ran: list[str]
    skipped: list[str]
    failed: dict[str, str]


def run_study(cfg: StudyConfig, hooks: Hooks | None = None) -> StudyReport:
    """Run every planned run that is not finished yet. Failures are recorded and the study goes on,
    except an `EnvironmentFault` (e.g. a full disk), which stops it; a rerun resumes."""
    out = Path(cfg.output_dir)
    store = ResultStore(out)
    try:
        with study_lock(out):
            return _run_locked(cfg, hooks or Hooks(), out, store)
    finally:
        store.close()


@contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """One process per study directory: a second `faircompress run` on it stops instead of racing."""
    fh = open(out / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StoreError(f"{out}: another faircompress process is running this study; wait for it or stop it") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _run_locked(cfg: StudyConfig, hooks: Hooks, out: Path, store: ResultStore) -> StudyReport:
    remove_leftovers(out)  # partial files of a run killed mid-write
    write_text_atomic(out / "config.yaml", dump_config(cfg))
    stale = stale_protocol(store.protocol())
    if stale:
        raise StoreError(f"{out}: the runs in this study were {stale}. Run into a new directory (--out), or move "
                         f"{store.path.name} aside to start this one afresh")
    store.set_protocol(PROTOCOL_VERSION)
    runs = plan(cfg)
    todo = [r for r in runs if store.status(r.run_id) != "finished"]
    pending = {r.run_id for r in todo}
    report = StudyReport(ran=[], skipped=[r.run_id for r in runs if r.run_id not in pending], failed={})
    for r in runs:
        if r.run_id not in pending:
            hooks.run_skipped(r)
    if not todo:
        return report
    data = _load_data(cfg, store)
    versions, commit = package_versions(), git_commit()
    for i, run in enumerate(todo):
        hooks.run_started(run, i, len(todo))
        store.start_run(run.run_id, study=cfg.name, identity=run.columns(), config=cfg.model_dump(mode="json"),
                        versions=versions, git_commit=commit)
        try:
            result = _execute(cfg, run, data, out, hooks)
            result.artefact = str(Path(result.artefact).relative_to(out))
            store.finish_run(run.run_id, result)
        except EnvironmentFault as e:  # a full disk fails every later run too: stop, recorded if the store still can
            with suppress(EnvironmentFault):
                store.fail_run(run.run_id, f"{type(e).__name__}: {e}")
            raise
        except Exception as e:  # a failed run is recorded; the study carries on
            msg = f"{type(e).__name__}: {e}"
            store.fail_run(run.run_id, msg + "\n" + traceback.format_exc(limit=8))
            report.failed[run.run_id] = msg
            hooks.run_failed(run, msg)
        else:
            report.ran.append(run.run_id)
            hooks.run_finished(run, result)
    return report


def _load_data(cfg: StudyConfig, store: ResultStore) -> FaceDataset:
    """The study's dataset (cached), with its test samples recorded in the store for the analysis."""
    ds_params = DATASETS.get(cfg.dataset.name).params.model_validate(cfg.dataset.params)
    data = load_dataset(cfg.dataset.name, ds_params, default_cache_dir() if cfg.dataset.cache else None)
    test = data.indices("test")
    store.record_samples(cache_key(cfg.dataset.name, ds_params), data.name, data.class_names, data.attribute_groups, test,
                         data.subjects[test], data.labels[test], {a: v[test] for a, v in data.attributes.items()})
    return data


def _execute(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks) -> RunResult:
    # the training stack is imported only when a study runs
    if run.kind is RunKind.BASELINE:
        from .baseline import train_baseline

        return train_baseline(cfg, run, data, out / "runs" / run.run_id, hooks)
    from .variants import run_variant

    return run_variant(cfg, run, data, out, hooks)
