"""Training with the paper's recipe: Adam, ReduceLROnPlateau, best-selection-accuracy weights kept.

The whole dataset sits on the training device as uint8 (a features table's rows as float32);
batches are indexed, augmented (flip and rotation, never of features) and cast there, so no
per-image Python runs in the loop. A resumable training state is written after every epoch, so a
killed run continues from its last finished epoch.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path
from .config import TrainConfig
from .data.dataset import FaceDataset
from .models.registry import FitsToData

if TYPE_CHECKING:
    from .mitigate import Objective


# ----------------------------------------------------------------------------- device and precision
class DeviceError(Exception):
    """The config asks for a device this machine lacks (checked when a study starts, not when a
    config is validated: configs stay portable)."""


def require_device(name: str) -> None:
    """Stop before any work when ``train.device`` names a device this machine does not have."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device is 'cuda' but this machine has no CUDA device (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")


def resolve_device(name: str = "auto") -> torch.device:
    require_device(name)
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


def precision_note(precision: str, device: torch.device) -> str:
    """The training precision a config's ``precision`` resolves to on ``device``, and why."""
    chosen = resolve_precision(precision, device)
    if precision != "auto":
        why = "as train.precision sets it"
    elif device.type == "cuda":
        why = "precision auto: a CUDA device"
    elif chosen == "bf16":
        why = "precision auto: this CPU computes bf16 natively (AMX or AVX-512 BF16)"
    else:
        why = "precision auto: this CPU has no native bf16 (on AVX2 it is emulated, slower than fp32)"
    return f"training precision: {chosen} on {device.type} ({why})"


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB in the heap rather than give them back to the
    kernel. By default a block over 128 KiB is mmap'ed and unmapped when freed, so every training
    step's activations and gradients (tensors of 1-10 MB) may be faulted in afresh. Measured on the
    paper CNN's bf16 steps on 2 cores: a clustered step (which allocates weight-sized index arrays
    every time) 13 % faster; a plain step 3-7 % faster in isolated raw steps, within the noise in
    whole epochs. Results are unchanged: only where memory comes from moves. Returns whether it
    applied (glibc only)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


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


def augmentation_conflict(cfg: TrainConfig, data: FaceDataset) -> str | None:
    """Why ``cfg`` cannot train on ``data``: flips and rotations are for pictures, and a features
    table's rows (float32 (N, F, 1, 1)) are not pictures. None when there is no conflict."""
    if not data.is_features or not (cfg.augment_flip or cfg.augment_rotation_deg > 0):
        return None
    given = []
    if cfg.augment_flip:
        given.append("train.augment_flip is true")
    if cfg.augment_rotation_deg > 0:
        given.append(f"train.augment_rotation_deg is {cfg.augment_rotation_deg:g}")
    return (f"{' and '.join(given)}, but dataset {data.name} holds {data.channels} features per sample, not images: flipping or "
            "rotating them means nothing; set train.augment_flip: false and train.augment_rotation_deg: 0")


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


@dataclass
class Callbacks:
    on_batch: EpochCallback | None = None                 # progress within an epoch
    on_epoch: Callable[[EpochLog], None] | None = None    # after each epoch
    after_step: Callable[[int], None] | None = None       # after each optimiser step (step counts from 1)
    objective: "Objective | None" = None                  # the batch loss instead of cross-entropy (mitigation)


def training_splits(selection: str) -> tuple[tuple[str, ...], str]:
    """(the splits a model trains on, the split that selects its best epoch)."""
    return (("train", "val"), "test") if selection == "test" else (("train",), "val")


def training_rows(data: FaceDataset, selection: str) -> np.ndarray:
    """The dataset rows a model trains on under ``selection`` (train, or train and val when test selects)."""
    return data.indices(*training_splits(selection)[0])


def fit_to_training(model: nn.Module, data: FaceDataset, selection: str) -> bool:
    """Before training: a model with state fitted to data (`FitsToData`, e.g. pca_mlp's PCA) fits it on
    the images it will train on, never the selection split. Returns whether the model has such state."""
    if not isinstance(model, FitsToData):
        return False
    model.fit_to_training(data.images[training_rows(data, selection)])
    return True


@dataclass
class Batches:
    """The training and selection splits, resident on the training device as uint8."""

    x_train: torch.Tensor  # (N, C, H, W) uint8
    y_train: torch.Tensor
    x_sel: torch.Tensor
    y_sel: torch.Tensor

    @classmethod
    def on_device(cls, data: FaceDataset, selection: str, device: torch.device) -> "Batches":
        train_splits, sel_split = training_splits(selection)
        tr, sel = data.indices(*train_splits), data.indices(sel_split)
        if len(tr) < 2:
            raise ValueError(f"{data.name}: the training split has {len(tr)} images")
        if len(sel) == 0:
            raise ValueError(f"{data.name}: selection on '{sel_split}' needs a non-empty {sel_split} split")
        t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return cls(t(data.images[tr]), t(data.labels[tr]), t(data.images[sel]), t(data.labels[sel]))


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
    objective: "Objective | None" = None,
) -> FitResult:
    """Train ``model`` in place and leave it holding the best-selection-accuracy weights.

    ``after_step(step)`` runs after every optimiser step (step counts from 1 within this call);
    compression steps use it, e.g. pruning re-applies its masks there. With ``state_path``, the
    training state is written after every epoch and a run killed mid-way resumes from it. An
    ``objective`` (`mitigate.Objective`) gives the batch loss instead of cross-entropy (its `start`,
    `end_epoch` and `end` run around the epochs); the selection pass still scores cross-entropy and accuracy.
    """
    conflict = augmentation_conflict(cfg, data)
    if conflict:
        raise ValueError(conflict)
    if cfg.batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("train.batch_size is 1, but the model has BatchNorm layers, which cannot train on a batch of one; "
                         "use a batch size of 2 or more")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    keep_freed_memory()
    batches = Batches.on_device(data, cfg.selection, device)
    torch.manual_seed(seed)
    state = TrainState.start(model, cfg, seed, device, precision, len(batches.x_train))
    if state_path is not None and Path(state_path).exists():
        state.resume_from(Path(state_path))
    callbacks = Callbacks(on_batch, on_epoch, after_step, objective)
    if objective is not None:
        objective.start(model)
    t_start, step = time.perf_counter(), 0
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            step, log = _epoch(state, batches, cfg, epoch, step, callbacks)
            if objective is not None:
                objective.end_epoch(model, epoch)
            state.record(log)
            if state_path is not None:
                state.save(state_path)
            if on_epoch:
                on_epoch(log)
    finally:
        if objective is not None:
            objective.end(model)
    res = state.result
    res.seconds = sum(h.seconds for h in res.history) if res.history else time.perf_counter() - t_start
    model.load_state_dict(state.best_weights)
    model.to(memory_format=torch.contiguous_format)
    return res


def _epoch(state: "TrainState", batches: Batches, cfg: TrainConfig, epoch: int, step: int, cb: Callbacks) -> tuple[int, EpochLog]:
    """One training pass and the selection evaluation; the scheduler steps on the selection loss."""
    t0 = time.perf_counter()
    step, train_loss, train_acc = _train_pass(state, batches, cfg, epoch, step, cb)
    if state.device.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t0
    sel_logits = predict_logits(state.model, batches.x_sel, cfg.eval_batch_size, state.device, state.precision)
    sel_loss = F.cross_entropy(sel_logits, batches.y_sel).item()
    sel_acc = (sel_logits.argmax(1) == batches.y_sel).float().mean().item()
    lr = state.opt.param_groups[0]["lr"]
    state.sched.step(sel_loss)
    return step, EpochLog(epoch, train_loss, train_acc, sel_loss, sel_acc, lr, time.perf_counter() - t0, t_train)


def _train_pass(state: "TrainState", b: Batches, cfg: TrainConfig, epoch: int, step: int, cb: Callbacks) -> tuple[int, float, float]:
    """Shuffled, augmented batches through the model; returns the step count, mean loss and accuracy."""
    model, device = state.model, state.device
    model.train()
    n, bs = len(b.x_train), cfg.batch_size
    n_batches = math.ceil(n / bs)
    perm = torch.randperm(n, generator=state.shuffle_gen).to(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for i in range(n_batches):
        idx = perm[i * bs : (i + 1) * bs]
        if len(idx) < 2 and bs > 1:  # a last batch of one is skipped: BatchNorm cannot train on it (batch_size 1: see fit)
            continue
        xb = augment(b.x_train[idx].float(), cfg.augment_flip, cfg.augment_rotation_deg, state.aug_gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
        yb = b.y_train[idx]
        with autocast(device, state.precision):
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb) if cb.objective is None else cb.objective.loss(model, logits.float(), yb, xb, idx)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        state.opt.step()
        step += 1
        if cb.after_step:
            cb.after_step(step)
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(idx)
        if cb.on_batch:
            cb.on_batch(epoch, i + 1, n_batches)
    return step, (loss_sum / seen).item(), correct.item() / seen


def plateau_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Keras's ReduceLROnPlateau on the selection loss (min_delta 1e-4, absolute). Keras reduces when
    the epochs without improvement reach ``patience`` (``wait >= patience``), PyTorch only when they
    exceed it, one epoch later; so PyTorch is given ``patience - 1`` (0 behaves the same in both)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=cfg.plateau_factor, patience=max(cfg.plateau_patience - 1, 0), min_lr=cfg.min_lr,
        threshold=1e-4, threshold_mode="abs")


# ----------------------------------------------------------------------------- resumable state
STATE_FORMAT = 2  # bump when the state file's layout changes


class StaleState(Exception):
    """A training-state file that does not fit this model or this version."""


@dataclass
class TrainState:
    """Everything a resumed `fit` needs, written after every epoch: the model, its best weights so
    far, the optimiser, the scheduler, both random generators and the history."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    shuffle_gen: torch.Generator
    aug_gen: torch.Generator
    result: FitResult
    best_weights: dict[str, torch.Tensor]
    device: torch.device
    precision: str
    epoch: int = 0  # the last finished epoch

    @classmethod
    def start(cls, model: nn.Module, cfg: TrainConfig, seed: int, device: torch.device, precision: str, n_train: int) -> "TrainState":
        model.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)  # one kernel per update, not per tensor; bit-identical
        sched = plateau_scheduler(opt, cfg)
        result = FitResult(best_epoch=0, best_sel_acc=-1.0, device=str(device), precision=precision, selection=cfg.selection,
                           train_images=n_train)
        return cls(model, opt, sched, torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1),
                   result, copy.deepcopy(model.state_dict()), device, precision)

    def record(self, log: EpochLog) -> None:
        """Add an epoch to the history; keep its weights if its selection accuracy is the best yet."""
        self.result.history.append(log)
        self.epoch = log.epoch
        if log.sel_acc > self.result.best_sel_acc:  # Keras ModelCheckpoint(save_best_only, mode='max'): strictly better
            self.result.best_sel_acc, self.result.best_epoch = log.sel_acc, log.epoch
            self.best_weights = copy.deepcopy(self.model.state_dict())

    def save(self, path: str | os.PathLike) -> None:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in self.best_weights.items()})
        opt_sd = self.opt.state_dict()
        for pid, st in opt_sd["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        tensors |= {"rng.shuffle": self.shuffle_gen.get_state(), "rng.aug": self.aug_gen.get_state().cpu(),
                    "rng.torch": torch.get_rng_state()}
        meta = {"format": STATE_FORMAT, "epoch": self.epoch, "param_groups": opt_sd["param_groups"],
                "sched": {k: v for k, v in self.sched.state_dict().items() if k != "_last_lr"} | {"_last_lr": self.sched.get_last_lr()},
                "best_epoch": self.result.best_epoch, "best_sel_acc": self.result.best_sel_acc,
                "history": [vars(h) for h in self.result.history]}
        save_atomic(tensors, path, {"state": json.dumps(meta)})

    def resume_from(self, path: Path) -> None:
        """Continue from a saved state; a stale or torn one is discarded with a warning (training starts afresh)."""
        try:
            meta, tensors = _read_state(path, set(self.model.state_dict()))
        except StaleState as e:  # checked before anything is applied
            warnings.warn(f"{path}: {e}; training from epoch 1", stacklevel=3)
            path.unlink(missing_ok=True)
            return
        self.model.load_state_dict(_prefixed(tensors, "model."))
        self.best_weights = {k: v.to(self.device) for k, v in _prefixed(tensors, "best.").items()}
        opt_state: dict[int, dict] = {}
        for k, v in _prefixed(tensors, "opt.").items():
            pid, name = k.split(".", 1)
            opt_state.setdefault(int(pid), {})[name] = v
        self.opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.sched.load_state_dict(meta["sched"])
        self.shuffle_gen.set_state(tensors["rng.shuffle"])
        self.aug_gen.set_state(tensors["rng.aug"])
        torch.set_rng_state(tensors["rng.torch"])
        self.result.best_epoch, self.result.best_sel_acc = meta["best_epoch"], meta["best_sel_acc"]
        self.result.history = [EpochLog(**h) for h in meta["history"]]
        self.epoch = meta["epoch"]


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _read_state(path: Path, model_keys: set[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
        tensors = load_file(str(path))
    except Exception as e:  # torn or foreign file
        raise StaleState(f"unreadable training state ({type(e).__name__})") from None
    if meta.get("format") != STATE_FORMAT:
        raise StaleState(f"training state of format {meta.get('format')}, expected {STATE_FORMAT}")
    if set(_prefixed(tensors, "model.")) != model_keys:
        raise StaleState("training state of a different model")
    return meta, tensors


def save_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written to a temp name, then renamed into place."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    save_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path, metadata)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load weights into ``model``; returns the checkpoint's metadata."""
    model.load_state_dict(load_file(str(path)))
    return checkpoint_metadata(path)


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """A checkpoint's metadata, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}
