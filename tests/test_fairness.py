"""Fairness measures and statistics against hand-computed values, known p-values and simulation."""
import math

import numpy as np
import pytest

from faircompress.evaluate import fairness as F


def test_wilson_interval_known_value_and_empty_group():
    lo, hi = F.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = F.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_wilson_interval_reaches_its_nominal_coverage():
    rng = np.random.default_rng(0)
    p, n = 0.7, 50
    k = rng.binomial(n, p, 4000)
    lo, hi = F.wilson_interval(k, n)
    assert 0.93 <= np.mean((lo <= p) & (p <= hi)) <= 0.97


def test_mcnemar_exact_known_p_values():
    base = np.array([True] * 1 + [False] * 9 + [True] * 5)
    var = np.array([False] * 1 + [True] * 9 + [True] * 5)  # 1 lost, 9 gained, 5 agree
    assert F.mcnemar_exact(base, var) == pytest.approx(2 * (1 + 10) / 1024)  # binomial(10, 0.5), two-sided
    assert F.mcnemar_exact(base, base) == 1.0
    same = np.array([True, False, True, False])
    assert F.mcnemar_exact(same, ~same) == 1.0  # 2 lost, 2 gained


def test_holm_adjustment():
    adj = F.holm(np.array([0.01, 0.04, 0.03, np.nan]))
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adj[3])


def test_overall_disparity_hand_computed():
    # class 0: group 0 recall 1.0, group 1 recall 0.5 -> (0 + 0.5) / 1; class 1: both 1.0 -> 0
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array([0, 0, 1, 1, 0, 1])
    assert F.overall_disparity(y_true, y_pred, groups, 2, 2) == pytest.approx(0.25)


def test_cev_sde_hand_computed_and_zero_rates_guarded():
    base = (np.array([0.1, 0.2, 0.0]), np.array([0.2, 0.4, 0.3]))
    var = (np.array([0.2, 0.2, 0.5]), np.array([0.2, 0.2, 0.1]))
    cev, sde = F.cev_sde(base, var)  # third class left out (baseline FPR 0)
    assert cev == pytest.approx(0.3125) and sde == pytest.approx(0.75)
    assert all(math.isnan(x) for x in F.cev_sde((np.zeros(2), np.zeros(2)), (np.ones(2), np.ones(2))))


def test_class_rates():
    fpr, fnr = F.class_rates(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert fnr[:2] == pytest.approx([0.5, 0.0]) and fpr[:2] == pytest.approx([0.0, 0.5]) and np.isnan(fnr[2])


def test_compression_identified_exemplars_use_modal_predictions():
    base = np.array([[0, 1, 2], [0, 1, 1]])  # modal: 0, 1, no mode
    var = np.array([[0, 2, 2], [0, 2, 1], [0, 2, 2]])  # modal: 0, 2, 2
    assert F.compression_identified(base, var, 3).tolist() == [False, True, True]


def test_a_tie_is_no_mode_not_the_lowest_class():
    three = np.array([[3, 0, 1], [5, 0, 1], [7, 2, 1]])  # image 0: all disagree; image 1: 0 wins 2-1; image 2: unanimous
    assert F.modal(three, 8).tolist() == [F.NO_MODE, 0, 1]
    base = np.array([[0, 0, 1]])  # the baseline says neutral (0) on image 0
    assert F.compression_identified(base, three, 8).tolist() == [True, False, False]  # the variant does not agree on it


def test_overall_disparity_counts_a_class_no_group_recalls_as_zero():
    # class 0: recalls 1.0 and 0.5 -> 0.5; class 1: nobody right -> 0 (the reference counts it)
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    groups = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert F.overall_disparity(y_true, y_pred, groups, 2, 2) == pytest.approx(0.25)


def test_paired_gap_bootstrap_reaches_roughly_its_nominal_coverage():
    # one model per population: the interval is then about test sampling alone (subjects resampled,
    # with a per-subject effect so that images of one subject are correlated)
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(80), 5)
    groups = (subjects >= 40).astype(int)
    p_base, p_var = np.array([0.85, 0.7]), np.array([0.85, 0.6])
    true_change = (0.85 - 0.6) - (0.85 - 0.7)
    hits = 0
    sims = 150
    for s in range(sims):
        shift = rng.normal(0, 0.08, 80)[subjects]
        u = rng.random(len(subjects))  # shared by both models: they fail on similar images
        base = (u < p_base[groups] + shift)[None]
        var = (u < p_var[groups] + shift)[None]
        boot = F.paired_gap_bootstrap(base, var, groups, 2, subjects, n_boot=500, seed=s)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        hits += lo <= true_change <= hi
    assert 0.88 <= hits / sims <= 0.995


def test_paired_gap_bootstrap_widens_when_repeats_disagree():
    rng = np.random.default_rng(3)
    subjects, groups = np.repeat(np.arange(40), 4), np.repeat(np.arange(40) % 2, 4)
    base = rng.random((1, 160)) < 0.75
    one = rng.random((1, 160)) < 0.75
    spread = np.concatenate([one, rng.random((3, 160)) < np.where(groups == 0, 0.95, 0.5)])  # repeats that differ
    width = lambda b: np.subtract(*np.quantile(b, [0.975, 0.025]))  # noqa: E731
    assert width(F.paired_gap_bootstrap(base, spread, groups, 2, subjects, 1000)) > width(F.paired_gap_bootstrap(base, one, groups, 2, subjects, 1000))


def test_paired_gap_bootstrap_is_zero_for_identical_models():
    rng = np.random.default_rng(2)
    subjects, groups = np.repeat(np.arange(20), 3), np.repeat(np.arange(20) % 2, 3)
    correct = rng.random((1, 60)) < 0.7
    assert np.allclose(F.paired_gap_bootstrap(correct, correct, groups, 2, subjects, n_boot=200), 0)


# --- subject-clustered statistics ------------------------------------------------------------------
def test_cluster_permutation_test_is_mcnemar_for_single_images_and_wider_for_subjects():
    rng = np.random.default_rng(4)
    base, var = rng.random(60) < 0.8, rng.random(60) < 0.6
    singletons = np.arange(60).astype(str)
    assert F.cluster_permutation_test(base, var, singletons) == pytest.approx(F.mcnemar_exact(base, var))
    # three subjects, ten images each, every image lost: 30 discordant images, but only 3 independent units
    base, var, subjects = np.ones(30, bool), np.zeros(30, bool), np.repeat(["a", "b", "c"], 10)
    assert F.mcnemar_exact(base, var) < 1e-8
    assert F.cluster_permutation_test(base, var, subjects) == pytest.approx(2 / 8)
    many = np.repeat(np.arange(40), 2)  # 40 subjects: Monte Carlo, close to the exact binomial
    assert F.cluster_permutation_test(np.ones(80, bool), np.arange(80) % 4 != 0, many, n_perm=20000) < 1e-4


def test_cluster_bootstrap_covers_where_wilson_does_not():
    # 30 subjects x 8 images with a strong subject effect: images of a subject are alike
    rng = np.random.default_rng(5)
    subjects = np.repeat(np.arange(30), 8)
    groups = np.zeros(len(subjects), int)
    p_true = 0.75
    cover_cluster = cover_wilson = 0
    sims = 120
    for s in range(sims):
        ability = np.clip(p_true + rng.normal(0, 0.2, 30), 0, 1)[subjects]
        correct = (rng.random(len(subjects)) < ability)[None]
        truth = p_true + 0  # the population mean ability (clipping is symmetric enough at 0.75 +- 0.2)
        lo, hi = F.cluster_accuracy_interval(correct, groups, 1, subjects, n_boot=400, seed=s)
        cover_cluster += lo[0] <= truth <= hi[0]
        wl, wh = F.wilson_interval(correct.sum(), correct.size)
        cover_wilson += wl <= truth <= wh
    assert 0.86 <= cover_cluster / sims <= 0.99
    assert cover_wilson / sims < cover_cluster / sims - 0.1  # images treated as independent: too narrow


def test_gap_change_interval_is_about_the_population_mean():
    # 3 variant models: two change nothing, one widens the gap by 0.3 -> the mean change is 0.1
    subjects = np.repeat(np.arange(400), 5)
    groups = (subjects >= 200).astype(int)
    base = np.ones((1, 2000), bool)
    hurt = np.ones(2000, bool)
    hurt[(groups == 1) & (np.arange(2000) % 10 < 3)] = False
    var = np.stack([np.ones(2000, bool), np.ones(2000, bool), hurt])
    boot = F.paired_gap_bootstrap(base, var, groups, 2, subjects, n_boot=2000)
    assert np.median(boot) == pytest.approx(0.1, abs=0.02)  # one model per draw would put the median at 0
    # with one repeat of three showing it, the mean change is uncertain, and the p-value says so
    assert F.bootstrap_p(0.1, boot) > 0.05
    steady = F.paired_gap_bootstrap(base, np.stack([hurt] * 3), groups, 2, subjects, n_boot=500)
    assert F.bootstrap_p(0.3, steady) < 1e-6 and F.bootstrap_p(0.0, np.zeros(10)) == 1.0
