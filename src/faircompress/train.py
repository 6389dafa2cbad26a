"""Training with the paper's recipe: Adam, ReduceLROnPlateau, best-selection-accuracy weights kept.

The whole dataset sits on the training device as uint8; batches are indexed, augmented (flip and
rotation) and cast there, so no per-image Python runs in the loop. A resumable training state is
written after every epoch, so a killed run continues from its last finished epoch.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .config import TrainConfig
from .data.dataset import FaceDataset


# ----------------------------------------------------------------------------- device and precision
def resolve_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA, and on CPUs with native bf16 (accuracy checked: see README)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_supports_bf16() else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ----------------------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, flip: bool, rotation_deg: float, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and rotation of a whole batch on its device. x: (B, C, H, W) float."""
    B = x.shape[0]
    if flip:
        mask = torch.rand(B, device=x.device, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if rotation_deg > 0:
        angle = (torch.rand(B, device=x.device, generator=gen) * 2 - 1) * math.radians(rotation_deg)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1), torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)  # Keras fill 'nearest'
    return x


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, precision: str = "fp32") -> torch.Tensor:
    """Logits (N, K) in float32 for uint8 images (N, C, H, W) held anywhere."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        xb = images[i : i + batch_size].to(device, non_blocking=True).float()
        xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(model(xb).float())
    return torch.cat(out) if out else torch.empty(0)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | None = None) -> np.ndarray:
    """Predicted classes (N,) for uint8 images, in float32."""
    device = device or next(model.parameters()).device
    return predict_logits(model, torch.from_numpy(images), batch_size, device).argmax(1).cpu().numpy()


# ----------------------------------------------------------------------------- training
@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    sel_loss: float
    sel_acc: float
    lr: float
    seconds: float        # whole epoch: training pass and selection evaluation
    train_seconds: float  # training pass only


@dataclass
class FitResult:
    best_epoch: int
    best_sel_acc: float
    history: list[EpochLog] = field(default_factory=list)
    device: str = "cpu"
    precision: str = "fp32"
    selection: str = "val"
    train_images: int = 0
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps({**vars(self), "history": [vars(h) for h in self.history]})

    @classmethod
    def from_json(cls, text: str) -> "FitResult":
        d = json.loads(text)
        return cls(**{**d, "history": [EpochLog(**h) for h in d["history"]]})


EpochCallback = Callable[[int, int, int], None]  # (epoch, batches done, batches total)


def fit(
    model: nn.Module,
    data: FaceDataset,
    cfg: TrainConfig,
    seed: int,
    *,
    state_path: Path | None = None,
    on_batch: EpochCallback | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` in place and leave it holding the best-selection-accuracy weights.

    ``after_step(step)`` runs after every optimiser step (step counts from 1 within this call);
    compression steps use it, e.g. pruning re-applies its masks there.
    """
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    train_splits, sel_split = (("train", "val"), "test") if cfg.selection == "test" else (("train",), "val")
    tr, sel = data.indices(*train_splits), data.indices(sel_split)
    if len(tr) < 2:
        raise ValueError(f"{data.name}: the training split has {len(tr)} images")
    if len(sel) == 0:
        raise ValueError(f"{data.name}: selection on '{sel_split}' needs a non-empty {sel_split} split")
    x_tr = torch.from_numpy(data.images[tr]).to(device)  # uint8 (N, C, H, W), stays on device
    y_tr = torch.from_numpy(data.labels[tr]).to(device)
    x_sel = torch.from_numpy(data.images[sel]).to(device)
    y_sel = torch.from_numpy(data.labels[sel]).to(device)

    torch.manual_seed(seed)
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr, threshold=1e-4, threshold_mode="abs"
    )
    shuffle_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    res = FitResult(best_epoch=0, best_sel_acc=-1.0, device=str(device), precision=precision, selection=cfg.selection, train_images=len(tr))
    best_state = copy.deepcopy(model.state_dict())
    start_epoch = 1
    if state_path is not None and Path(state_path).exists():
        try:
            start_epoch, best_state = _load_state(state_path, model, opt, sched, shuffle_gen, aug_gen, res)
        except StaleState as e:  # checked before anything is applied: training simply starts afresh
            warnings.warn(f"{state_path}: {e}; training from epoch 1", stacklevel=2)
            Path(state_path).unlink(missing_ok=True)

    n, bs = len(tr), cfg.batch_size
    n_batches = math.ceil(n / bs)
    step = 0
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for b in range(n_batches):
            idx = perm[b * bs : (b + 1) * bs]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            xb = augment(x_tr[idx].float(), cfg.augment_flip, cfg.augment_rotation_deg, aug_gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_tr[idx]
            with autocast(device, precision):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if after_step:
                after_step(step)
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
            if on_batch:
                on_batch(epoch, b + 1, n_batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_train = time.perf_counter() - t0
        sel_logits = predict_logits(model, x_sel, cfg.eval_batch_size, device, precision)
        sel_loss = F.cross_entropy(sel_logits, y_sel).item()
        sel_acc = (sel_logits.argmax(1) == y_sel).float().mean().item()
        lr = opt.param_groups[0]["lr"]
        sched.step(sel_loss)
        log = EpochLog(epoch, (loss_sum / seen).item(), correct.item() / seen, sel_loss, sel_acc, lr, time.perf_counter() - t0, t_train)
        res.history.append(log)
        if sel_acc > res.best_sel_acc:  # Keras ModelCheckpoint(save_best_only, mode='max'): strictly better
            res.best_sel_acc, res.best_epoch = sel_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        if state_path is not None:
            _save_state(state_path, epoch, model, opt, sched, shuffle_gen, aug_gen, res, best_state)
        if on_epoch:
            on_epoch(log)
    res.seconds = sum(h.seconds for h in res.history) if res.history else time.perf_counter() - t_start
    model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    return res


# ----------------------------------------------------------------------------- resumable state
STATE_FORMAT = 2  # bump when the state file's layout changes


class StaleState(Exception):
    """A training-state file that does not fit this model or this version."""

def _save_state(path, epoch, model, opt, sched, shuffle_gen, aug_gen, res: FitResult, best_state) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()})
    opt_sd = opt.state_dict()
    for pid, st in opt_sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.shuffle"] = shuffle_gen.get_state()
    tensors["rng.aug"] = aug_gen.get_state().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "param_groups": opt_sd["param_groups"],
        "sched": {k: v for k, v in sched.state_dict().items() if k != "_last_lr"} | {"_last_lr": sched.get_last_lr()},
        "best_epoch": res.best_epoch,
        "best_sel_acc": res.best_sel_acc,
        "history": [vars(h) for h in res.history],
    }
    save_atomic(tensors, path, {"state": json.dumps(meta)})


def _load_state(path, model, opt, sched, shuffle_gen, aug_gen, res: FitResult):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
        tensors = load_file(str(path))
    except Exception as e:  # torn or foreign file
        raise StaleState(f"unreadable training state ({type(e).__name__})") from None
    if meta.get("format") != STATE_FORMAT:
        raise StaleState(f"training state of format {meta.get('format')}, expected {STATE_FORMAT}")
    if {k[6:] for k in tensors if k.startswith("model.")} != set(model.state_dict()):
        raise StaleState("training state of a different model")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best_state = {k[5:]: v.to(next(model.parameters()).device) for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["sched"])
    shuffle_gen.set_state(tensors["rng.shuffle"])
    aug_gen.set_state(tensors["rng.aug"])
    torch.set_rng_state(tensors["rng.torch"])
    res.best_epoch, res.best_sel_acc = meta["best_epoch"], meta["best_sel_acc"]
    res.history = [EpochLog(**h) for h in meta["history"]]
    return meta["epoch"] + 1, best_state


def save_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written to a temp name, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    save_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path, metadata)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load weights into ``model``; returns the checkpoint's metadata."""
    from safetensors import safe_open

    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
