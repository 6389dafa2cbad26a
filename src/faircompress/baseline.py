"""A baseline run: train one model (or reuse the checkpoint of an interrupted run), or take your own
trained weights, and evaluate it in PyTorch on the test split; or take your own exported ONNX file
and evaluate it in ONNX Runtime."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path
from .config import StudyConfig
from .data.dataset import FaceDataset, InputShape
from .data.identity import file_sha256
from .evaluate.metrics import evaluate_split, metric_rows
from .own_baseline import load_weights
from .own_model import OwnModelError
from .plan import Hooks, PlannedRun
from .store import RunResult
from .train import FitResult, fit, fit_to_training, load_checkpoint, predict, resolve_device, save_checkpoint


def run_baseline(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, out: Path, hooks: Hooks) -> RunResult:
    if cfg.baseline.source == "onnx":
        return given_onnx(cfg, data, out / "models" / run.run_id / "model.onnx")
    if cfg.baseline.source == "weights":
        return given_weights(cfg, run, data, out / "runs" / run.run_id)
    return train_baseline(cfg, run, data, out / "runs" / run.run_id, hooks)


def train_baseline(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, art: Path, hooks: Hooks) -> RunResult:
    t0 = time.perf_counter()
    model = initial_model(cfg, run.seed, data.input_shape)
    ckpt = art / "model.safetensors"
    if ckpt.exists():  # trained before an interruption (killed before its results were stored): reuse
        fitres = FitResult.from_json(load_checkpoint(model, ckpt)["fit"])
    else:
        fit_to_training(model, data, cfg.train.selection)  # e.g. a PCA, on the training images; the checkpoint keeps it
        fitres = fit(model, data, cfg.train, run.seed, state_path=art / "train_state.safetensors",
                     on_batch=hooks.batch, on_epoch=hooks.epoch)
        save_checkpoint(model, ckpt, {"run_id": run.run_id, "identity": json.dumps(run.identity), "fit": fitres.to_json()})
        (art / "train_state.safetensors").unlink(missing_ok=True)
    t1 = time.perf_counter()
    y_pred, eval_s, device = _evaluate(cfg, model, data)
    extra = metric_rows({"best_epoch": fitres.best_epoch, "best_sel_acc": fitres.best_sel_acc})
    return RunResult(
        metrics=pd.concat([evaluate_split(data, y_pred).long(), extra], ignore_index=True), epochs=[vars(h) for h in fitres.history],
        sample_ids=data.indices("test"), y_true=data.labels[data.indices("test")], y_pred=y_pred,
        timings={"train_s": fitres.seconds, "setup_s": t1 - t0 - fitres.seconds, "eval_s": eval_s},
        device=str(device), precision=fitres.precision, selection=cfg.train.selection, artefact=str(ckpt),
    )


def initial_model(cfg: StudyConfig, seed: int, shape: InputShape, from_scratch: bool = False) -> torch.nn.Module:
    """The model a baseline of ``seed`` starts training from, before anything is fitted to the data:
    built right after ``torch.manual_seed(seed)`` (the seed fixes the initial weights; a pretrained
    model's constructor loads its file). A lottery ticket rebuilds it to reset weights to it.
    ``from_scratch``: the same architecture without the files its parameters name (`file_params`, e.g.
    ResNet-18's ImageNet weights; a model's ``scratch_params(params)`` says how, where leaving the file
    out would change the architecture), randomly initialised under ``seed``: a random-init control."""
    model_cfg = cfg.model
    if from_scratch:
        factory = model_cfg.resolved().factory
        scratch = getattr(factory, "scratch_params", None)
        params = scratch(model_cfg.params) if scratch is not None else \
            {k: v for k, v in model_cfg.params.items() if k not in getattr(factory, "file_params", ())}
        model_cfg = model_cfg.model_copy(update={"params": params})
    torch.manual_seed(seed)
    return model_cfg.build(shape)


def _evaluate(cfg: StudyConfig, model: torch.nn.Module, data: FaceDataset) -> tuple[np.ndarray, float, torch.device]:
    """Test-set predictions in PyTorch, the seconds they took and the device."""
    t = time.perf_counter()
    device = resolve_device(cfg.train.device)
    y_pred = predict(model.to(device), data.images[data.indices("test")], cfg.train.eval_batch_size, device)
    return y_pred, time.perf_counter() - t, device


def given_weights(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, art: Path) -> RunResult:
    """Your trained weights instead of training: the file is checked against the model, copied byte
    for byte into the study as the baseline's checkpoint (which the variants start from) and evaluated."""
    t0 = time.perf_counter()
    source = cfg.baseline.weights_for(run.seed, cfg.seeds)
    ckpt = art / "model.safetensors"
    _copy_verified(source, ckpt, cfg.baseline.weights_sha256[run.seed], "baseline.weights")  # type: ignore[index]
    model = cfg.model.build(data.input_shape)
    load_weights(model, ckpt)
    t1 = time.perf_counter()
    y_pred, eval_s, device = _evaluate(cfg, model, data)
    return RunResult(
        metrics=evaluate_split(data, y_pred).long(), epochs=[], sample_ids=data.indices("test"),
        y_true=data.labels[data.indices("test")], y_pred=y_pred, timings={"load_s": t1 - t0, "eval_s": eval_s},
        device=str(device), precision="fp32", selection="given", artefact=str(ckpt),
        details={"baseline": {"source": "weights", "file": str(source), "sha256": file_sha256(ckpt)}},
    )


def given_onnx(cfg: StudyConfig, data: FaceDataset, dst: Path) -> RunResult:
    """Your exported ONNX file instead of a model: copied byte for byte to where the study keeps the
    baseline's fp32 export (so 'baseline (fp32)' measures it and every recipe quantises it) and evaluated."""
    from .evaluate.runtime import onnx_predict, session

    t0 = time.perf_counter()
    assert cfg.baseline.onnx is not None and cfg.baseline.onnx_sha256 is not None
    _copy_verified(cfg.baseline.onnx, dst, cfg.baseline.onnx_sha256, "baseline.onnx")
    t1 = time.perf_counter()
    test = data.indices("test")
    y_pred = onnx_predict(session(dst, cfg.evaluation.threads or None), data.images[test], cfg.train.eval_batch_size)
    return RunResult(
        metrics=evaluate_split(data, y_pred).long(), epochs=[], sample_ids=test, y_true=data.labels[test], y_pred=y_pred,
        timings={"load_s": t1 - t0, "eval_s": time.perf_counter() - t1}, device="onnxruntime-cpu", precision="fp32",
        selection="given", artefact=str(dst),
        details={"baseline": {"source": "onnx", "file": str(cfg.baseline.onnx), "sha256": cfg.baseline.onnx_sha256}},
    )


def _copy_verified(src: Path, dst: Path, sha256: str, field: str) -> None:
    """Copy ``src`` to ``dst``; refuse when its content is no longer what the config was loaded with."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
        found = file_sha256(tmp)
        if found != sha256:
            raise OwnModelError(f"{field}: '{src}' changed since the config was loaded (SHA-256 {sha256} -> {found}); its runs "
                                "would mix two versions of the file")
