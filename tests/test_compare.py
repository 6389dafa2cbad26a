"""`faircompress compare`: studies side by side on their shared part; the study with the larger
gap change is the one the findings name."""
from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import REPORT_GRID, TINY_DATA
from faircompress.cli import app
from faircompress.evaluate.fairness import paired_accuracy_bootstrap
from faircompress.report.compare import CompareError, compare

PRUNE_50 = REPORT_GRID[1]  # shared by both studies (same recipe, same key)
OTHER_GRID = [REPORT_GRID[0], PRUNE_50, [{"cluster": {"clusters": 8, "epochs": 1}}]]


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second tiny synthetic study: another bias setting and another grid, and twenty test subjects
    (enough for a planted change to be significant)."""
    from faircompress.config import dump_config, load_config

    tmp = tmp_path_factory.mktemp("other")
    cfg = load_config(None, {
        "output_dir": str(tmp / "other"), "name": "other", "dataset.params": dict(TINY_DATA, subjects=40, sequences=60, test_fraction=0.5, bias={"gender": {"male": {"intensity": 0.5}}}),
        "train.epochs": 1, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu", "evaluation.latency": False,
        "evaluation.memory": False, "recipes": OTHER_GRID, "repeats": 1})
    (tmp / "other.yaml").write_text(dump_config(cfg))
    ran = CliRunner().invoke(app, ["run", str(tmp / "other.yaml"), "--no-report"])
    assert ran.exit_code == 0, ran.output
    return tmp / "other"


def _plant_gender_loss(study, planted):
    """A copy of a study in which its pruned models get every male test image right and most female
    ones wrong: a gap change planted in the stored predictions, by construction (a tiny model's own
    predictions are too poor to carry one)."""
    shutil.copytree(study, planted)
    con = sqlite3.connect(planted / "results.sqlite")
    with con:
        con.execute("UPDATE runs SET study='planted'")
        female = {s for s, a in con.execute("SELECT sample, attributes_json FROM samples") if '"gender": 0' in a}
        runs = [r for (r,) in con.execute("SELECT run_id FROM runs WHERE kind='variant' AND technique='prune'")]
        classes = len(con.execute("SELECT class_names_json FROM datasets").fetchone()[0].split(","))
        for run in runs:
            rows = con.execute("SELECT sample, y_true FROM predictions WHERE run_id=?", (run,)).fetchall()
            changed = [((y + 1) % classes if s in female and s % 5 else y, run, s) for s, y in rows]
            con.executemany("UPDATE predictions SET y_pred=? WHERE run_id=? AND sample=?", changed)
    con.close()
    return planted


def test_studies_compare_on_their_shared_part_and_name_the_rest(study, other):
    comp = compare([study, other], n_boot=200)
    changes = comp.tables["accuracy_change"]
    assert set(changes.variant) == {"int8-weights", "prune 50% [epochs=1]"}  # what both finished
    missing = comp.tables["not_shared"].set_index("name")
    assert missing.loc["prune 70% [epochs=1]", "missing in"] == "other"
    assert missing.loc["cluster 8 [epochs=1]", "in"] == "other"
    assert comp.findings[0].kind == "warning" and "missing in some study" in comp.findings[0].text
    diff = comp.tables["accuracy_difference"]
    assert len(diff) == 2 and (diff.against == comp.studies[0].name).all()
    a, b = (changes[(changes.study == s.name) & (changes.variant == "int8-weights")]["accuracy change"].iloc[0] for s in comp.studies)
    assert diff[diff.variant == "int8-weights"].difference.iloc[0] == pytest.approx(b - a)


def test_the_findings_name_the_study_whose_gap_compression_widens(other, tmp_path):
    planted = _plant_gender_loss(other, tmp_path / "planted")
    comp = compare([other, planted], n_boot=300)
    gaps = comp.tables["gap_change"]
    gender = gaps[(gaps.attribute == "gender") & (gaps.variant == "prune 50% [epochs=1]")].set_index("study")
    assert gender.loc["planted", "gap_change"] > gender.loc["other", "gap_change"] + 0.2
    texts = [f.text for f in comp.findings]
    assert any(t.startswith("planted: prune 50% [epochs=1] widens the gender gap") for t in texts), texts
    assert not any(t.startswith("other: prune 50% [epochs=1] widens the gender gap") for t in texts), texts
    assert any(t.startswith("gender gap at prune 50% [epochs=1]: its change is +") and "larger on planted than on other" in t
               for t in texts), texts
    diff = comp.tables["accuracy_difference"].set_index("variant")
    assert diff.loc["int8-weights", "difference"] == 0  # untouched variants do not differ


def test_compare_writes_the_page_tables_and_figures(study, other, tmp_path):
    out = CliRunner().invoke(app, ["compare", str(study), str(other), "--out", str(tmp_path / "cmp"), "--bootstrap", "100"])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert page.index('id="findings"') < page.index('id="figures"') and "Robustness: difference of accuracy changes" in page
    assert "https://" not in page and '<img alt="compare-gaps"' in page
    for name in ("accuracy_difference", "gap_change", "gap_difference", "weight_spread", "not_shared", "studies"):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "cmp" / "tables" / f"compare-{name}.{ext}").is_file()
    spread = pd.read_csv(tmp_path / "cmp" / "tables" / "compare-weight_spread.csv")
    assert len(spread) == 2 and (spread["std"] > 0).all()


def test_studies_with_nothing_in_common_are_refused(study, tmp_path):
    with pytest.raises(CompareError, match="at least two"):
        compare([study])
    out = CliRunner().invoke(app, ["compare", str(study), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert out.exit_code == 2 and "no results store here" in out.output


def test_paired_accuracy_bootstrap_is_centred_on_the_change_and_pairs_images():
    rng = np.random.default_rng(0)
    base = rng.random((1, 400)) < 0.8  # one model each: no spread between models, only the images' draw
    var = base.copy()
    var[:, :40] = False  # the variant loses exactly the first 40 images' correct answers
    units = np.arange(400)
    boot = paired_accuracy_bootstrap(base, var, units, n_boot=2000, seed=1)
    change = var.mean() - base.mean()
    assert np.mean(boot) == pytest.approx(change, abs=0.005)
    independent = np.std([var[:, rng.integers(0, 400, 400)].mean() - base[:, rng.integers(0, 400, 400)].mean() for _ in range(500)])
    assert np.std(boot) < independent / 1.5  # both populations see the same draw of images


def test_a_models_grid_runs_one_study_per_model_and_compares_them_side_by_side(tmp_path):
    """Two values of a model parameter (the SFEW paper's hidden sizes, smaller) as one grid: each a
    whole study with its report, then one comparison of the two."""
    from faircompress.config import dump_config, load_config

    grid = [{"name": "pca_mlp", "params": {"hidden": h, "components": 3, "phog_levels": 1}} for h in (4, 8)]
    cfg = load_config(None, {
        "output_dir": str(tmp_path / "grid"), "name": "grid", "dataset.params": dict(TINY_DATA), "models": grid,
        "train.epochs": 1, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu", "evaluation.latency": False,
        "evaluation.memory": False, "recipes": [[{"prune": {"sparsity": 0.5, "epochs": 1}}]], "repeats": 1})
    (tmp_path / "grid.yaml").write_text(dump_config(cfg))
    ran = CliRunner().invoke(app, ["run", str(tmp_path / "grid.yaml"), "--no-report"])  # each study's report: as any study's
    assert ran.exit_code == 0, ran.output
    out = tmp_path / "grid"
    for label in ("pca_mlp-hidden=4", "pca_mlp-hidden=8"):
        assert (out / label / "results.sqlite").exists() and not (out / label / "report.html").exists()
    assert (out / "compare.html").exists() and load_config(out / "grid.yaml").models == cfg.models
    changes = pd.read_csv(out / "tables" / "compare-accuracy_change.csv")
    assert sorted(changes.study) == ["grid-pca_mlp-hidden=4", "grid-pca_mlp-hidden=8"]
    assert set(changes.variant) == {"prune 50% [epochs=1]"}
    shown = CliRunner().invoke(app, ["show", str(out)])  # the grid's folder is not a study: it says where they are
    assert shown.exit_code == 2 and "models grid" in shown.output and "pca_mlp-hidden=4, pca_mlp-hidden=8" in shown.output
