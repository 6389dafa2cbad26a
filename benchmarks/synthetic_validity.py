"""Is the synthetic benchmark a fair test bed? Trains baselines over 3 seeds in three settings.

1. default set: test accuracy should be 60-95 % (hard enough that compression can hurt it);
2. every bias knob neutral (equal gender representation, equal intensity, no label noise):
   the 95 % interval of the female - male accuracy gap should contain 0;
3. male expressions at half intensity: male accuracy should be lower, p < 0.05.
Intervals and p-values come from a bootstrap over test subjects (images of a person stay together),
pooling the 3 seeds. Usage: python benchmarks/synthetic_validity.py [--seeds 3]
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import run

from faircompress.evaluate.stats import percentile_interval, subject_bootstrap_accuracy

p = argparse.ArgumentParser()
p.add_argument("--seeds", type=int, default=3)
args = p.parse_args()
seeds = list(range(args.seeds))
EQUAL = {"gender": [1, 1], "skin_tone": [70, 18, 12], "age": [2, 13, 60, 20, 5]}


def gender_gap(res: dict) -> tuple[float, tuple[float, float], float]:
    g = res["attr"]["gender"]
    boot = subject_bootstrap_accuracy(res["correct"], res["subjects"], g, n_boot=4000)
    diff = boot[0] - boot[1]  # female - male
    point = res["correct"][:, g == 0].mean() - res["correct"][:, g == 1].mean()
    p_male_lower = float((diff <= 0).mean())  # one-sided: P(female - male <= 0) under resampling
    return float(point), percentile_interval(diff), p_male_lower


default = run("validity-default", {"seeds": seeds})
neutral = run("validity-neutral", {"seeds": seeds, "dataset.params": {"proportions": EQUAL}})
subtle = run("validity-male-half-intensity", {"seeds": seeds, "dataset.params": {"proportions": EQUAL, "bias": {"gender": {"male": {"intensity": 0.5}}}}})

acc = default["correct"].mean(1)
print("\n== synthetic benchmark validity (seeds: %s, precision: %s) ==" % (seeds, ",".join(default["precision"])))
print(f"1. default set test accuracy: per seed {np.round(acc * 100, 2).tolist()} %, mean {acc.mean() * 100:.2f} ± {acc.std(ddof=1) * 100:.2f} %"
      f"  -> target 60-95 %: {'PASS' if 0.6 <= acc.mean() <= 0.95 else 'FAIL'}")
pt, (lo, hi), _ = gender_gap(neutral)
per_seed = [gender_gap({**neutral, "correct": neutral["correct"][i : i + 1]}) for i in range(len(seeds))]
print(f"2. neutral knobs, female - male gap: pooled {pt * 100:+.2f} pp, 95 % CI [{lo * 100:+.2f}, {hi * 100:+.2f}]"
      f"  -> contains 0: {'PASS' if lo <= 0 <= hi else 'FAIL'}")
for i, (ps, (l2, h2), _) in enumerate(per_seed):
    print(f"   seed {seeds[i]}: {ps * 100:+.2f} pp, 95 % CI [{l2 * 100:+.2f}, {h2 * 100:+.2f}]  contains 0: {l2 <= 0 <= h2}")
pt, (lo, hi), pval = gender_gap(subtle)
g = subtle["attr"]["gender"]
print(f"3. male at half intensity: female {subtle['correct'][:, g == 0].mean() * 100:.2f} %, male {subtle['correct'][:, g == 1].mean() * 100:.2f} %, "
      f"gap {pt * 100:+.2f} pp, 95 % CI [{lo * 100:+.2f}, {hi * 100:+.2f}], one-sided p = {max(pval, 1 / 4000):.4f}"
      f"  -> p < 0.05: {'PASS' if pval < 0.05 else 'FAIL'}")
