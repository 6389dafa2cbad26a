"""A slice of the default study (the paper CNN on the default synthetic set; baseline, int8, prune 50 %
with and without int8, 16 clusters; 3 repeats) run three ways on this machine, one after the other:
the local executor one run at a time (PyTorch's default threads), the local executor with single-threaded
worker processes side by side, and Ray with the same single-threaded tasks (baselines, alone in all
three, train on every core). Prints wall times, Ray's
overhead against the local workers (same threads, same runs: same predictions, checked), and the
workers' speed-up over one at a time.

Usage: python benchmarks/ray_overhead.py [--epochs 5] [--workers 2] [--out runs/bench/ray-overhead]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import PrintHooks  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.store import ResultStore  # noqa: E402
from faircompress.study import run_study  # noqa: E402

SLICE = [
    [{"quantize": {"mode": "int8-weights"}}],
    [{"prune": {"sparsity": 0.5, "epochs": 2}}],
    [{"prune": {"sparsity": 0.5, "epochs": 2}}, {"quantize": {"mode": "int8-weights"}}],
    [{"cluster": {"clusters": 16, "epochs": 3}}],
]


def timed(out: Path, epochs: int, execution: dict) -> tuple[float, list]:
    if out.exists():
        shutil.rmtree(out)
    cfg = load_config(None, {"output_dir": str(out), "train.epochs": epochs, "recipes": SLICE,
                             **{f"execution.{k}": v for k, v in execution.items()}})
    t0 = time.perf_counter()
    report = run_study(cfg, PrintHooks())
    wall = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"{out.name}: runs failed: {report.failed}")
    store = ResultStore.open_existing(out)
    try:
        preds = store.conn.execute("SELECT run_id, sample, y_pred FROM predictions ORDER BY run_id, sample").fetchall()
    finally:
        store.close()
    return wall, preds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5, help="baseline epochs (the default study trains 20)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "runs" / "bench" / "ray-overhead"))
    args = ap.parse_args()
    out, w = Path(args.out), args.workers
    cores = torch.get_num_threads()
    modes = {f"local, one at a time ({cores} threads)": {},
             f"local, {w} worker processes x 1 thread": {"workers": w, "threads": 1, "baseline_threads": cores},
             f"ray, {w} tasks x 1 CPU (1 thread)": {"executor": "ray", "resources": {"cpus": 1}, "threads": 1, "baseline_threads": cores}}
    results = {name: timed(out / f"mode-{i}", args.epochs, ex) for i, (name, ex) in enumerate(modes.items())}
    one, local, ray = (results[n] for n in modes)
    print(f"\n== {len({r for r, _, _ in one[1]})} runs, baseline {args.epochs} epochs, {os.cpu_count()} cores ==")
    for name, (wall, _) in results.items():
        print(f"  {name:<44} {wall:7.1f} s")
    print(f"Ray's overhead against the local workers: {ray[0] / local[0] - 1:+.1%} of wall time (target <= 10 %)")
    print(f"local workers against one at a time: {one[0] / local[0]:.2f}x faster")
    print(f"same predictions, Ray and local workers: {ray[1] == local[1]}; one at a time (other threads) too: {one[1] == local[1]}")


if __name__ == "__main__":
    main()
