"""Does mitigation narrow a compression-widened gap, and at what cost in accuracy?

On the planted scenario (`configs/synthetic-planted.yaml`, whichever design it holds: its comments
and the README say how strong pruning widens its gender gap), over several seeds (each a new
synthetic set and a new baseline), one study per seed with magnitude pruning at --sparsity and its
mitigated forms: distillation fine-tuning, group-constrained fine-tuning on gender (both against
magnitude pruning fine-tuned plainly), and FairGRAPE's gender-aware pruning criterion (against
percentile pruning, the same fixed-mask pruning by magnitude alone). Reads the report's own tables: the gap table (each variant's gender
gap change against the baseline, paired subject bootstrap, Holm across the study) and the mitigation
table (each mitigated variant against its unmitigated twin, paired, Holm across the section).

Prints per seed and method: the gender gap change vs the baseline, the change vs the twin (negative:
narrower) with its interval and whether it is significant, and the accuracy change vs the twin; then
per method the mean over seeds. Point --out at the folder of an earlier run to reuse its studies.

Usage: .venv/bin/python benchmarks/mitigation.py [--seeds 2] [--repeats 3] [--sparsity 0.9] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import BENCH_DIR, study_results  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.report.analysis import gap_table  # noqa: E402
from faircompress.report.mitigation import mitigation_table  # noqa: E402

PLANTED = ROOT / "configs" / "synthetic-planted.yaml"
ATTRIBUTE = "gender"


def recipes(sparsity: float) -> list[list[dict]]:
    prune = {"sparsity": sparsity}
    return [[{"prune": prune}], [{"prune": {**prune, "method": "percentile"}}],  # the twins: fine-tuning objectives', fairgrape's
            [{"prune": {**prune, "fine_tune": {"objective": "distill", "alpha": 0.5, "temperature": 4}}}],
            [{"prune": {**prune, "fine_tune": {"objective": "constrained", "attribute": ATTRIBUTE, "epsilon": 0.02}}}],
            [{"prune": {**prune, "method": "fairgrape", "attribute": ATTRIBUTE}}]]


def study(seed: int, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or reuse) one seed's study; its gap table and mitigation table."""
    base = load_config(PLANTED)
    cfg = load_config(PLANTED, {"dataset.params": dict(base.dataset.params, seed=seed), "seeds": [seed], "repeats": args.repeats,
                                "recipes": recipes(args.sparsity), "output_dir": str(args.out / f"seed-{seed}"),
                                "name": f"mitigation-{seed}"})
    t = time.perf_counter()
    res = study_results(cfg, f"seed {seed}")
    gaps, mitigation = gap_table(res, n_boot=args.bootstrap, seed=seed), mitigation_table(res, n_boot=args.bootstrap, seed=seed)
    print(f"  seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return gaps[gaps.attribute == ATTRIBUTE], mitigation[mitigation.attribute == ATTRIBUTE]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "mitigation")
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        gaps, mitigation = study(seed, args)
        vs_base = dict(zip(gaps.variant, gaps.gap_change))
        for r in mitigation.itertuples():
            rows.append({"seed": seed, "method": r.objective, "variant": r.variant, "vs_baseline": vs_base.get(r.variant, np.nan),
                         "twin_vs_baseline": vs_base.get(r.twin, np.nan), "vs_twin": r.gap_change, "low": r.ci_low, "high": r.ci_high,
                         "significant": bool(r.significant), "accuracy_vs_twin": r.accuracy_change})
    table = pd.DataFrame(rows)
    print(f"\n== mitigation on the planted {ATTRIBUTE} gap: {args.seeds} seeds x {args.repeats} repeats, prune {args.sparsity:.0%}, "
          f"{args.bootstrap} bootstrap resamples (pp) ==")
    for r in table.itertuples():
        print(f"seed {r.seed}  {r.method:<20} twin's gap change vs baseline {100 * r.twin_vs_baseline:+6.1f}, mitigated "
              f"{100 * r.vs_baseline:+6.1f}; vs twin {100 * r.vs_twin:+6.1f} [{100 * r.low:+.1f}, {100 * r.high:+.1f}]"
              f"{' *' if r.significant else '  '}  accuracy vs twin {100 * r.accuracy_vs_twin:+5.1f}")
    if table.empty:
        return
    summary = table.groupby("method", sort=False).agg(vs_twin=("vs_twin", "mean"), narrowed=("vs_twin", lambda s: int((s < 0).sum())),
                                                       significant=("significant", "sum"), accuracy=("accuracy_vs_twin", "mean"),
                                                       seeds=("seed", "nunique"))
    print("\nper method, mean over seeds: gap change vs the twin (negative: narrower), seeds where it narrowed, "
          "significant after Holm, accuracy change vs the twin")
    for method, r in summary.iterrows():
        print(f"{method:<20} {100 * r.vs_twin:+6.1f} pp   narrowed in {int(r.narrowed)} of {int(r.seeds)}   significant {int(r.significant)}   "
              f"accuracy {100 * r.accuracy:+5.1f} pp")


if __name__ == "__main__":
    main()
