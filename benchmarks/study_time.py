"""Times the default study (the paper's CK+ grid on the synthetic benchmark) phase by phase, then
reports size ratios against the paper's and int8-static latency against fp32, from the stored results.

Usage: python benchmarks/study_time.py [--out runs/bench/study-time] [--keep] [--workers 2 [--threads 1]]
(--keep reuses finished runs: the wall time then covers only what was left to do; --workers runs them
side by side in local worker processes, `execution.workers`.)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import PrintHooks, synthetic_data  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.store import ResultStore  # noqa: E402
from faircompress.study import run_study  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "runs" / "bench" / "study-time"))
ap.add_argument("--keep", action="store_true")
ap.add_argument("--workers", type=int, default=1)
ap.add_argument("--threads", type=int, default=0)
args = ap.parse_args()
out = Path(args.out)
if out.exists() and not args.keep:
    shutil.rmtree(out)

cfg = load_config(None, {"output_dir": str(out), "execution.workers": args.workers, "execution.threads": args.threads})
t0 = time.perf_counter()
report = run_study(cfg, PrintHooks())
wall = time.perf_counter() - t0

store = ResultStore.open_existing(out)
runs = store.runs()
timings = runs.timings_json.dropna().map(json.loads)
phase = {"baseline training": 0.0, "fine-tuning": 0.0, "export + quantisation": 0.0, "ONNX evaluation": 0.0, "size + latency": 0.0}
for kind, t in zip(runs.kind, timings):
    if kind == "baseline":
        phase["baseline training"] += t.get("train_s", 0) + t.get("setup_s", 0)
    else:
        phase["fine-tuning"] += t.get("fine_tune_s", 0)
        phase["export + quantisation"] += t.get("export_s", 0)
        phase["ONNX evaluation"] += t.get("eval_s", 0)
        phase["size + latency"] += t.get("measure_s", 0)
print(f"\n== default study: {len(runs)} runs ({(runs.kind == 'variant').sum()} variants), failed {len(report.failed)} ==")
print(f"wall time {wall:.0f} s ({wall / 60:.1f} min); issue 23's target on 2 cores: <= 7 min with AMX (bf16), <= 15 min on AVX2 (fp32)")
for k, v in phase.items():
    print(f"  {k:<24} {v:7.1f} s  {v / wall:6.1%}")
print(f"  {'other (data, store, memory)':<24} {wall - sum(phase.values()):7.1f} s")
training = phase["baseline training"] + phase["fine-tuning"]
print(f"wall / (training + fine-tuning) = {wall / training:.2f} (issue 23's target: <= 1.05)"
      + (f"; with {args.workers} workers the phases overlap, so they add up to more than the wall time" if args.workers > 1 else ""))

# seconds per training pass of an epoch, by technique: clustering's re-assignment against pruning's plain step
ep = store.epochs().merge(runs[["run_id", "kind", "technique"]], on="run_id")
ep["what"] = ep.technique.where(ep.kind == "variant", "baseline training")
per_epoch = ep[ep.epoch > 1].groupby("what").train_seconds.mean()  # a first epoch holds one-off warm-up
print("training pass per epoch: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_epoch.items()))
plain = "prune" if "prune" in per_epoch.index else "baseline training"  # pruning's step: fine-tuning's threads, side by side too
if {"cluster", plain} <= set(per_epoch.index):
    print(f"clustering's step over the plain model's ({plain}): {per_epoch['cluster'] / per_epoch[plain] - 1:+.0%} (target <= +25 %)")

m = store.metrics().query("attribute == ''").pivot(index="run_id", columns="metric", values="value")
v = runs[(runs.kind == "variant") & (runs.status == "finished")]
size = m.loc[v.run_id, "zipped_bytes"].groupby(v.variant.to_numpy()).mean()
base = size["baseline (fp32)"]
print(f"\nzipped size of the fp32 baseline: {base / 1e6:.2f} MB (paper, CK+: 16.51 MB)")
print(f"{'variant':<28} {'ours':>7} {'paper':>7}")
for name, paper in [("int8-weights", 0.245), ("prune 50%", 0.61), ("prune 50% + int8-weights", 0.17), ("cluster 4", 0.071)]:
    print(f"{name:<28} {size[name] / base:7.3f} {paper:7.3f}")

# int8-static is the fast deployable form; it is not in the paper's grid, so quantise the baseline here
from faircompress.compress.quantization import quantize_static_int8  # noqa: E402
from faircompress.evaluate.runtime import onnx_latency, onnx_throughput, session  # noqa: E402
from faircompress.variants import calibration_images  # noqa: E402

data = synthetic_data(cfg)
fp32 = out / "models" / runs[runs.kind == "baseline"].run_id.iloc[0] / "model.onnx"
static = out / "int8-static.onnx"
quantize_static_int8(fp32, static, calibration_images(data, 0)[:256])
sess = {name: session(p) for name, p in [("fp32", fp32), ("int8-static", static)]}
lat = {name: onnx_latency(s, (1, 48, 48), runs=200) for name, s in sess.items()}
ips = {name: onnx_throughput(s, (1, 48, 48), 64, runs=20) for name, s in sess.items()}
print(f"\nONNX Runtime CPU, batch 1 median latency: fp32 {lat['fp32']:.2f} ms, int8-static {lat['int8-static']:.2f} ms "
      f"(x{lat['fp32'] / lat['int8-static']:.1f}); batch 64: {ips['fp32']:.0f} vs {ips['int8-static']:.0f} images/s")
