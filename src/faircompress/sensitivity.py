"""Layer-wise sensitivity (`faircompress sensitivity`): how much accuracy, and each attribute's gap,
one layer's compression costs when it is the only layer compressed.

For the study's first baseline (its first seed's; trained first, with the study's other baselines and
their fp32 exports, when the study has none yet) and every prunable layer (the conv and dense kernels
magnitude pruning acts on, `pruning.prunable`), a fresh copy of the baseline gets that layer alone
compressed, with no fine-tuning, and is evaluated in PyTorch on one split (the validation split by
default): magnitude pruning of that kernel at each level (its ``round(level * n)`` smallest
magnitudes zeroed, as `prune` does at step 0), and int8: the kernel rounded as `int8-weights` stores
it (symmetric codes -127..127, scale max|w|/127 per output channel for convolutions, per tensor for
dense layers; kernels under 1,024 elements are left float by int8-weights and so are not scanned).
Against the unmodified baseline on the same split it records the change of accuracy and of each
attribute's gap (max - min group accuracy over the groups with at least `fairness.MIN_GROUP` images of
the split, as the report's gaps; attributes with fewer than two such groups are left out).

Results go to the study's store (one transaction per scan, replacing an earlier scan of the same
baseline and split), to ``tables/sensitivity.csv`` and to figures (`report/sensitivity.py`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .compress.pruning import magnitude_masks, prunable
from .compress.qat import fake_quant_int8
from .config import StudyConfig, dump_config
from .data.dataset import FaceDataset
from .evaluate import fairness as F
from .evaluate.size import KERNEL_MIN_ELEMENTS
from .plan import Hooks, PlannedRun

DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
INT8_LEVEL = 8.0  # the level an int8 row is stored at (bits)
SPLITS = ("val", "train", "test")

Progress = Callable[[int, int, str], None]  # (done, total, what is being evaluated)


class SensitivityError(Exception):
    """A scan that cannot be made; the message says why."""


@dataclass
class Scan:
    baseline_id: str
    split: str
    rows: pd.DataFrame             # `ResultStore.SENSITIVITY_COLUMNS`
    images: int
    seconds: float
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- one layer at a time
def compress_layer(model: nn.Module, layer: str, technique: str, level: float) -> None:
    """Compress one kernel of ``model`` in place: 'prune' zeroes its ``round(level * n)`` smallest
    magnitudes; 'int8' rounds it as int8-weights stores it (per output channel for convolutions, per
    tensor for dense layers)."""
    modules = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    w = modules[layer].weight
    with torch.no_grad():
        if technique == "prune":
            w.mul_(magnitude_masks({layer: w}, level)[layer])
        elif technique == "int8":
            w.copy_(fake_quant_int8(w, None if isinstance(modules[layer], nn.Linear) else 0))
        else:
            raise ValueError(f"unknown technique {technique!r} (prune or int8)")


def split_measures(data: FaceDataset, split: str, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy (key '') and each attribute's gap (max - min accuracy over its groups with at least
    MIN_GROUP images of the split; attributes with fewer than two such groups left out)."""
    idx = data.indices(split)
    correct = y_pred == data.labels[idx]
    out = {"": float(correct.mean())}
    for attr, codes in data.attributes.items():
        hits, counts = F.group_accuracy(correct, codes[idx], len(data.attribute_groups[attr]))
        ok = counts >= F.MIN_GROUP
        if ok.sum() >= 2:
            out[attr] = float(F.gap(hits[0][ok] / counts[ok], counts[ok]))
    return out


def _predict(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    from .train import predict

    return predict(model, images, batch_size, device)


def jobs_for(model: nn.Module, levels: Sequence[float]) -> list[tuple[str, int, str, float]]:
    """(layer, position, technique, level) of every evaluation: each prunable layer at each level,
    then int8 for each one int8-weights quantises (1,024 elements or more)."""
    weights = prunable(model)
    jobs = [(name, i, "prune", float(lvl)) for i, name in enumerate(weights) for lvl in levels]
    return jobs + [(name, i, "int8", INT8_LEVEL) for i, (name, w) in enumerate(weights.items()) if w.numel() >= KERNEL_MIN_ELEMENTS]


def scan_model(model: nn.Module, data: FaceDataset, split: str, levels: Sequence[float], device: torch.device,
               batch_size: int = 256, progress: Progress | None = None) -> pd.DataFrame:
    """Every (layer, technique, level) compressed alone in a fresh copy of ``model`` and evaluated on
    ``split``; rows as `ResultStore.SENSITIVITY_COLUMNS`."""
    model = model.to(device).eval()
    images = data.images[data.indices(split)]
    reference = split_measures(data, split, _predict(model, images, batch_size, device))
    sizes = {k: w.numel() for k, w in prunable(model).items()}
    jobs = jobs_for(model, levels)
    rows = []
    for done, (layer, position, technique, level) in enumerate(jobs):
        if progress is not None:
            progress(done, len(jobs), f"{layer} {technique} {level:g}")
        twin = copy.deepcopy(model)
        compress_layer(twin, layer, technique, level)
        zeros = float((prunable(twin)[layer] == 0).float().mean())
        measured = split_measures(data, split, _predict(twin, images, batch_size, device))
        for attribute, ref in reference.items():
            value = measured.get(attribute, float("nan"))
            rows.append({"layer": layer, "position": position, "technique": technique, "level": level, "attribute": attribute,
                         "value": value, "reference": ref, "delta": value - ref, "sparsity": zeros, "elements": sizes[layer]})
        del twin
    if progress is not None:
        progress(len(jobs), len(jobs), "done")
    from .store import ResultStore

    return pd.DataFrame(rows, columns=list(ResultStore.SENSITIVITY_COLUMNS))


# ----------------------------------------------------------------------------- a study's scan
def parse_levels(text: str) -> tuple[float, ...]:
    """'0.1,0.2,...' as sorted unique levels in [0, 1); `SensitivityError` otherwise."""
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SensitivityError(f"--levels {text!r}: give comma-separated sparsities, e.g. 0.1,0.2,0.5") from None
    if not levels or any(not 0 <= x < 1 for x in levels):
        raise SensitivityError(f"--levels {text!r}: each level is a sparsity at least 0 and below 1")
    return tuple(levels)


def run_sensitivity(cfg: StudyConfig, levels: Sequence[float] = DEFAULT_LEVELS, split: str = "val", hooks: Hooks | None = None,
                    progress: Progress | None = None) -> Scan:
    """Scan the study's first baseline (training the study's baselines first when it has none) and
    store the scan; see the module docstring."""
    from .binding import binding_for, check_binding, test_rows
    from .data.identity import file_sha256
    from .data.registry import default_cache_dir, identify, load_identified
    from .store import ResultStore
    from .study import study_lock
    from .train import load_checkpoint, require_device, resolve_device

    hooks = hooks or Hooks()
    _check_scannable(cfg, split)
    require_device(cfg.train.device)
    out = Path(cfg.output_dir)
    base = _trained_first_baseline(cfg, hooks)
    cache = default_cache_dir() if cfg.dataset.cache else None
    ident = identify(cfg.dataset.name, cfg.dataset.params, memo=cache / "digests.json" if cache else None)
    data = load_identified(ident, cache)
    if len(data.indices(split)) == 0:
        raise SensitivityError(f"the {split} split of {cfg.dataset.name} is empty: scan another split (--split)")
    notes = []
    if split == "val" and cfg.train.selection == "test":
        notes.append("train.selection is test: the baseline was trained on train+val, so the validation split is training data")
    if split == "test":
        notes.append("scanned on the test split: sparsities chosen from it would leak test data (from_sensitivity reads the val scan only)")
    store = ResultStore(out)
    try:
        with study_lock(out):
            check_binding(out, store, binding_for(cfg, ident), ident, test_rows(data))
            ckpt = out / "runs" / base.run_id / "model.safetensors"
            recorded = store.conn.execute("SELECT artefact_sha256 FROM runs WHERE run_id=?", (base.run_id,)).fetchone()
            sha = file_sha256(ckpt) if ckpt.exists() else None
            if sha is None or (recorded and recorded[0] and recorded[0] != sha):
                raise SensitivityError(f"{ckpt}: the first baseline's checkpoint is missing or altered since its run; "
                                       "`faircompress run` rebuilds it")
            device = resolve_device(cfg.train.device)
            model = cfg.model.build(data.input_shape)
            load_checkpoint(model, ckpt)
            t = time.perf_counter()
            rows = scan_model(model, data, split, levels, device, cfg.train.eval_batch_size, progress)
            seconds = time.perf_counter() - t
            store.record_sensitivity(base.run_id, split, {"checkpoint_sha256": sha, "dataset_key": ident.key,
                                                          "images": len(data.indices(split)), "levels": list(levels),
                                                          "device": str(device), "seconds": seconds}, rows)
    finally:
        store.close()
    return Scan(base.run_id, split, rows, len(data.indices(split)), seconds, notes)


def _check_scannable(cfg: StudyConfig, split: str) -> None:
    if cfg.models is not None:
        raise SensitivityError(f"{cfg.name}: a models grid is scanned one study at a time (StudyConfig.studies())")
    if split not in SPLITS:
        raise SensitivityError(f"--split {split!r}: one of {', '.join(SPLITS)}")
    if cfg.baseline.source == "onnx":
        raise SensitivityError("baseline.onnx gives only an exported file: a layer-wise scan compresses the PyTorch model's "
                               "layers one at a time, so it needs a trained model or baseline.weights")


def _trained_first_baseline(cfg: StudyConfig, hooks: Hooks) -> PlannedRun:
    """The study's first baseline, trained first (the study's baselines, no recipes) when it is not finished."""
    from .atomic import write_text_atomic
    from .compress.layerwise import first_baseline
    from .study import run_study

    out, base = Path(cfg.output_dir), first_baseline(cfg)
    if _status(out, base.run_id) != "finished":
        hooks.note(f"the study has no finished first baseline (seed {base.seed}): running its baselines first (no recipes)")
        run_study(cfg.model_copy(update={"recipes": []}), hooks)
        write_text_atomic(out / "config.yaml", dump_config(cfg))  # the study's config, not the baselines-only one
        if _status(out, base.run_id) != "finished":
            raise SensitivityError(f"the study's first baseline (seed {base.seed}, run {base.run_id}) did not finish: "
                                   f"{_error(out, base.run_id)}")
    return base


def _status(out: Path, run_id: str) -> str | None:
    from .store import ResultStore

    if not (out / ResultStore.FILENAME).is_file():
        return None
    store = ResultStore(out)
    try:
        return store.status(run_id)
    finally:
        store.close()


def _error(out: Path, run_id: str) -> str:
    from .store import ResultStore

    store = ResultStore(out)
    try:
        row = store.conn.execute("SELECT error FROM runs WHERE run_id=?", (run_id,)).fetchone()
    finally:
        store.close()
    return str(row[0]).splitlines()[0] if row and row[0] else "no error recorded"
