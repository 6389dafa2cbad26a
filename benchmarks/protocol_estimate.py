"""How long a study's training takes on this machine, before running it: the model's training step is
timed here (batches of the config's batch size, at its input shape, in the precision training would
use, on its device), and multiplied by the epochs the plan trains (each baseline's epochs, and each
fine-tuned model's epochs once: recipes sharing training steps share it). Run it on a GPU node to
estimate a cluster: divide by the runs that execute at once.

Usage: python benchmarks/protocol_estimate.py CONFIG [--train-images N] [--workers 1,4,16] [--batches 20]
(--train-images: the training split's size; default: the RAF-DB protocol's 12,271.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.config import load_config  # noqa: E402
from faircompress.data.registry import declared_shape  # noqa: E402
from faircompress.plan import RunKind, plan  # noqa: E402
from faircompress.train import autocast, resolve_device, resolve_precision  # noqa: E402


def planned_epochs(cfg) -> tuple[int, int, int]:
    """(baseline epochs, fine-tuning epochs, variants) of the plan; a shared fine-tuned model counts once."""
    runs = plan(cfg)
    base = sum(cfg.train.epochs for r in runs if r.kind is RunKind.BASELINE)
    made: dict[str, int] = {}
    for r in runs:
        if r.kind is RunKind.VARIANT and r.recipe is not None and r.recipe.train_steps:
            made[r.prefix_id] = sum(int(getattr(s.params, "epochs", 0) or 0) for s in r.recipe.train_steps)
    return base, sum(made.values()), sum(r.kind is RunKind.VARIANT for r in runs)


def step_rate(cfg, batches: int) -> tuple[float, str, str]:
    """Images per second of the model's training step (forward, backward, Adam) on this machine."""
    shape = declared_shape(cfg.dataset.name, cfg.dataset.params)
    if shape is None:
        raise SystemExit(f"{cfg.dataset.name}: its input shape is known only once loaded; use a config whose dataset fixes it")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model = cfg.model.build(shape).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, foreach=True)
    x = torch.rand(cfg.train.batch_size, shape.channels, shape.size, shape.size, device=device) * 255
    y = torch.randint(0, shape.num_classes, (cfg.train.batch_size,), device=device)

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * cfg.train.batch_size / (time.perf_counter() - t0), str(device), precision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--train-images", type=int, default=12271)
    ap.add_argument("--workers", default="1,4,16")
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    cfg = load_config(args.config)
    base, tune, variants = planned_epochs(cfg)
    rate, device, precision = step_rate(cfg, args.batches)
    epoch_s = args.train_images / rate
    total = (base + tune) * epoch_s
    print(f"{cfg.name}: {len(cfg.seeds)} baseline(s) x {cfg.train.epochs} epochs, {variants} variants sharing {tune} fine-tuning "
          f"epochs; {args.train_images:,} training images")
    print(f"training step on {device} ({precision}, {torch.get_num_threads()} threads): {rate:.1f} img/s -> "
          f"{epoch_s:.0f} s per epoch (training pass; the selection pass and evaluation come on top)")
    print(f"training in all: {base + tune} epochs = {total / 3600:.1f} h on one such worker")
    for w in (int(n) for n in args.workers.split(",")):
        crit = cfg.train.epochs * epoch_s  # a seed's baseline comes before its variants
        print(f"  {w:>3} workers: >= {max(total / w, crit + (total - base * epoch_s) / w) / 3600:.1f} h "
              "(the baselines' share cannot overlap their own variants)")


if __name__ == "__main__":
    main()
