"""Time the fairness report on the default study (about 40 variants x 3 repeats), 1,000 bootstrap
resamples included; target < 60 s on the 2-core machine. Uses the study benchmarks/study_time.py
leaves in runs/bench/study-time (run that first), or any study directory given.

Usage: python benchmarks/report_time.py [STUDY_DIR] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from faircompress.report.build import write_report  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("study", nargs="?", default=str(ROOT / "runs" / "bench" / "study-time"))
ap.add_argument("--bootstrap", type=int, default=1000)
args = ap.parse_args()

marks = [("start", time.perf_counter())]
rep = write_report(args.study, n_boot=args.bootstrap, progress=lambda msg: marks.append((msg, time.perf_counter())))
marks.append(("done", time.perf_counter()))
total = marks[-1][1] - marks[0][1]
variants = rep.tables["paper"].shape[0] if "paper" in rep.tables else 0
models = int(rep.tables["paper"].models.sum()) if variants else 0
print(f"== report on {args.study}: {variants} variants, {models} models, {args.bootstrap} bootstrap resamples ==")
for (name, t0), (_, t1) in zip(marks[:-1], marks[1:]):
    print(f"  {name:<46} {t1 - t0:6.1f} s")
print(f"total {total:.1f} s; target < 60 s: {'PASS' if total < 60 else 'FAIL'}")
gaps = rep.tables.get("gaps")
if gaps is not None and not gaps.empty:
    sig = gaps[gaps.significant & ~gaps.attribute.str.contains(" × ")]
    print(f"\nsignificant gap changes (single attributes): {len(sig)} of {(~gaps.attribute.str.contains(' × ') & (gaps.variant != 'baseline (fp32)')).sum()}")
    for r in sig.itertuples():
        print(f"  {r.variant:<30} {r.attribute:<10} {100 * r.gap_change:+6.2f} pp  [{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]")
    mcn = rep.tables["mcnemar"]
    print(f"paired group tests ({mcn.test.iloc[0]}) significant after Holm: {int(mcn.significant.sum())} of {int(mcn.p.notna().sum())}")
    for r in rep.tables["power"].itertuples():
        print(f"  {r.attribute:<10} smallest detectable gap change {100 * r.detectable:5.1f} pp "
              f"({100 * r.detectable_after_correction:.1f} after correction); largest seen {100 * r.largest_change:.1f} pp")
print(f"report: {rep.html}")
