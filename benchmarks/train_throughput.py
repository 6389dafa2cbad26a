"""Training throughput of the real pipeline against the model's raw forward+backward rate.

raw:      Adam steps on one pre-loaded float batch (no indexing, casting or augmentation);
pipeline: `faircompress.train.fit` on the CK+-sized synthetic set (in-memory uint8 -> index ->
          float -> flip + rotation -> step), training pass only, and whole epochs (with selection eval).
Target: the pipeline keeps >= 85 % of the raw rate. Both precisions; ratios are measured in one run.
Usage: python benchmarks/train_throughput.py [--epochs 3] [--device auto]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.config import TrainConfig  # noqa: E402
from faircompress.data.synthetic import SyntheticParams, generate  # noqa: E402
from faircompress.models import build_model  # noqa: E402
from faircompress.train import autocast, cpu_supports_bf16, fit, resolve_device  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--device", default="auto")
args = ap.parse_args()
device = resolve_device(args.device)
ds = generate(SyntheticParams())
n_train = len(ds.indices("train"))


def model():
    torch.manual_seed(0)
    return build_model("paper_cnn", in_channels=1, num_classes=ds.num_classes, input_size=48).to(device).to(memory_format=torch.channels_last)


def raw_rate(precision: str, steps: int) -> float:
    m = model().train()
    opt = torch.optim.Adam(m.parameters(), lr=5e-4)
    x = torch.from_numpy(ds.images[:32]).float().to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(ds.labels[:32]).to(device)

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * 32 / (time.perf_counter() - t)


precisions = ["fp32"] + (["bf16"] if device.type == "cuda" or cpu_supports_bf16() else [])
print(f"device {device}, torch threads {torch.get_num_threads()}, train images {n_train}, batch 32, epochs {args.epochs}")
print(f"{'precision':>9} {'raw img/s':>10} {'pipeline img/s':>15} {'ratio':>6} {'epoch img/s':>12} {'ratio':>6}")
for prec in precisions:
    raw_before = raw_rate(prec, steps=n_train // 32)
    cfg = TrainConfig(epochs=args.epochs, precision=prec, device=str(device))
    res = fit(model(), ds, cfg, seed=0)
    raw_after = raw_rate(prec, steps=n_train // 32)
    raw = (raw_before + raw_after) / 2  # bracket the pipeline run: drift on a shared machine shows as a gap
    train_s = sum(h.train_seconds for h in res.history[1:])  # epoch 1 holds one-off warm-up
    epoch_s = sum(h.seconds for h in res.history[1:])
    pipe = n_train * (len(res.history) - 1) / train_s
    whole = n_train * (len(res.history) - 1) / epoch_s
    print(f"{prec:>9} {raw:>10.1f} {pipe:>15.1f} {pipe / raw:>6.1%} {whole:>12.1f} {whole / raw:>6.1%}"
          f"   (raw before/after: {raw_before:.1f}/{raw_after:.1f})")
