"""A variant: one recipe applied to one trained baseline with one fine-tuning seed, exported to a
single ONNX file and measured on that file in ONNX Runtime (what a user would ship)."""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from .baseline import initial_model
from .compress.export import export_onnx
from .compress.recipes import Recipe, TrainStep, TuneContext
from .config import EvaluationConfig, StudyConfig
from .data.dataset import FaceDataset
from .evaluate.memory import MemoryProbe
from .execute.quiet import timed_quietly
from .evaluate.metrics import evaluate_split, metric_rows
from .evaluate.runtime import onnx_latency, onnx_predict, onnx_throughput, session, throughput_from_batches
from .evaluate.size import onnx_size_report
from .plan import Hooks, PlannedRun
from .store import RunResult
from .mitigate import Objective, ObjectiveInputs, build_objective
from .train import (FitResult, checkpoint_metadata, fit, fit_to_training, load_checkpoint, predict, resolve_device, resolve_precision,
                    save_checkpoint, training_rows)


def run_variant(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks) -> RunResult:
    assert run.recipe is not None, "a variant has a recipe"
    t0 = time.perf_counter()
    model, fits, steps = _fine_tuned_model(cfg, run, data, out, hooks)
    t1 = time.perf_counter()
    path = _deployable_file(run, run.recipe, model, data, out)
    t2 = time.perf_counter()
    m = measure_file(path, data, cfg.evaluation, cfg.train.eval_batch_size)
    if m.details.get("memory", {}).get("note"):
        hooks.note(f"{run.label}: memory not measured ({m.details['memory']['note']})")
    epochs = [{**vars(h), "epoch": i + 1} for i, h in enumerate(h for f in fits for h in f.history)]
    details = m.details | ({"steps": steps} if steps else {})
    metrics = pd.concat([m.metrics, metric_rows({"fine_tune_epochs": len(epochs)})], ignore_index=True)
    return RunResult(
        metrics=metrics, epochs=epochs, sample_ids=data.indices("test"), y_true=data.labels[data.indices("test")], y_pred=m.y_pred,
        timings={"fine_tune_s": t1 - t0, "export_s": t2 - t1, **m.timings}, device="onnxruntime-cpu",
        precision=fits[0].precision if fits else "fp32", selection=_selection(cfg, fits), artefact=str(path), details=details,
    )


def _selection(cfg: StudyConfig, fits: list[FitResult]) -> str:
    """How the checkpoint behind the file was chosen: by fine-tuning's selection, else as its baseline was."""
    return cfg.train.selection if fits or cfg.baseline.source == "train" else "given"


def _fine_tuned_model(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path,
                      hooks: Hooks) -> tuple[torch.nn.Module | None, list[FitResult], dict]:
    """The baseline with the recipe's training steps applied, its fits, and what the steps recorded
    (`TuneContext.details`, kept in the checkpoint's metadata); shared between recipes with the same
    steps. None with a given ONNX file: its recipes have no training steps and start from the file."""
    if cfg.baseline.source == "onnx":
        return None, [], {}
    assert run.recipe is not None
    return _trained_by(cfg, run, data, out, hooks, run.recipe.train_steps)


def _trained_by(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks,
                steps: tuple[TrainStep, ...]) -> tuple[torch.nn.Module, list[FitResult], dict]:
    """The run's baseline with ``steps`` applied (loaded when a run of the study made it before, else
    made and saved under `PlannedRun.prefix_of`): the model, its fits and what its steps recorded."""
    model = cfg.model.build(data.input_shape)
    baseline = out / "runs" / str(run.baseline_id) / "model.safetensors"
    if not baseline.exists():
        raise FileNotFoundError(f"baseline checkpoint {baseline} is missing (did its training fail?)")
    if not steps:
        load_checkpoint(model, baseline)
        return model, [], {}
    ckpt = out / "models" / run.prefix_of(steps) / "model.safetensors"
    with _making(ckpt):  # runs side by side: one makes it, the others wait and load it
        if ckpt.exists():  # made by an earlier recipe with the same training steps, or before a crash
            return _saved_fine_tuned(model, steps, ckpt, (data.channels, *data.image_size))
        return _fine_tune(cfg, run, data, out, hooks, steps, model, baseline, ckpt)


@contextmanager
def _making(path: Path) -> Iterator[None]:
    """Exclusive, across processes, while ``path`` is looked for and made (a lock file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".making", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fine_tune(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks, steps: tuple[TrainStep, ...],
               model: torch.nn.Module, baseline: Path, ckpt: Path) -> tuple[torch.nn.Module, list[FitResult], dict]:
    load_checkpoint(model, baseline)
    fits: list[FitResult] = []
    ctx = _tune_context(cfg, run, data, hooks, fits, baseline)
    torch.manual_seed(run.tune_seed)
    for i, step in enumerate(steps):
        ctx.earlier = lambda instead, i=i: _trained_by(cfg, run, data, out, hooks, (*steps[:i], instead))[::2]
        step.apply(model, ctx)
    meta = {"fits": "\n".join(f.to_json() for f in fits), "steps": json.dumps(ctx.details)}
    save_checkpoint(model, ckpt, meta | ({"records": json.dumps(ctx.records)} if ctx.records else {}))
    return model, fits, ctx.details


def _saved_fine_tuned(model: torch.nn.Module, steps: tuple[TrainStep, ...], ckpt: Path,
                      shape: tuple[int, ...]) -> tuple[torch.nn.Module, list[FitResult], dict]:
    """A fine-tuned model saved earlier, its fits and its steps' details."""
    meta = checkpoint_metadata(ckpt)
    records = json.loads(meta.get("records", "{}"))
    for step in steps:  # e.g. prune_channels: the shrunk architecture, before its weights load
        step.rebuild(model, records.get(step.name), shape)
    load_checkpoint(model, ckpt)
    return model, [FitResult.from_json(f) for f in meta.get("fits", "").split("\n") if f], json.loads(meta.get("steps", "{}"))


def _tune_context(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, hooks: Hooks, fits: list[FitResult],
                  baseline: Path) -> TuneContext:
    """What the recipe's training steps get; each fine-tuning's result is appended to ``fits``.
    ``baseline``: the run's baseline checkpoint (the teacher of a fine-tuning objective)."""
    details: dict = {}

    def fine_tune(m, epochs, after_step, on_epoch=None, objective=None):
        def epoch_done(log):
            hooks.epoch(log)
            if on_epoch is not None:
                on_epoch(log)

        made = _objective(cfg, data, baseline, objective) if objective is not None else None
        res = fit(m, data, cfg.train.model_copy(update={"epochs": epochs}), run.tune_seed,
                  on_batch=hooks.batch, on_epoch=epoch_done, after_step=after_step, objective=made)
        if made is not None:
            details.setdefault("fine_tune", []).append({**objective, **made.record()})
        fits.append(res)
        return res

    def initial(seed: int | None = None) -> torch.nn.Module:  # the baseline's own initial model; with a seed, one from scratch
        return initial_model(cfg, run.seed if seed is None else seed, data.input_shape, from_scratch=seed is not None)

    trains = cfg.baseline.source == "train"
    return TuneContext(fine_tune=fine_tune, seed=run.tune_seed, images=lambda: calibration_images(data, run.tune_seed),
                       note=hooks.note, input_shape=(data.channels, *data.image_size), details=details,
                       initial_model=initial if trains else None,
                       accuracy=lambda m, split: split_accuracy(m, data, split, cfg.train.eval_batch_size), train_epochs=cfg.train.epochs,
                       rewind=(lambda epoch: replay_baseline(cfg, run, data, epoch, baseline, hooks)) if trains else None,
                       training_data=lambda: data.take(training_rows(data, cfg.train.selection)),
                       device=resolve_device(cfg.train.device))


def _objective(cfg: StudyConfig, data: FaceDataset, baseline: Path, spec: dict) -> Objective:
    """The fine-tuning objective ``spec`` names, with the baseline as its teacher."""
    device = resolve_device(cfg.train.device)

    def teacher() -> torch.nn.Module:  # built without drawing from the seeded stream fit's dropout draws from
        with torch.random.fork_rng(devices=[]):
            model = cfg.model.build(data.input_shape)
        load_checkpoint(model, baseline)
        return model.to(device).eval()

    rows = training_rows(data, cfg.train.selection)
    return build_objective(spec, ObjectiveInputs(data, rows, teacher, device, resolve_precision(cfg.train.precision, device)))


def replay_baseline(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, epoch: int, baseline: Path,
                    hooks: Hooks) -> tuple[torch.nn.Module, dict]:
    """The run's baseline after ``epoch`` epochs of its training, replayed: its initial model, fitted
    to the training images as it was, trained with its recipe and seed, and taken at the end of that
    epoch. With the record of the replay: its per-epoch figures and whether they equal the ones the
    baseline's checkpoint recorded (training that is deterministic on this machine reproduces them)."""
    model = initial_model(cfg, run.seed, data.input_shape)
    fit_to_training(model, data, cfg.train.selection)
    at: dict[str, torch.Tensor] = {}

    def keep(log) -> None:
        hooks.epoch(log)
        if log.epoch == epoch:
            at.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    res = fit(model, data, cfg.train.model_copy(update={"epochs": epoch}), run.seed, on_batch=hooks.batch, on_epoch=keep)
    model.load_state_dict(at)
    meta = checkpoint_metadata(baseline)
    recorded = FitResult.from_json(meta["fit"]).history[:epoch] if "fit" in meta else []
    figures = lambda h: (h.train_loss, h.train_acc, h.sel_loss, h.sel_acc)  # noqa: E731
    same = len(recorded) == epoch and all(figures(a) == figures(b) for a, b in zip(res.history, recorded))
    return model, {"epoch": epoch, "replay_matches_baseline": same,
                   "replay": [{"epoch": h.epoch, "train_loss": h.train_loss, "sel_acc": h.sel_acc} for h in res.history],
                   "baseline": [{"epoch": h.epoch, "train_loss": h.train_loss, "sel_acc": h.sel_acc} for h in recorded]}


def split_accuracy(model: torch.nn.Module, data: FaceDataset, split: str, batch_size: int = 256) -> float:
    """A PyTorch model's accuracy on one split of ``data``, where the model lies."""
    idx = data.indices(split)
    return float((predict(model, data.images[idx], batch_size) == data.labels[idx]).mean()) if len(idx) else float("nan")


def _deployable_file(run: PlannedRun, recipe: Recipe, model: torch.nn.Module | None, data: FaceDataset, out: Path) -> Path:
    """Export (shared per fine-tuned model and precision), then the recipe's export steps. A given
    ONNX file is already where the fp32 export goes (its baseline run put it there)."""
    precision = recipe.export_precision
    exported = out / "models" / run.prefix_id / ("model-fp16.onnx" if precision == "fp16" else "model.onnx")
    if not exported.exists():
        if model is None:
            raise FileNotFoundError(f"the baseline's copy of the given ONNX file {exported} is missing (did its baseline run fail?)")
        export_onnx(model, exported, (data.channels, *data.image_size), fp16=precision == "fp16")
    path = exported
    for i, step in enumerate(recipe.export_steps):
        dst = out / "runs" / run.run_id / f"model-{i}-{step.name}.onnx"
        if i == len(recipe.export_steps) - 1:
            dst = dst.with_name("model.onnx")
        dst.parent.mkdir(parents=True, exist_ok=True)
        step.transform(path, dst, calibration_images(data, run.tune_seed))
        path = dst
    return path


def calibration_images(data: FaceDataset, seed: int, n: int = 1024) -> np.ndarray:
    """A seeded sample of training images (uint8; a features table's rows: float32), for calibrating activation ranges."""
    idx = data.indices("train")
    rng = np.random.default_rng(seed)
    return data.images[rng.permutation(idx)[:n]]


@dataclass
class Measurement:
    """What measuring a deployable file gives: test predictions, metrics (long format), timings and
    per-kernel details."""

    y_pred: np.ndarray
    metrics: pd.DataFrame
    timings: dict[str, float]
    details: dict


def measure_file(path: Path, data: FaceDataset, ev_cfg: EvaluationConfig, eval_batch_size: int = 256) -> Measurement:
    """Accuracy per group, size, speed and memory, all measured on the file itself. The test-set pass
    runs at the throughput batch size and is timed, so it doubles as the throughput measurement."""
    t0 = time.perf_counter()
    sess = session(path, ev_cfg.threads or None)
    test = data.indices("test")
    shape = (data.channels, *data.image_size)
    batch_seconds: list[float] = []
    batch = ev_cfg.throughput_batch if ev_cfg.latency else eval_batch_size
    speed: dict[str, float] = {}
    with timed_quietly() if ev_cfg.latency else nullcontext():  # runs side by side wait while this one is timed
        y_pred = onnx_predict(sess, data.images[test], batch, batch_seconds)
        t1 = time.perf_counter()
        if ev_cfg.latency:
            throughput = throughput_from_batches(batch_seconds, batch, len(test))
            speed["latency_ms"] = onnx_latency(sess, shape, ev_cfg.latency_runs)
            speed["throughput_ips"] = throughput if throughput is not None else onnx_throughput(sess, shape, batch)
    ev = evaluate_split(data, y_pred)
    del sess  # its threads and arena are gone before the memory probe runs, so they cannot slow it
    # the probe (a child process) loads the file while this one zips it: neither is timed, and the
    # probe's peak RSS is its own, so running them side by side changes no figure
    probe = MemoryProbe(path, shape, ev_cfg.throughput_batch, ev_cfg.threads) if ev_cfg.memory else None
    try:
        size = onnx_size_report(path)
    except BaseException:
        if probe is not None:
            probe.stop()
        raise
    scalars = {k: float(size[k]) for k in ("raw_bytes", "zipped_bytes", "parameters", "nonzeros")} | speed
    t2 = time.perf_counter()
    details: dict = {"kernels": size["kernels"]}
    if probe is not None:
        memory = probe.result()
        scalars |= memory.scalars()
        details["memory"] = memory.to_json()
    return Measurement(y_pred=y_pred, metrics=pd.concat([ev.long(), metric_rows(scalars)], ignore_index=True),
                       timings={"eval_s": t1 - t0, "measure_s": t2 - t1, "memory_s": time.perf_counter() - t2}, details=details)
