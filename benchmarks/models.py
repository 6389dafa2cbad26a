"""What each model costs: parameters, the zipped size of its fp32 ONNX file (the paper's size measure),
and the raw training rate (Adam forward+backward steps on one pre-loaded batch of 32, channels_last,
fp32, as `fit` trains) on this machine.

Rows: the paper's CNN, ResNet-18 and the PCA+MLP on the CK+-shaped synthetic set (48x48 gray, 8
classes), ResNet-18 there with the 7x7 stride-2 stem that pretrained weights bring, ResNet-18 and the
PCA+MLP at the SFEW paper's 224x224 RGB, and the PCA+MLP on a features table's 10 features. Seconds
per epoch: the default synthetic benchmark's training split (its CK+ shape) at that rate, the
pass `fit` makes each epoch (evaluation of the selection split not included).
Pixels are random: the rate does not depend on them.
Usage: python benchmarks/models.py [--steps 5] [--warmup 2] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.compress.export import export_onnx  # noqa: E402
from faircompress.evaluate.size import zipped_size  # noqa: E402
from faircompress.models import build_model  # noqa: E402

CLASSES, BATCH = 8, 32
ROWS = [  # label, model, channels, side, model params
    ("paper_cnn", "paper_cnn", 1, 48, {}),
    ("resnet18 (3x3 stem, from scratch)", "resnet18", 1, 48, {}),
    ("resnet18 (7x7 stem, as pretrained)", "resnet18", 1, 48, {"small_input_stem": False}),
    ("resnet18", "resnet18", 3, 224, {}),
    ("pca_mlp (LPQ+PHOG from the image)", "pca_mlp", 1, 48, {}),
    ("pca_mlp (LPQ+PHOG from the image)", "pca_mlp", 3, 224, {}),
    ("pca_mlp (a features table's 10)", "pca_mlp", 10, 1, {"input": "features"}),
]


def train_rate(model: torch.nn.Module, channels: int, side: int, steps: int, warmup: int) -> float:
    """Images per second of Adam steps on one batch of BATCH raw-pixel images."""
    model = model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = (torch.rand(BATCH, channels, side, side) * 255).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t)


def measure(name: str, channels: int, side: int, params: dict, steps: int, warmup: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=CLASSES, input_size=side, **params)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    path = export_onnx(model, tmp / f"{name}-{side}.onnx", (channels, side, side))
    return {"parameters": trainable, "zipped_mb": zipped_size(path) / 1e6, "ips": train_rate(model, channels, side, steps, warmup)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed Adam steps per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # other jobs on the machine slow every rate
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs (load {load:.1f}), batch {BATCH}, "
          f"fp32, {args.steps} timed steps after {args.warmup} warm-up")
    n_train = train_images()
    print(f"{'model':<36} {'input':>10} {'parameters':>12} {'zipped fp32 ONNX':>17} {'train img/s':>12} {f's/epoch ({n_train})':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, channels, side, params in ROWS:
            r = measure(name, channels, side, params, args.steps, args.warmup, Path(tmp))
            print(f"{label:<36} {f'{side}x{side}x{channels}':>10} {r['parameters']:>12,} {r['zipped_mb']:>14.3f} MB {r['ips']:>12.1f} "
                  f"{n_train / r['ips']:>14.1f}", flush=True)


def train_images() -> int:
    """The training split of the default synthetic benchmark (the CK+ shape)."""
    from faircompress.data.synthetic import SyntheticParams, generate

    return int((generate(SyntheticParams()).split == 0).sum())


if __name__ == "__main__":
    main()
