"""A baseline run: train one model (or reuse the checkpoint of an interrupted run) and evaluate it
in PyTorch on the test split."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from .config import StudyConfig
from .data.dataset import FaceDataset
from .evaluate.metrics import evaluate_split, metric_rows
from .models import build_for
from .plan import Hooks, PlannedRun
from .store import RunResult
from .train import FitResult, fit, fit_to_training, load_checkpoint, predict, resolve_device, save_checkpoint


def train_baseline(cfg: StudyConfig, run: PlannedRun, data: FaceDataset, art: Path, hooks: Hooks) -> RunResult:
    t0 = time.perf_counter()
    torch.manual_seed(run.seed)  # the seed fixes the initial weights too
    model = build_for(cfg.model.name, cfg.model.params, data)
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
    device = resolve_device(cfg.train.device)
    test = data.indices("test")
    y_pred = predict(model.to(device), data.images[test], cfg.train.eval_batch_size, device)
    metrics = evaluate_split(data, y_pred).long()
    metrics = pd.concat([metrics, metric_rows({"best_epoch": fitres.best_epoch, "best_sel_acc": fitres.best_sel_acc})], ignore_index=True)
    return RunResult(
        metrics=metrics, epochs=[vars(h) for h in fitres.history], sample_ids=test, y_true=data.labels[test], y_pred=y_pred,
        timings={"train_s": fitres.seconds, "setup_s": t1 - t0 - fitres.seconds, "eval_s": time.perf_counter() - t1},
        device=str(device), precision=fitres.precision, selection=cfg.train.selection, artefact=str(ckpt),
    )

