"""Power: the smallest change of a gap a study can detect, so that "not significant" means something.

For a normal test statistic with standard error ``se``, a two-sided test at level alpha detects a true
change of ``(z_{1 - alpha / 2} + z_{power}) * se`` with the stated power (e.g. Cohen 1988, ch. 12).
After a correction over ``tests`` comparisons the level is taken as alpha / tests (the Bonferroni
bound, which Holm's step-down never needs more than). The standard error of a change of a
population-mean gap has two parts: test sampling (subjects and images, from the paired bootstrap,
or from a simulation of the test split before anything is trained) and the spread between models
of a population (fine-tuning repeats, baseline seeds): se² = se_test² + sd²/(repeats·seeds) + sd²/seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .fairness import paired_gap_bootstrap

_Z = NormalDist()


def detectable_change(se: float | np.ndarray, alpha: float = 0.05, power: float = 0.8, tests: int = 1) -> float | np.ndarray:
    """Smallest true change detected with probability ``power`` by a two-sided test at ``alpha``
    (split over ``tests`` comparisons)."""
    return (_Z.inv_cdf(1 - alpha / (2 * max(tests, 1))) + _Z.inv_cdf(power)) * np.asarray(se)


def population_se(se_test: float, repeat_sd: float, repeats: int, seeds: int) -> float:
    """Standard error of a change of population-mean gaps: test sampling plus the model spread of the
    variant's repeats x seeds models and of the baseline's seeds models."""
    return math.sqrt(se_test**2 + repeat_sd**2 / (repeats * seeds) + repeat_sd**2 / seeds)


def repeats_needed(target: float, se_test: float, repeat_sd: float, seeds: int, tests: int = 1, alpha: float = 0.05,
                   power: float = 0.8, most: int = 100) -> int | None:
    """Fewest fine-tuning repeats that detect ``target``; None when even ``most`` do not (then only a
    larger test set, or more baseline seeds, helps)."""
    for r in range(1, most + 1):
        if detectable_change(population_se(se_test, repeat_sd, r, seeds), alpha, power, tests) <= target:
            return r
    return None


@dataclass(frozen=True)
class Scenario:
    """What is assumed before training: accuracy, how much a subject's images agree (sd of subjects'
    accuracies), and the share of test images whose correctness compression changes."""

    accuracy: float = 0.8
    subject_sd: float = 0.1
    flip_rate: float = 0.05


def simulated_test_se(groups: np.ndarray, n_groups: int, subjects: np.ndarray, scenario: Scenario, n_boot: int = 500,
                      sims: int = 8, seed: int = 0) -> float:
    """Test-sampling standard error of one model's gap change on this test split, from simulated
    correctness under ``scenario`` (no gap, so the answer is about noise alone): the mean over
    ``sims`` simulations of the paired bootstrap's standard deviation."""
    rng = np.random.default_rng(seed)
    _, unit = np.unique(subjects, return_inverse=True)
    ses = []
    for s in range(sims):
        ability = np.clip(scenario.accuracy + rng.normal(0, scenario.subject_sd, unit.max() + 1), 0, 1)[unit]
        base = rng.random(len(unit)) < ability
        var = np.where(rng.random(len(unit)) < scenario.flip_rate, ~base, base)
        boot = paired_gap_bootstrap(base[None], var[None], groups, n_groups, subjects, n_boot, seed + s)
        ses.append(np.nanstd(boot, ddof=1))
    return float(np.mean(ses))


def planned_power(attributes: dict[str, tuple[np.ndarray, int]], subjects: np.ndarray, scenario: Scenario, repeat_sd: float,
                  repeats: int, seeds: int, tests: int, target: float, min_group: int, seed: int = 0) -> list[dict]:
    """Per attribute (codes, number of groups) of a test split: its groups of at least ``min_group``
    images, the simulated test-sampling SE, the change detectable with the planned repeats and seeds
    (alone and after the study's correction over ``tests``), and the repeats ``target`` needs."""
    rows = []
    for attr, (codes, n_groups) in attributes.items():
        n = np.bincount(codes[codes >= 0], minlength=n_groups)
        ok = n >= min_group
        if ok.sum() < 2:
            rows.append({"attribute": attr, "groups": int(ok.sum()), "note": f"fewer than 2 groups of {min_group}+ test images"})
            continue
        remap = np.full(n_groups, -1)
        remap[ok] = np.arange(ok.sum())
        kept = np.where(codes >= 0, remap[codes.clip(0)], -1)
        se_test = simulated_test_se(kept, int(ok.sum()), subjects, scenario, seed=seed)
        se = population_se(se_test, repeat_sd, repeats, seeds)
        rows.append({"attribute": attr, "groups": int(ok.sum()), "subjects": len(np.unique(subjects[kept >= 0])),
                     "images": int((kept >= 0).sum()), "se_test": se_test, "se": se,
                     "detectable": float(detectable_change(se)), "detectable_corrected": float(detectable_change(se, tests=tests)),
                     "repeats_for_target": repeats_needed(target, se_test, repeat_sd, seeds, tests), "note": ""})
    return rows
