"""A study: the grid of runs one config describes, executed resumably into a results store."""
from __future__ import annotations

import fcntl
import platform
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .artefacts import check_artefacts
from .atomic import EnvironmentFault, remove_leftovers, write_text_atomic
from .binding import binding_for, check_binding, test_rows
from .config import ConfigError, StudyConfig, dump_config
from .data.common import unreadable
from .data.composition import composition
from .data.dataset import FaceDataset
from .data.problems import DatasetError
from .data.registry import DatasetIdentity, declared_shape, default_cache_dir, identify, load_identified
from .plan import PROTOCOL_VERSION, Hooks, PlannedRun, RunKind, plan, stale_protocol
from .store import ResultStore, StoreError
from .train import precision_note, resolve_device

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
    except an `EnvironmentFault` (e.g. a full disk), which stops it; a rerun resumes.
    The device is checked and the dataset loaded (and checked) before the study directory is created."""
    from .train import require_device  # the training stack, imported only when a study runs

    if cfg.models is not None:
        raise ConfigError(f"{cfg.name}: a models grid runs as one study per model (StudyConfig.studies())")
    require_device(cfg.train.device)
    hooks = hooks or Hooks()
    cache = default_cache_dir() if cfg.dataset.cache else None
    ident = identify(cfg.dataset.name, cfg.dataset.params, memo=cache / "digests.json" if cache else None)
    data = load_identified(ident, cache)
    _check_unreadable(cfg, data, hooks)
    _check_own_files(cfg, data)
    _check_input(cfg, data)
    _check_layers(cfg, data)
    _check_steps_data(cfg, data)
    data = _augmented(cfg, data, hooks)  # after the checks: they speak of the images loaded
    out = Path(cfg.output_dir)
    store = ResultStore(out)
    try:
        with study_lock(out):
            return _run_locked(cfg, hooks, out, store, ident, data)
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


def _run_locked(cfg: StudyConfig, hooks: Hooks, out: Path, store: ResultStore, ident: DatasetIdentity,
                data: FaceDataset) -> StudyReport:
    remove_leftovers(out)  # partial files of a run killed mid-write
    _check_study(cfg, out, store, ident, data)
    write_text_atomic(out / "config.yaml", dump_config(cfg))
    store.set_protocol(PROTOCOL_VERSION)
    cfg, blocked = _layerwise(cfg, store, data)  # per-layer pruning: sparsities from the sensitivity scan, planned with them
    runs = plan(cfg)
    damaged = _damaged_artefacts(store, out, runs, hooks)
    todo = [r for r in runs if (store.status(r.run_id) != "finished" or r.run_id in damaged) and not blocked(r)]
    pending = {r.run_id for r in todo}
    report = StudyReport(ran=[], skipped=[r.run_id for r in runs if r.run_id not in pending and not blocked(r)], failed={})
    for r in runs:
        if blocked(r):  # not started, not recorded: once the scan exists these recipes plan other run ids
            report.failed[r.run_id] = blocked.why  # type: ignore[assignment]
            hooks.run_failed(r, str(blocked.why))
        elif r.run_id not in pending:
            hooks.run_skipped(r)
    _record_samples(store, ident, data)  # before the early return: a finished study made before counts were kept gets them
    if not todo:
        return report
    if any((r.kind is RunKind.BASELINE and cfg.baseline.source == "train") or (r.recipe is not None and r.recipe.train_steps)
           for r in todo):
        hooks.note(precision_note(cfg.train.precision, resolve_device(cfg.train.device)))
    from .execute import EXECUTORS, Batch, Driver

    executor = EXECUTORS.get(cfg.execution.executor)(cfg.execution)
    if cfg.execution != type(cfg.execution)():
        hooks.note(executor.describe())
    driver = Driver(store, hooks, cfg, len(todo), package_versions(), git_commit(), ident.key, ran=report.ran, failed=report.failed)
    executor.run(Batch(cfg, todo, data, out), driver)
    return report


def _check_study(cfg: StudyConfig, out: Path, store: ResultStore, ident: DatasetIdentity, data: FaceDataset) -> None:
    """Refuse runs that would not be comparable with the study's (another protocol, dataset or
    plan), before anything in the directory changes; bind a new study to this dataset and plan."""
    stale = stale_protocol(store.protocol())
    if stale:
        raise StoreError(f"{out}: the runs in this study were {stale}. Run into a new directory (--out), or move "
                         f"{store.path.name} aside to start this one afresh")
    check_binding(out, store, binding_for(cfg, ident), ident, test_rows(data))


def _damaged_artefacts(store: ResultStore, out: Path, runs: list[PlannedRun], hooks: Hooks) -> set[str]:
    """Planned runs whose artefact is missing or altered: they run again. The altered file goes
    first, and so do a variant's fine-tuned model and exports (their checksums are not kept), so
    the rebuild starts from the verified baseline; damage to runs no longer planned is only reported."""
    planned = {r.run_id: r for r in runs}
    damaged: set[str] = set()
    checks = check_artefacts(store, out)
    for check in checks:
        if check.damaged and check.run_id not in planned:
            hooks.note(f"{check.describe()} (not in this config's plan: left as it is; `faircompress verify` lists it)")
    while found := [c for c in checks if c.damaged and c.run_id in planned and c.run_id not in damaged]:
        for check in found:  # a removed fine-tuned folder may hold another run's file: checked again
            hooks.note(f"{check.describe()}: rebuilding it")
            try:
                check.path.unlink(missing_ok=True)
            except OSError as e:
                raise EnvironmentFault.from_os_error(check.path, e) from None
            run = planned[check.run_id]
            if run.kind is RunKind.VARIANT and run.recipe is not None and run.recipe.train_steps:
                shutil.rmtree(out / "models" / run.prefix_id, ignore_errors=True)
            damaged.add(check.run_id)
        checks = check_artefacts(store, out)
    return damaged


def _check_unreadable(cfg: StudyConfig, data: FaceDataset, hooks: Hooks) -> None:
    """Say per split how many images could not be read; stop above `dataset.max_unreadable`."""
    counts = unreadable(data)
    hooks.note("images: " + ", ".join(f"{s} {n - bad}" + (f" ({bad} unreadable)" if bad else "") for s, (bad, n) in counts.items())
               + ("" if any(bad for bad, _ in counts.values()) else "; none unreadable"))
    for split, (bad, n) in counts.items():
        if n and bad / n > cfg.dataset.max_unreadable:
            raise DatasetError(f"{bad} of the {n} {split} images of {cfg.dataset.name} ({bad / n:.1%}) could not be read, more than "
                               f"dataset.max_unreadable ({cfg.dataset.max_unreadable:.1%}); `faircompress data check` lists them")


def _augmented(cfg: StudyConfig, data: FaceDataset, hooks: Hooks) -> FaceDataset:
    """The dataset with `dataset.augment`'s copies of every training image appended (val and test,
    and so the test samples the store records, untouched)."""
    if cfg.dataset.augment is None:
        return data
    from .data.augment import augment_offline, described

    hooks.note(described(cfg.dataset.augment, len(data.indices("train"))))
    return augment_offline(data, cfg.dataset.augment)


def _check_own_files(cfg: StudyConfig, data: FaceDataset) -> None:
    """Your own model, weights or ONNX file against the loaded dataset, before anything is written:
    the config checked them when it loaded if the dataset's parameters fixed its shape, else here."""
    from .own_baseline import check_for_data
    from .own_model import OwnModelError

    if declared_shape(cfg.dataset.name, cfg.dataset.params) == data.input_shape:
        return
    try:
        check_for_data(cfg, data.input_shape)
    except OwnModelError as e:
        raise ConfigError(str(e)) from None


def _check_input(cfg: StudyConfig, data: FaceDataset) -> None:
    """A features table's rows (float32 (N, F, 1, 1)) need a model that takes features and training
    without image augmentation; images need a model that takes images. Checked before anything is written."""
    from .models.registry import input_kind
    from .train import augmentation_conflict

    if cfg.baseline.source == "onnx":  # no PyTorch model, no training: the file's input shape was checked
        return
    conflict = augmentation_conflict(cfg.train, data)
    if conflict:
        raise ConfigError(conflict)
    if data.is_features and cfg.dataset.augment is not None:
        raise ConfigError(f"dataset.augment makes augmented copies of pictures, but dataset {data.name} holds features: remove it")
    resolved = cfg.model.resolved()
    takes = input_kind(resolved.factory, cfg.model.params)
    if data.is_features and takes != "features":
        raise ConfigError(f"model: {resolved.what} takes images, but dataset {data.name} holds {data.channels} features per sample "
                          f"(N, {data.channels}, 1, 1): use a model that takes features (pca_mlp with params.input: features)")
    if not data.is_features and takes == "features":
        raise ConfigError(f"model: {resolved.what} with these params takes a features table's rows, but dataset {data.name} holds "
                          f"images {data.input_shape.batch()}: set model.params.input: image, or use a features dataset "
                          "(sfew_features)")


def _check_layers(cfg: StudyConfig, data: FaceDataset) -> None:
    """Per-layer pruning sparsities name layers the model has (checked when the config loaded where the
    dataset's parameters fix the shape; here for the rest), before anything is written."""
    from .compress.layerwise import LayerwiseError, check_layer_names

    try:
        check_layer_names(cfg, data.input_shape)
    except LayerwiseError as e:
        raise ConfigError(str(e)) from None


def _check_steps_data(cfg: StudyConfig, data: FaceDataset) -> None:
    """Every training step can run on this dataset (e.g. fairgrape's attribute has group labels in the
    training splits), before anything is written."""
    from .compress.recipes import parse_recipe
    from .train import training_rows

    rows = training_rows(data, cfg.train.selection)
    for i, raw in enumerate(cfg.recipes):
        for step in parse_recipe(raw).train_steps:
            try:
                step.check_data(data, rows)
            except ValueError as e:
                raise ConfigError(f"recipe {i + 1} ({step.name}): {e}") from None


class _Blocked:
    """Planned runs that cannot run yet (a from_sensitivity recipe without a scan), and why."""

    def __init__(self, why: str | None) -> None:
        self.why = why

    def __call__(self, run: PlannedRun) -> bool:
        from .compress.layerwise import unresolved

        return self.why is not None and unresolved(run)


def _layerwise(cfg: StudyConfig, store: ResultStore, data: FaceDataset) -> tuple[StudyConfig, _Blocked]:
    from .compress.layerwise import LayerwiseError, resolve

    try:
        cfg, why = resolve(cfg, store, data.input_shape)
    except LayerwiseError as e:
        raise ConfigError(str(e)) from None
    return cfg, _Blocked(why)


def _record_samples(store: ResultStore, ident: DatasetIdentity, data: FaceDataset) -> None:
    """The dataset's test samples and the other splits' counts, recorded under its content key for the analysis."""
    store.record_samples(ident.key, data.name, data.class_names, data.attribute_groups, test_rows(data),
                         composition(data, ("train", "val")).rows())
