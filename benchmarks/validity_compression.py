"""Does the report find a compression effect that is there, and only then?

Runs `configs/synthetic-planted.yaml` (a small group that mostly shows the expressions that are rare
in the data, which strong pruning forgets first) and the same grid on the neutral
synthetic set, over several seeds (each seed draws a new synthetic set and trains a new baseline),
and reads each study's gap table exactly as the report computes it (paired subject bootstrap,
Holm-corrected across the study). Prints:
  - per seed, the planted group's gap change at each strong-compression variant and whether the
    report flags it as a significant increase;
  - the detection rate (target >= 80 %) and the false-flag rate on the neutral set for the planted
    attribute (target <= 5 %), and separately for the other attributes: the renderer draws darker
    skin with fainter features too (as cameras do), so skin tone is not null there.

Usage: .venv/bin/python benchmarks/validity_compression.py [--seeds 3] [--bootstrap 1000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import BENCH_DIR, study_results  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.report.analysis import gap_table  # noqa: E402

PLANTED = ROOT / "configs" / "synthetic-planted.yaml"
ATTRIBUTE = "gender"  # the planted group's attribute


def study(kind: str, seed: int, n_boot: int):
    """Run (or reuse) one study; return its gap table."""
    cfg = load_config(PLANTED)
    params = dict(cfg.dataset.params, seed=seed)
    if kind == "neutral":
        params["bias"] = {}
    cfg = load_config(PLANTED, {"dataset.params": params, "seeds": [seed], "output_dir": str(BENCH_DIR / "validity" / f"{kind}-{seed}"),
                                "name": f"validity-{kind}-{seed}"})
    t = time.perf_counter()
    gaps = gap_table(study_results(cfg, f"{kind} seed {seed}"), n_boot=n_boot, seed=seed)
    print(f"  {kind} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return gaps[gaps.p.notna()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    hits, planted_tests, false_flags, neutral_tests, other_flags, other_tests = 0, 0, 0, 0, 0, 0
    lines = []
    for seed in range(args.seeds):
        planted = study("planted", seed, args.bootstrap)
        rows = planted[planted.attribute == ATTRIBUTE]
        for r in rows.itertuples():
            flagged = bool(r.significant and r.gap_change > 0)
            hits += flagged
            planted_tests += 1
            lines.append(f"planted seed {seed}  {r.variant:<14} {ATTRIBUTE} gap change {100 * r.gap_change:+6.1f} pp "
                         f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]  p_holm {r.p_holm:.4f}  {'FLAGGED' if flagged else 'missed'}")
        neutral = study("neutral", seed, args.bootstrap)
        same = neutral.attribute == ATTRIBUTE
        false_flags += int(neutral[same].significant.sum())
        neutral_tests += int(same.sum())
        other_flags += int(neutral[~same].significant.sum())
        other_tests += int((~same).sum())
        for r in neutral[neutral.significant].itertuples():
            lines.append(f"neutral seed {seed}  {r.variant:<14} {r.attribute}: {100 * r.gap_change:+.1f} pp flagged"
                         + (" (false)" if r.attribute == ATTRIBUTE else ""))
    print(f"\n== compression validity: {args.seeds} seeds, {args.bootstrap} bootstrap resamples ==")
    print("\n".join(lines))
    detect = hits / max(planted_tests, 1)
    false_rate = false_flags / max(neutral_tests, 1)
    print(f"\ndetection of the planted {ATTRIBUTE} gap increase at strong compression: {hits}/{planted_tests} = {detect:.0%}"
          f"  (target >= 80 %): {'PASS' if detect >= 0.8 else 'FAIL'}")
    print(f"false flags on the neutral set, {ATTRIBUTE} gap changes: {false_flags}/{neutral_tests} = {false_rate:.1%}"
          f"  (target <= 5 %): {'PASS' if false_rate <= 0.05 else 'FAIL'}")
    print(f"flags on the neutral set's other attributes (skin tone carries the renderer's own contrast effect): "
          f"{other_flags}/{other_tests}")


if __name__ == "__main__":
    main()
