"""A variant: one recipe applied to one trained baseline with one fine-tuning seed, exported to a
single ONNX file and measured on that file in ONNX Runtime (what a user would ship)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .compress.export import export_onnx
from .compress.recipes import Recipe, TuneContext, parse_recipe
from .data.dataset import FaceDataset
from .evaluate.metrics import evaluate_predictions
from .evaluate.runtime import onnx_latency, onnx_predict, onnx_throughput, session, throughput_from_batches
from .evaluate.size import onnx_size_report
from .models import build_model
from .store import RunResult
from .train import FitResult, fit, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from .config import StudyConfig
    from .study import Hooks, RunSpec


def run_variant(cfg: "StudyConfig", spec: "RunSpec", data: FaceDataset, out: Path, hooks: "Hooks") -> RunResult:
    t0 = time.perf_counter()
    recipe = parse_recipe(spec.recipe or [])
    model, tuned = _fine_tuned_model(cfg, spec, recipe, data, out, hooks)
    t1 = time.perf_counter()
    path = _deployable_file(spec, recipe, model, data, out)
    t2 = time.perf_counter()
    result = measure_file(path, data, cfg)
    result.epochs = [{**vars(h), "epoch": i + 1} for i, h in enumerate(h for f in tuned for h in f.history)]
    result.metrics |= {"fine_tune_epochs": float(len(result.epochs))}
    result.timings = {"fine_tune_s": t1 - t0, "export_s": t2 - t1, **result.timings}
    result.precision = tuned[0].precision if tuned else "fp32"
    result.selection = cfg.train.selection
    result.device = "onnxruntime-cpu"
    return result


def _fine_tuned_model(cfg, spec, recipe: Recipe, data: FaceDataset, out: Path, hooks) -> tuple[torch.nn.Module, list[FitResult]]:
    """The baseline with the recipe's training steps applied; shared between recipes with the same steps."""
    model = build_model(cfg.model.name, in_channels=data.channels, num_classes=data.num_classes,
                        input_size=data.image_size[0], **cfg.model.params)
    baseline = out / "runs" / spec.baseline_id / "model.safetensors"
    if not baseline.exists():
        raise FileNotFoundError(f"baseline checkpoint {baseline} is missing (did its training fail?)")
    if not recipe.train_steps:
        load_checkpoint(model, baseline)
        return model, []
    ckpt = out / "models" / spec.prefix_id / "model.safetensors"
    if ckpt.exists():  # made by an earlier recipe with the same training steps, or before a crash
        meta = load_checkpoint(model, ckpt)
        return model, [FitResult.from_json(f) for f in _split(meta.get("fits", ""))]
    load_checkpoint(model, baseline)
    fits: list[FitResult] = []

    def fine_tune(m, epochs, after_step):
        res = fit(m, data, cfg.train.model_copy(update={"epochs": epochs}), spec.tune_seed,
                  on_batch=hooks.batch, on_epoch=hooks.epoch, after_step=after_step)
        fits.append(res)
        return res

    torch.manual_seed(spec.tune_seed)
    for step in recipe.train_steps:
        step.apply(model, TuneContext(fine_tune=fine_tune, seed=spec.tune_seed))
    save_checkpoint(model, ckpt, {"fits": _SEP.join(f.to_json() for f in fits)})
    return model, fits


_SEP = "\n"


def _split(text: str) -> list[str]:
    return [t for t in text.split(_SEP) if t]


def _deployable_file(spec, recipe: Recipe, model: torch.nn.Module, data: FaceDataset, out: Path) -> Path:
    """Export (shared per fine-tuned model and precision), then the recipe's export steps."""
    fp16 = any(getattr(s, "fp16", False) for s in recipe.export_steps)
    exported = out / "models" / spec.prefix_id / ("model-fp16.onnx" if fp16 else "model.onnx")
    if not exported.exists():
        export_onnx(model, exported, (data.channels, *data.image_size), fp16=fp16)
    path = exported
    for i, step in enumerate(recipe.export_steps):
        dst = out / "runs" / spec.run_id / f"model-{i}-{step.name}.onnx"
        if i == len(recipe.export_steps) - 1:
            dst = dst.with_name("model.onnx")
        dst.parent.mkdir(parents=True, exist_ok=True)
        step.transform(path, dst, calibration_images(data, spec.tune_seed))
        path = dst
    return path


def calibration_images(data: FaceDataset, seed: int, n: int = 1024) -> np.ndarray:
    """A seeded sample of training images (uint8), for calibrating activation ranges."""
    idx = data.indices("train")
    rng = np.random.default_rng(seed)
    return data.images[rng.permutation(idx)[:n]]


def measure_file(path: Path, data: FaceDataset, cfg: "StudyConfig") -> RunResult:
    """Accuracy per group, size and speed, all measured on the file itself. The test-set pass runs
    at the throughput batch size and is timed, so it doubles as the throughput measurement."""
    t0 = time.perf_counter()
    ev_cfg = cfg.evaluation
    sess = session(path, ev_cfg.threads or None)
    test = data.indices("test")
    batch_seconds: list[float] = []
    batch = ev_cfg.throughput_batch if ev_cfg.latency else cfg.train.eval_batch_size
    y_pred = onnx_predict(sess, data.images[test], batch, batch_seconds)
    ev = evaluate_predictions(data.labels[test], y_pred, data.class_names,
                              {a: v[test] for a, v in data.attributes.items()}, data.attribute_groups)
    t1 = time.perf_counter()
    size = onnx_size_report(path)
    metrics = ev.scalars() | {k: float(size[k]) for k in ("raw_bytes", "zipped_bytes", "parameters", "nonzeros")}
    if ev_cfg.latency:
        shape = (data.channels, *data.image_size)
        throughput = throughput_from_batches(batch_seconds, batch, len(test))
        metrics["latency_ms"] = onnx_latency(sess, shape, ev_cfg.latency_runs)
        metrics["throughput_ips"] = throughput if throughput is not None else onnx_throughput(sess, shape, batch)
    return RunResult(
        metrics=metrics, class_metrics=ev.per_class, group_metrics=ev.groups, epochs=[],
        sample_ids=test, y_true=data.labels[test], y_pred=y_pred,
        timings={"eval_s": t1 - t0, "measure_s": time.perf_counter() - t1},
        artefact=str(path), details={"kernels": size["kernels"]},
    )
