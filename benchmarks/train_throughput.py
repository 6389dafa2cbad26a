"""Training throughput of the real pipeline against the model's raw forward+backward rate.

raw:      Adam steps on one pre-loaded float batch (no indexing, casting or augmentation);
pipeline: `faircompress.train.fit` on the CK+-sized synthetic set (in-memory uint8 -> index ->
          float -> flip + rotation -> step), training pass only, and whole epochs (with selection eval).
matmul:   the machine's own limit in each precision: the best rate of square matmuls (1024, 2048 and
          4096 wide) on the same threads; the raw step's FLOP rate (FLOPs counted by
          torch.utils.flop_counter on one step) is printed as a share of it.
Targets (issue 23): the pipeline keeps >= 90 % of the raw rate; the raw step >= 80 % of the matmul
limit. Both precisions; ratios are measured in one run.
--profile: also where a raw step's time goes (torch.profiler, the top operators by own time).
Usage: python benchmarks/train_throughput.py [--epochs 3] [--device auto] [--profile]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.config import TrainConfig  # noqa: E402
from faircompress.data.synthetic import SyntheticParams, generate  # noqa: E402
from faircompress.models import build_model  # noqa: E402
from faircompress.train import autocast, cpu_supports_bf16, fit, keep_freed_memory, resolve_device  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--device", default="auto")
ap.add_argument("--profile", action="store_true")
args = ap.parse_args()
device = resolve_device(args.device)
keep_freed_memory()  # as fit does: the raw steps run with the same allocator settings as the pipeline
ds = generate(SyntheticParams())
n_train = len(ds.indices("train"))


def model():
    torch.manual_seed(0)
    return build_model("paper_cnn", in_channels=1, num_classes=ds.num_classes, input_size=48).to(device).to(memory_format=torch.channels_last)


def raw_step(precision: str):
    """One Adam step of a fresh model on a fixed batch, as fit takes it (foreach Adam)."""
    m = model().train()
    opt = torch.optim.Adam(m.parameters(), lr=5e-4, foreach=True)
    x = torch.from_numpy(ds.images[:32]).float().to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(ds.labels[:32]).to(device)

    def step():
        with autocast(device, precision):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def profile_step(precision: str, steps: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile

    step = raw_step(precision)
    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"\nwhere a raw {precision} step's time goes ({total / steps / 1e3:.1f} ms a step under the profiler):")
    for e in rows[:12]:
        print(f"  {e.key:<42} {e.self_cpu_time_total / steps / 1e3:7.2f} ms  {e.self_cpu_time_total / total:6.1%}")


def raw_rate(precision: str, steps: int) -> float:
    step = raw_step(precision)
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


def step_flops_per_image() -> float:
    """Forward and backward FLOPs of one training step, per image (convolutions and matmuls)."""
    m = model().train()
    x = torch.from_numpy(ds.images[:32]).float().to(device).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(m(x), torch.from_numpy(ds.labels[:32]).to(device)).backward()
    return counter.get_total_flops() / 32


def matmul_rate(precision: str, seconds: float = 1.5) -> float:
    """The best FLOP rate of square matmuls in ``precision`` on this device and these threads."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, k = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            a @ b
            k += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t))
    return best


precisions = ["fp32"] + (["bf16"] if device.type == "cuda" or cpu_supports_bf16() else [])
print(f"device {device}, torch threads {torch.get_num_threads()}, train images {n_train}, batch 32, epochs {args.epochs}")
flops = step_flops_per_image()
print(f"one training step: {flops / 1e9:.2f} GFLOP per image (forward and backward, torch.utils.flop_counter)")
print(f"{'precision':>9} {'raw img/s':>10} {'pipeline img/s':>15} {'ratio':>6} {'epoch img/s':>12} {'ratio':>6} "
      f"{'raw GFLOP/s':>12} {'matmul GFLOP/s':>15} {'share':>6}")
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
    limit = matmul_rate(prec)
    print(f"{prec:>9} {raw:>10.1f} {pipe:>15.1f} {pipe / raw:>6.1%} {whole:>12.1f} {whole / raw:>6.1%} "
          f"{raw * flops / 1e9:>12.0f} {limit / 1e9:>15.0f} {raw * flops / limit:>6.1%}"
          f"   (raw before/after: {raw_before:.1f}/{raw_after:.1f})")
    if args.profile:
        profile_step(prec)
