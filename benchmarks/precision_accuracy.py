"""Does bf16 autocast on the CPU keep accuracy? The default synthetic study over 3 seeds, fp32 vs auto.

'auto' resolves to bf16 on CPUs with native bf16 (and on CUDA); the runs are shared with
synthetic_validity.py's default setting. Usage: python benchmarks/precision_accuracy.py [--seeds 3]
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import run

p = argparse.ArgumentParser()
p.add_argument("--seeds", type=int, default=3)
args = p.parse_args()
seeds = list(range(args.seeds))
fp32 = run("precision-fp32", {"seeds": seeds, "train.precision": "fp32"})
auto = run("validity-default", {"seeds": seeds})
a, b = fp32["correct"].mean(1), auto["correct"].mean(1)
print(f"\n== fp32 vs {auto['precision'][0]} (default synthetic study, seeds {seeds}) ==")
print(f"fp32: per seed {np.round(a * 100, 2).tolist()} %, mean {a.mean() * 100:.2f} ± {a.std(ddof=1) * 100:.2f} %")
print(f"{auto['precision'][0]}: per seed {np.round(b * 100, 2).tolist()} %, mean {b.mean() * 100:.2f} ± {b.std(ddof=1) * 100:.2f} %")
print(f"difference (bf16 - fp32): {(b.mean() - a.mean()) * 100:+.2f} pp; seed-to-seed std of fp32: {a.std(ddof=1) * 100:.2f} pp")
