"""What removing whole channels buys: prune_channels (l1_channels) at 0/25/50/75 % channel sparsity,
each exported to its fp32 ONNX file and timed in ONNX Runtime (CPU) in the same run as the unpruned file.

Per file: parameters and zipped size (the study's measures, `onnx_size_report`), batch-1 latency
(median of --runs single-image runs, after warm-up) and throughput at batch --batch (median of
--batch-runs timed batches), and both as ratios to the unpruned file: a latency speed-up of 2.0 means
twice as fast. The files are timed in interleaved rounds (every file once per round), so a change in
the machine's load during the run slows them alike. Weights are the freshly built model's (L1 norms
of an initialised model): the shapes, and so the cost, are what the sparsity gives whatever was trained.
Usage: python benchmarks/structured.py [--model paper_cnn] [--side 48] [--runs 200] [--batch 64]
       [--batch-runs 20] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.compress.export import export_onnx  # noqa: E402
from faircompress.compress.structured import prune_l1_channels  # noqa: E402
from faircompress.evaluate.runtime import session  # noqa: E402
from faircompress.evaluate.size import onnx_size_report  # noqa: E402
from faircompress.models import build_model  # noqa: E402

CLASSES = 8
SPARSITIES = (0.0, 0.25, 0.5, 0.75)
ROUNDS = 10  # interleaved rounds; each times every file runs/ROUNDS times


def export(model_name: str, side: int, sparsity: float, tmp: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=1, num_classes=CLASSES, input_size=side).eval()
    if sparsity:
        prune_l1_channels(model, sparsity, (1, side, side))
    return export_onnx(model, tmp / f"{model_name}-{int(sparsity * 100)}.onnx", (1, side, side))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="paper_cnn")
    ap.add_argument("--side", type=int, default=48)
    ap.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-runs", type=int, default=20, help="timed batches per file")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # other jobs on the machine slow every file alike
    print(f"{args.model} {args.side}x{args.side}x1, {CLASSES} classes; onnxruntime CPU, {args.threads or 'default'} threads, "
          f"{os.cpu_count()} CPUs (load {load:.1f}); batch-1 latency: median of {args.runs} runs, throughput: batch {args.batch}, "
          f"median of {args.batch_runs} batches; {ROUNDS} interleaved rounds")
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 1, args.side, args.side)).astype(np.float32)
    many = rng.integers(0, 256, (args.batch, 1, args.side, args.side)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {s: export(args.model, args.side, s, Path(tmp)) for s in SPARSITIES}
        sizes = {s: onnx_size_report(p) for s, p in paths.items()}
        sessions = {s: session(p, args.threads or None) for s, p in paths.items()}
        lat: dict[float, list[float]] = {s: [] for s in SPARSITIES}
        thr: dict[float, list[float]] = {s: [] for s in SPARSITIES}
        for sess in sessions.values():  # warm-up
            for _ in range(3):
                sess.run(None, {"pixels": one})
            sess.run(None, {"pixels": many})
        for _ in range(ROUNDS):
            for s, sess in sessions.items():
                for _ in range(max(1, args.runs // ROUNDS)):
                    t = time.perf_counter()
                    sess.run(None, {"pixels": one})
                    lat[s].append(time.perf_counter() - t)
                for _ in range(max(1, args.batch_runs // ROUNDS)):
                    t = time.perf_counter()
                    sess.run(None, {"pixels": many})
                    thr[s].append(time.perf_counter() - t)
    ms = {s: 1000 * statistics.median(v) for s, v in lat.items()}
    ips = {s: args.batch / statistics.median(v) for s, v in thr.items()}
    base = SPARSITIES[0]
    print(f"{'sparsity':>8} {'parameters':>12} {'x params':>9} {'zipped MB':>10} {'x zipped':>9} {'latency ms':>11} {'speed-up':>9} "
          f"{'img/s':>9} {'x img/s':>8}")
    for s in SPARSITIES:
        p, z = sizes[s]["parameters"], sizes[s]["zipped_bytes"]
        print(f"{s:>8.0%} {p:>12,} {p / sizes[base]['parameters']:>9.3f} {z / 1e6:>10.3f} {z / sizes[base]['zipped_bytes']:>9.3f} "
              f"{ms[s]:>11.3f} {ms[base] / ms[s]:>9.2f} {ips[s]:>9.1f} {ips[s] / ips[base]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
