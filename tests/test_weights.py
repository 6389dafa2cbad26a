"""The weights of the shipped files: spread numbers against hand values and known distributions, the
cut table beside the accuracy each level lost, per-kernel records, and the paper's histograms."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.report import weights as W
from faircompress.report.results import load_results
from faircompress.report.tables import scalar_means, variant_stats
from faircompress.store import ResultStore


def test_layer_spread_by_hand():
    w = np.array([[-4.0, -2.0, -1.0, 0.0, 1.0], [2.0, 4.0, 0.5, -0.5, 0.0]])
    got = W.layer_spread(w, [0.6])
    std = w.std()
    assert got["std"] == pytest.approx(std)
    assert got["near_zero"] == pytest.approx(np.mean(np.abs(w) <= 0.25 * std))
    # 60 % of 10 weights: the 6 smallest magnitudes are 0, 0, .5, .5, 1, 1 -> the cut is at 1
    assert got["cut_sd@0.6"] == pytest.approx(1.0 / std)
    assert got["energy_removed@0.6"] == pytest.approx((0.25 * 2 + 1 * 2) / np.sum(w ** 2))


def test_a_narrow_distribution_is_cut_closer_to_zero_than_a_wide_one():
    rng = np.random.default_rng(0)
    uniform, laplace = rng.uniform(-1, 1, 200_000), rng.laplace(0, 1, 200_000)
    u, lap = W.layer_spread(uniform.reshape(400, 500), [0.6]), W.layer_spread(laplace.reshape(400, 500), [0.6])
    assert u["cut_sd@0.6"] == pytest.approx(0.6 * np.sqrt(3), rel=0.01)          # 0.6 a, std a/sqrt(3)
    assert lap["cut_sd@0.6"] == pytest.approx(np.log(1 / 0.4) / np.sqrt(2), rel=0.02)  # b ln(1/0.4), std b sqrt(2)
    assert u["kurtosis"] == pytest.approx(-1.2, abs=0.02) and lap["kurtosis"] == pytest.approx(3.0, abs=0.2)
    assert lap["near_zero"] > u["near_zero"] and lap["energy_removed@0.6"] < u["energy_removed@0.6"]


@pytest.fixture(scope="module")
def loaded(study):
    store = ResultStore.open_existing(study)
    try:
        return load_results(store)
    finally:
        store.close()


def test_spread_and_cut_tables_of_the_study(study, loaded):
    spread = W.spread_table(loaded, study)
    assert set(spread.seed) == {0, 1}  # one row per baseline model and layer
    assert W.pruning_levels(loaded) == [0.5, 0.6, 0.7]
    summary = W.spread_summary(spread)
    assert len(summary) == spread.layer.nunique() and (summary["std"] > 0).all()
    accuracy = scalar_means(variant_stats(loaded)).accuracy
    cut = W.cut_table(loaded, spread, accuracy).set_index("sparsity")
    pruned = next(v for v in loaded.variants if v.technique == "prune" and v.level == 0.5)
    mean_acc = lambda v: np.mean([(loaded.preds[r] == loaded.y_true).mean() for r in v.run_ids])  # noqa: E731
    assert cut.loc[0.5, "accuracy change (pp)"] == pytest.approx(100 * (mean_acc(pruned) - mean_acc(loaded.reference)))
    assert np.isnan(cut.loc[0.6, "accuracy change (pp)"]) and cut.loc[0.6, "variant"] == "—"
    assert cut["cut (sd, size-weighted)"].is_monotonic_increasing and cut["energy removed"].is_monotonic_increasing


def test_kernel_table_records_each_files_kernels(loaded):
    kernels = W.kernel_table(loaded)
    pruned = kernels[kernels.variant.str.startswith("prune 70%") & ~kernels.variant.str.contains("int8")]
    assert not pruned.empty and (pruned.sparsity.between(0.69, 0.71)).all()
    quant = kernels[kernels.variant == "int8-weights"]
    assert (quant.dtype == "int8").all() and (quant["distinct values"] <= 256).all()


def test_histograms_show_the_papers_layers_and_the_users(study, loaded):
    variant, pairs = W.weight_pairs(loaded, study, [])
    assert variant.technique == "prune" and variant.level in (0.5, 0.7)
    names = list(pairs)
    assert pairs[names[0]][0].ndim == 4 and pairs[names[1]][0].ndim == 2  # the first conv, the first dense layer
    before, after = pairs[names[1]]
    assert np.mean(after == 0) == pytest.approx(variant.level, abs=0.01) and np.mean(before == 0) < 0.01
    every = W.float_weights(study, loaded.runs.set_index("run_id").artefact[loaded.reference.run_ids[0]])
    last = list(every)[-1]
    assert list(W.weight_pairs(loaded, study, [last])[1]) == names + ([last] if last not in names else [])
    with pytest.raises(W.UnknownLayer, match=r"--layer nope: not a weight of the study's files \(they have: .*weight"):
        W.weight_pairs(loaded, study, ["nope"])
    out = CliRunner().invoke(app, ["report", str(study), "--layer", "nope", "--bootstrap", "100"])
    assert out.exit_code == 2 and "--layer nope" in out.output


def test_histograms_choose_among_the_weights_compression_changed_and_add_the_largest():
    # pca_mlp: its descriptor filters and PCA map are fixed (never pruned); only its two dense layers change
    changed = {"hidden.weight": (2, 300), "out.weight": (2, 210)}
    every = ["lpq.kernels", "lpq_weight", "phog_weight", "hidden.weight", "out.weight"]
    assert W.histogram_layers(changed, every, []) == ["hidden.weight"]
    assert W.histogram_layers(changed, every, ["lpq_weight"]) == ["hidden.weight", "lpq_weight"]  # named: shown anyway
    # ResNet-18 at 48 px: the first conv, the head, and its largest kernel (a 3x3 conv of the last stage)
    resnet = {"conv1.weight": (4, 576), "layer4.1.conv2.weight": (4, 2_359_296), "layer1.0.conv1.weight": (4, 36_864), "fc.weight": (2, 4096)}
    assert W.histogram_layers(resnet, list(resnet), []) == ["conv1.weight", "fc.weight", "layer4.1.conv2.weight"]


def test_the_report_shows_sizes_weights_and_the_explanation(study):
    html = (study / "report.html").read_text()
    for stem in ("sizes", "weights-"):
        assert f'<img alt="{stem}' in html
    assert (study / "figures" / "sizes.png").is_file() and list((study / "figures").glob("weights-*.png"))
    for title in ("Weight spread of the baseline files", "Where each pruning level cuts, beside what it cost", "Layers of each file"):
        assert f"<h2>{title}</h2>" in html
    cut = pd.read_csv(study / "tables" / "report-pruning_cut.csv")
    assert list(cut.sparsity) == [0.5, 0.6, 0.7]
