"""The paper's tables beside a study's numbers, and `export --format stoychev` (the authors' metric files)."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.export.stoychev import ExportError, _require_groups, export_stoychev
from faircompress.report.paper import PaperVariant, comparison, paper_table, paper_variant, side_by_side
from faircompress.report.results import load_results
from faircompress.store import ResultStore

Q = {"quantize": {"mode": "int8-weights"}}


@pytest.mark.parametrize("recipe, row, stem", [
    ([], "baseline", "model_metrics"),
    ([Q], "quantised", "quantised_model_metrics"),
    ([{"prune": {"sparsity": 0.1}}], "pruned (10%)", "pruned_model_metrics_s10"),
    ([{"prune": {"sparsity": 0.6, "epochs": 1}}, Q], "pruned (60%) + quant.", "pruned_and_quantised_model_metrics_s60"),
    ([{"cluster": {"clusters": 16}}], "clustered (16 cl.)", "clustered_model_metrics_c16"),
    ([{"cluster": {"clusters": 4}}, Q], "clust. (4 cl.) + quant.", "clustered_and_quantised_model_metrics_c4"),
])
def test_recipes_get_the_papers_names(recipe, row, stem):
    named = paper_variant(recipe)
    assert (named.row, named.log_stem) == (row, stem)


@pytest.mark.parametrize("recipe", [
    [{"quantize": {"mode": "int8-static"}}],           # the paper quantised weights only
    [{"prune": {"sparsity": 0.125}}],                  # not a whole percent
    [{"prune": {"sparsity": 0.5}}, {"cluster": {"clusters": 8}}],
    [{"distill": {}}],
    [{"prune": {"sparsity": 0.5, "method": "random"}}],     # the paper pruned by magnitude
    [{"prune": {"sparsity": 0.5, "method": "percentile"}}],
    [{"prune": {"sparsity": 0.5, "scope": "global"}}],      # ... each kernel on its own
    [{"cluster": {"clusters": 8, "skip": ["first"]}}],     # ... and clustered every kernel
])
def test_other_recipes_have_no_paper_name(recipe):
    assert paper_variant(recipe) is None


def test_paper_tables_as_printed():
    t6, t7 = paper_table("ckplus"), paper_table("rafdb")
    assert paper_table("synthetic") is None
    assert (len(t6), len(t7)) == (26, 32)
    assert list(t6.columns) == ["size_mb", "overall", "female", "male"]
    assert t6.loc["baseline"].tolist() == [16.51, 67.96, 67.08, 69.44]
    assert t6.loc["clust. (4 cl.) + quant."].tolist() == [0.91, 43.57, 42.08, 46.06]
    assert t7.loc["pruned (90%) + quant.", "age_70_plus"] == 67.41
    assert t7.loc["quantised", "african_american"] == 86.75
    # every row of both tables is a name some recipe produces
    names = {PaperVariant(b, lv, q).row for b, levels in (("pruned", range(10, 100, 10)), ("clustered", (4, 8, 16, 32, 64, 128)))
             for lv in levels for q in (False, True)} | {"baseline", "quantised"}
    assert set(t6.index) <= names and set(t7.index) <= names


def _accuracy_by_run(study) -> tuple[pd.DataFrame, dict]:
    """Each exported model's correctness per test sample, straight from the store."""
    store = ResultStore.open_existing(study)
    try:
        runs = store.runs()
        preds = store.all_predictions()
        preds = preds[preds.run_id.isin(runs[(runs.kind == "variant") & (runs.status == "finished")].run_id)]
        samples = pd.read_sql_query("SELECT sample, label, attributes_json FROM samples", store.conn)
        groups = store.conn.execute("SELECT attribute_groups_json FROM datasets").fetchone()[0]
    finally:
        store.close()
    merged = preds.merge(samples, on="sample")
    merged["right"] = merged.y_pred == merged.label
    return merged, json.loads(groups)


def test_comparison_places_our_means_beside_the_paper(study):
    store = ResultStore.open_existing(study)
    try:
        res = load_results(store)
    finally:
        store.close()
    long = comparison(res, "ckplus")  # the matching does not depend on the dataset's images
    assert set(long.paper_row) == {"baseline", "quantised", "pruned (50%)", "pruned (50%) + quant."}  # Table 6 stops at 60 %
    assert "pruned (70%)" in set(comparison(res, "rafdb").paper_row)
    merged, _ = _accuracy_by_run(study)
    quant = next(v for v in res.variants if v.label == "int8-weights")
    ours = merged[merged.run_id.isin(quant.run_ids)].groupby("run_id").right.mean().mean() * 100
    row = long[(long.paper_row == "quantised") & (long.measure == "overall")].iloc[0]
    assert row.ours == pytest.approx(ours) and row.paper == 67.96 and row.difference == pytest.approx(ours - 67.96)
    wide = side_by_side(long)
    assert list(wide.columns) == ["variant", "paper's row", "size (MB)", "overall", "female", "male"]
    assert wide.iloc[0].variant == "baseline (fp32)" and wide.iloc[0]["overall"].endswith("(68.0)")
    assert comparison(res, "synthetic").empty


def test_export_writes_the_authors_files(study, tmp_path):
    done = export_stoychev(study, tmp_path)
    assert done.folder == tmp_path / "logs" and not done.skipped
    index = pd.read_csv(done.folder / "index.csv")
    assert sorted(index.file) == sorted(p.name for p in done.files)
    assert all(re.fullmatch(r"(model|quantised_model|pruned_model|pruned_and_quantised_model)_metrics(_s\d+)?_\d+", f) for f in index.file)
    merged, groups = _accuracy_by_run(study)
    assert set(index.run_id) == set(merged.run_id)  # every finished model, every seed and repeat
    n_classes = merged.label.max() + 1
    for r in index.itertuples():
        metrics = pickle.loads((done.folder / r.file).read_bytes())
        assert list(metrics) == ["size", "acc", "f_acc", "m_acc", "f_acc_breakdown", "f_acc_balanced", "m_acc_breakdown",
                                 "m_acc_balanced"]
        run = merged[merged.run_id == r.run_id]
        gender = run.attributes_json.map(lambda a: json.loads(a)["gender"])
        female = gender == groups["gender"].index("female")
        assert metrics["acc"] == pytest.approx(run.right.mean())
        assert metrics["f_acc"] == pytest.approx(run.right[female].mean())
        per_class = [run.right[female & (run.label == c)].mean() if (female & (run.label == c)).any() else np.nan
                     for c in range(len(metrics["f_acc_breakdown"]))]
        np.testing.assert_allclose(metrics["f_acc_breakdown"], per_class)
        assert metrics["f_acc_balanced"] == pytest.approx(np.nanmean(per_class))
        assert len(metrics["m_acc_breakdown"]) >= n_classes and isinstance(metrics["size"], int)
    # a second export replaces the first's files (none outlives its run)
    stale = index.file.iloc[0]
    index.assign(file=index.file.where(index.index > 0, "old_model_metrics_1")).to_csv(done.folder / "index.csv", index=False)
    (done.folder / "old_model_metrics_1").write_bytes(b"x")
    export_stoychev(study, tmp_path)
    assert not (done.folder / "old_model_metrics_1").exists() and (done.folder / stale).exists()


def test_export_names_the_groups_a_dataset_lacks(study):
    store = ResultStore.open_existing(study)
    try:
        res = load_results(store, intersections=False)
    finally:
        store.close()
    res.groups.pop("gender")
    with pytest.raises(ExportError, match=r"needs the groups gender: female, gender: male.*it has skin_tone"):
        _require_groups(res, study, rafdb=False)
    out = CliRunner().invoke(app, ["export", str(study), "--format", "nope"])
    assert out.exit_code == 2 and "export format 'nope' is unknown (known: stoychev)" in out.output


def test_a_rafdb_study_is_reported_beside_table_7_and_exported(tmp_path):
    from faircompress.config import dump_config, load_config
    from faircompress.data.examples import make_rafdb

    make_rafdb(tmp_path / "raf", train=24, test=16)
    cfg = load_config(None, {
        "output_dir": str(tmp_path / "study"), "dataset.name": "rafdb",
        "dataset.params": {"root": str(tmp_path / "raf"), "image_size": 16, "val_fraction": 0.25},
        "train.epochs": 1, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu", "evaluation.latency": False,
        "recipes": [[Q], [{"quantize": {"mode": "int8-static"}}]]})
    (tmp_path / "raf.yaml").write_text(dump_config(cfg))
    ran = CliRunner().invoke(app, ["run", str(tmp_path / "raf.yaml")])
    assert ran.exit_code == 0, ran.output
    page = (tmp_path / "study" / "report.html").read_text()
    assert "<h2>Beside the paper</h2>" in page and "Table 7 (RAF-DB)" in page and "(82.5)" in page  # baseline overall
    long = pd.read_csv(tmp_path / "study" / "tables" / "report-paper_comparison.csv")
    assert set(long.paper_row) == {"baseline", "quantised"}
    assert set(long.measure) == {"size (MB)", "overall", "female", "male", "Cauc.", "Af.-Am.", "Asian", "A0", "A1", "A2", "A3", "A4"}
    out = CliRunner().invoke(app, ["export", str(tmp_path / "study"), "--format", "stoychev", "--out", str(tmp_path / "x")])
    assert out.exit_code == 0, out.output
    assert "int8-static: not one of the paper's variants" in out.output
    files = sorted(p.name for p in (tmp_path / "x" / "logs_rafdb").iterdir() if p.name != "index.csv")
    assert [re.sub(r"_\d+$", "", f) for f in files] == ["model_metrics", "quantised_model_metrics"]
    metrics = pickle.loads((tmp_path / "x" / "logs_rafdb" / files[0]).read_bytes())
    assert list(metrics) == ["size", "acc", "f_acc", "m_acc", "caucasian_acc", "afamerican_acc", "asian_acc",
                             "age0_acc", "age1_acc", "age2_acc", "age3_acc", "age4_acc"]
    overall = long[(long.paper_row == "baseline") & (long.measure == "overall")].ours.iloc[0]
    assert metrics["acc"] * 100 == pytest.approx(overall)
