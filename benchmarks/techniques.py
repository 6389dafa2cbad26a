"""The seeds' other techniques on the synthetic benchmark: what each costs and what it does.

One study: the default one's dataset, model and training (the CK+-shaped synthetic set, the paper's
CNN), one baseline, and one variant per technique family at a comparable level: magnitude, random and
percentile pruning at 50 %, whole channels at 50 % (structured), distinctiveness at 45 degrees,
pruning-then-quantisation with per-layer sparsities chosen from the sensitivity scan (tolerance 1 %),
quantisation-aware training (weights only, and with activations), post-training int8, a lottery ticket
at 50 % with its random-mask control, and an iterative ticket (two rounds of 50 %, global: 75 %; its
time includes the first round, made on its way), all retrained for --ticket-epochs, not the baseline's
20, to keep the run short; and distinctiveness' own percentile control at 45 degrees (Dixit et al.'s
matching). The layer-wise scan runs first (its time is printed too).

Prints per variant: seconds to make it (fine-tuning, export, quantisation; measurement excluded),
zipped size and its ratio to the baseline's, test accuracy and its change, and each attribute's gap
change with the report's paired bootstrap interval (significant after Holm marked *). Point --out at
a copy of a finished default study to reuse its baseline (same dataset, model and training).

Usage: .venv/bin/python benchmarks/techniques.py [--out runs/bench/techniques] [--ticket-epochs 5] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import BENCH_DIR, PrintHooks  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.plan import plan  # noqa: E402
from faircompress.report.analysis import gap_table  # noqa: E402
from faircompress.report.results import load_results  # noqa: E402
from faircompress.sensitivity import run_sensitivity  # noqa: E402
from faircompress.store import ResultStore  # noqa: E402
from faircompress.study import run_study  # noqa: E402

INT8 = {"quantize": {"mode": "int8-weights"}}
MEASURING = ("eval", "measure", "memory")  # timing keys that measure the file rather than make it


def grid(ticket_epochs: int) -> list[list[dict]]:
    return [
        [INT8],
        [{"prune": {"sparsity": 0.5}}],
        [{"prune": {"sparsity": 0.5, "method": "random"}}],
        [{"prune": {"sparsity": 0.5, "method": "percentile"}}],
        [{"prune_channels": {"sparsity": 0.5}}],
        [{"distinct": {"similar_below": 45.0}}],
        [{"prune": {"from_sensitivity": {"tolerance": 0.01}}}, INT8],
        [{"qat": {}}],
        [{"ticket": {"sparsity": 0.5, "epochs": ticket_epochs}}],
        [{"ticket": {"sparsity": 0.5, "epochs": ticket_epochs, "control": "random_mask"}}],
        [{"ticket": {"sparsity": 0.5, "epochs": ticket_epochs, "scope": "global", "rounds": 2}}],
        [{"distinct": {"similar_below": 45.0, "control": "percentile"}}],
        [{"qat": {"activations": True}}],
    ]


def making_seconds(timings_json: str) -> float:
    timings = json.loads(timings_json or "{}")
    return sum(v for k, v in timings.items() if not any(k.startswith(m) for m in MEASURING))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "techniques")
    ap.add_argument("--ticket-epochs", type=int, default=5)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    cfg = load_config(None, {"output_dir": str(args.out), "name": "techniques", "repeats": 1, "recipes": grid(args.ticket_epochs)})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cfg.dataset.name} (CK+ shape), {cfg.model.name}, {os.cpu_count()} CPUs (load {load:.1f} at start)", flush=True)
    t = time.perf_counter()
    run_sensitivity(cfg, hooks=PrintHooks())
    print(f"sensitivity scan (with the baseline when it had to be trained): {time.perf_counter() - t:.0f} s", flush=True)
    report = run_study(cfg, PrintHooks())
    if report.failed:
        print(f"failed runs: {report.failed}", flush=True)
    store = ResultStore.open_existing(args.out)
    try:
        res, runs = load_results(store), store.runs()
    finally:
        store.close()
    gaps = gap_table(res, n_boot=args.bootstrap, seed=0)
    made = {r.variant: making_seconds(r.timings_json) for r in runs.itertuples() if r.kind == "variant"}
    table = res.run_table()
    table["accuracy"] = res.scalar("accuracy").reindex(table.run_id).to_numpy()
    table = table.groupby("variant", sort=False)[["size_mb", "accuracy"]].mean()
    base = table.loc[res.reference.label]
    attrs = list(dict.fromkeys(gaps.attribute))
    print(f"\n{'variant':<44} {'s to make':>9} {'size MB':>8} {'x size':>7} {'accuracy':>8} {'change':>7}  "
          + "  ".join(f"{'gap change ' + a + ' (pp)':>30}" for a in attrs))
    # this grid's variants (those made here, and those a reused study had made already), not a reused study's others
    planned = {r.recipe.label for r in plan(cfg) if r.recipe is not None} | set(runs[runs.study == cfg.name].variant.dropna())
    for variant, row in table[table.index.isin(planned)].iterrows():
        cells = []
        for a in attrs:
            g = gaps[(gaps.variant == variant) & (gaps.attribute == a)]
            if g.empty or variant == res.reference.label:
                cells.append(f"{'':>30}")
                continue
            g = g.iloc[0]
            cells.append(f"{100 * g.gap_change:+6.1f} [{100 * g.ci_low:+6.1f}, {100 * g.ci_high:+6.1f}]{'*' if g.significant else ' ':<2}".rjust(30))
        print(f"{variant:<44} {made.get(variant, float('nan')):>9.0f} {row.size_mb:>8.2f} {row.size_mb / base.size_mb:>7.3f} "
              f"{100 * row.accuracy:>7.1f}% {100 * (row.accuracy - base.accuracy):>+6.1f}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
