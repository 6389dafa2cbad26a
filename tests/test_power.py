"""Power: detectable changes from standard errors, before training (simulated) and after (bootstrap)."""
import numpy as np
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.evaluate.power import Scenario, detectable_change, planned_power, population_se, repeats_needed, simulated_test_se


def test_detectable_change_is_z_alpha_plus_z_power_standard_errors():
    assert detectable_change(1.0) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    assert detectable_change(1.0, tests=10) == pytest.approx(2.807034 + 0.841621, rel=1e-5)  # alpha / 10, two-sided


def test_more_repeats_help_until_test_sampling_dominates():
    se_r1, se_r10 = population_se(0.02, 0.03, 1, 1), population_se(0.02, 0.03, 10, 1)
    assert se_r10 < se_r1 and se_r10 > population_se(0.02, 0.03, 10, 5)
    r = repeats_needed(0.12, 0.02, 0.02, seeds=2)
    assert r is not None and detectable_change(population_se(0.02, 0.02, r, 2)) <= 0.12 < detectable_change(population_se(0.02, 0.02, r - 1, 2)) if r > 1 else True
    assert repeats_needed(0.01, 0.02, 0.02, seeds=1) is None  # below what the test set allows


def test_a_larger_test_set_detects_smaller_changes():
    def se(n_subjects):
        subjects = np.repeat(np.arange(n_subjects), 8)
        return simulated_test_se(subjects % 2, 2, subjects, Scenario(), n_boot=200, sims=4)
    small, large = se(20), se(200)
    assert large < small / 2  # ~ 1 / sqrt(subjects)


def test_planned_power_per_attribute_and_too_small_groups():
    subjects = np.repeat(np.arange(40), 6)
    codes = {"g": (subjects % 2, 2), "rare": (np.where(np.arange(240) < 3, 1, 0), 2)}
    rows = {r["attribute"]: r for r in planned_power(codes, subjects, Scenario(), 0.02, 3, 1, 6, 0.05, min_group=5)}
    assert rows["g"]["groups"] == 2 and rows["g"]["detectable_corrected"] > rows["g"]["detectable"] > 0
    assert rows["rare"]["note"] and "fewer than 2 groups" in rows["rare"]["note"]


def test_power_command_before_training(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("dataset: {params: {subjects: 24, sequences: 40, image_size: 16}}\nrecipes: [[{prune: {sparsity: 0.5}}]]\n")
    from faircompress import cli

    width, cli.console.width = cli.console.width, 200
    try:
        res = CliRunner().invoke(app, ["power", str(cfg), "--target", "30"])
    finally:
        cli.console.width = width
    assert res.exit_code == 0, res.output
    assert "gender" in res.output and "detectable" in res.output and "repeats for 30 pp" in res.output


def test_the_report_says_what_the_study_could_detect(study):
    from faircompress.report.build import write_report

    rep = write_report(study, n_boot=200)
    power = rep.tables["power"]
    assert set(power.attribute) <= {"gender", "skin_tone", "age"} and len(power) >= 1
    assert (power.detectable_after_correction >= power.detectable).all() and (power.detectable >= 0).all()
    assert np.allclose(power.detectable, detectable_change(power.median_se))  # 0 only where no resample moved a gap
    gaps = rep.tables["gaps"]
    tested = gaps[gaps.p.notna()]
    assert np.allclose(tested.detectable, detectable_change(tested.se))
    assert "the smallest gap change this study could detect" in rep.html.read_text()
