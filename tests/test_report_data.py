"""The report's data section (class and group counts per split, class shares within groups, the face
grid) and its training curves, on the shared tiny study and on small hand-made frames."""
import json
import re
import shutil
import sqlite3
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.data.composition import Composition
from faircompress.data.dataset import SPLITS
from faircompress.data.synthetic import SyntheticParams, generate
from faircompress.report.build import write_report
from faircompress.report.data_summary import NOT_RECORDED, class_counts, class_shares, group_counts
from faircompress.report.faces import LEFT_OUT, face_grid, pick_faces
from faircompress.report.results import StudyResults, Variant, load_results
from faircompress.report.training import plot_training, training_table
from faircompress.store import ResultStore

from conftest import TINY_DATA
from test_report import _printed_tables

DATA_TITLES = ["The data: images per class and split", "The data: images per group and split", "The data: each group"]


@pytest.fixture(scope="module")
def dataset():
    """The session study's dataset, generated here without the registry or its cache."""
    return generate(SyntheticParams(**TINY_DATA))


def _count(ds, split: str, mask: np.ndarray) -> int:
    return int((mask & (ds.split == SPLITS.index(split))).sum())


def test_class_and_group_counts_per_split_equal_the_datasets(study, dataset):
    classes = pd.read_csv(study / "tables" / "report-data_classes.csv")
    assert list(classes.columns) == ["class", *SPLITS] and list(classes["class"]) == dataset.class_names
    for row in classes.itertuples(index=False):
        c = dataset.class_names.index(row[0])
        assert list(row[1:]) == [_count(dataset, s, dataset.labels == c) for s in SPLITS], row
    groups = pd.read_csv(study / "tables" / "report-data_groups.csv", keep_default_na=False)
    expected = [(a, g, *[_count(dataset, s, dataset.attributes[a] == i) for s in SPLITS])
                for a, names in dataset.attribute_groups.items() for i, g in enumerate(names)]
    assert [tuple(r) for r in groups.itertuples(index=False)] == expected
    html = (study / "report.html").read_text()
    assert all(t in html for t in DATA_TITLES) and html.index("CEV and SDE") < html.index(DATA_TITLES[0])
    assert "were not recorded" not in html


def test_class_shares_sum_to_one_within_each_group_and_match_the_dataset(study, dataset):
    shares = pd.read_csv(study / "tables" / "report-data_class_shares.csv", keep_default_na=False, na_values=[""])
    classes = dataset.class_names
    seen = shares[shares.images > 0]
    assert len(seen) and np.allclose(seen[classes].sum(axis=1), 1.0)
    assert shares[shares.images == 0][classes].isna().all().all()
    female = shares[(shares.attribute == "gender") & (shares.group == "female") & (shares.split == "train")].iloc[0]
    in_group = (dataset.attributes["gender"] == 0) & (dataset.split == SPLITS.index("train"))
    assert female.images == in_group.sum()
    assert np.allclose(female[classes].astype(float), [(dataset.labels[in_group] == c).mean() for c in range(len(classes))])


def test_tables_from_a_hand_made_composition():
    comp = Composition(np.array(["train", "train", "val", "test"]), np.array([0, 1, 1, 0]),
                       {"g": np.array([0, 0, 1, -1])}, np.array([3, 1, 2, 5]))
    assert class_counts(comp, ["a", "b"], SPLITS).to_dict("list") == {"class": ["a", "b"], "train": [3, 1], "val": [0, 2], "test": [5, 0]}
    groups = group_counts(comp, {"g": ["x", "y"]}, SPLITS)
    assert groups.values.tolist() == [["g", "x", 4, 0, 0], ["g", "y", 0, 2, 0], ["g", "unknown", 0, 0, 5]]
    shares = class_shares(comp, ["a", "b"], {"g": ["x", "y"]}, SPLITS).set_index(["split", "group"])
    assert shares.loc[("train", "x"), ["images", "a", "b"]].tolist() == [4, 0.75, 0.25]
    assert shares.loc[("val", "y"), "b"] == 1.0 and shares.loc[("test", "unknown"), "a"] == 1.0
    assert shares.loc[("val", "x"), "images"] == 0 and np.isnan(shares.loc[("val", "x"), "a"])
    assert Composition.from_rows(pd.DataFrame(comp.rows(), columns=["split", "label", "attributes_json", "n"]), ["g"]).rows() == comp.rows()


def test_data_check_prints_the_counts_and_shares_the_report_holds(dataset):
    args = [f"{k}={v}" for k, v in TINY_DATA.items()]
    res = CliRunner().invoke(app, ["data", "check", "synthetic", *sum((["-p", a] for a in args), []), "--no-cache"])
    assert res.exit_code == 0, res.output
    tables = dict(_printed_tables(res.output))
    per_class = {r["class"]: r for r in tables["images per class and split"]}
    for c, name in enumerate(dataset.class_names):
        assert [int(per_class[name][s]) for s in SPLITS] == [_count(dataset, s, dataset.labels == c) for s in SPLITS]
    rows = tables["share (%) of each class within each gender group, per split"]
    male_test = next(r for r in rows if r["gender"] == "male" and r["split"] == "test")
    in_group = (dataset.attributes["gender"] == 1) & (dataset.split == SPLITS.index("test"))
    for c, name in enumerate(dataset.class_names):
        assert float(male_test[name]) == pytest.approx(100 * (dataset.labels[in_group] == c).mean(), abs=0.05)


def _copy(study, tmp_path):
    """The study without its trained weights (the ONNX files stay: the weights figure reads them)."""
    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    return copy


def test_a_store_without_recorded_train_and_val_counts_still_reports(study, tmp_path, dataset):
    copy = _copy(study, tmp_path)
    with sqlite3.connect(copy / "results.sqlite") as c:
        c.execute("DROP TABLE split_counts")  # as a store written before they were kept
    rep = write_report(copy, n_boot=100)
    assert not rep.missing
    classes = rep.tables["data_classes"]
    assert list(classes.columns) == ["class", "test"]
    assert classes.test.tolist() == [_count(dataset, "test", dataset.labels == c) for c in range(len(dataset.class_names))]
    assert set(rep.tables["data_class_shares"].split) == {"test"}
    html = rep.html.read_text()
    assert NOT_RECORDED.replace("'", "&#x27;") in html and all(t in html for t in DATA_TITLES)


def test_no_faces_leaves_the_face_grid_out_of_the_report_and_the_folder(study, tmp_path):
    copy = _copy(study, tmp_path)
    assert (copy / "figures" / "faces.png").is_file()  # the run's report has the grid ...
    assert '<img alt="faces"' in (copy / "report.html").read_text()
    res = CliRunner().invoke(app, ["report", str(copy), "--no-faces", "--bootstrap", "100"])
    assert res.exit_code == 0, res.output
    html = (copy / "report.html").read_text()
    assert '<img alt="faces"' not in html and LEFT_OUT in html  # ... this one says it left it out
    assert not list((copy / "figures").glob("faces.*"))
    alts = re.findall(r'<img alt="([^"]+)"', html)
    assert sorted(alts) == sorted(p.stem for p in (copy / "figures").glob("*.png"))


def test_run_passes_no_faces_to_the_report_it_writes(study, tmp_path, monkeypatch):
    import faircompress.cli as cli
    import faircompress.study as study_module

    written = {}
    monkeypatch.setattr(study_module, "run_study", lambda cfg, hooks: study_module.StudyReport([], [], {}))
    monkeypatch.setattr(cli, "_show", lambda study_dir: None)
    monkeypatch.setattr(cli, "_report", lambda study_dir, n_boot, faces=True: written.update(faces=faces))
    res = CliRunner().invoke(app, ["run", str(study.parent / "tiny.yaml"), "--out", str(tmp_path / "s"), "--no-faces"])
    assert res.exit_code == 0, res.output
    assert written == {"faces": False}


def test_the_face_grid_says_why_when_the_dataset_is_not_here(study, tmp_path):
    store = ResultStore.open_existing(study)
    try:
        res = load_results(store)
    finally:
        store.close()

    def with_dataset(dataset: dict) -> StudyResults:
        configs = [json.dumps({**json.loads(c), "dataset": dataset}) for c in res.runs.config_json]
        return replace(res, runs=res.runs.assign(config_json=configs))

    path, why = face_grid(res, tmp_path)
    assert path == tmp_path / "faces.png" and path.is_file() and why == ""
    path, why = face_grid(with_dataset({"name": "ckplus", "params": {"root": str(tmp_path / "CK+")}, "cache": False}), tmp_path)
    assert path is None and why == f"No face grid: the ckplus dataset is not here ({tmp_path / 'CK+' / 'cohn-kanade-images'} is missing)."
    assert not list(tmp_path.glob("faces.*"))  # the earlier grid is gone with it
    path, why = face_grid(with_dataset({"name": "synthetic", "params": {**TINY_DATA, "seed": 4}}), tmp_path)
    assert path is None and "not the one the study was run on" in why


def test_faces_are_picked_the_same_way_every_time_from_distinct_subjects(dataset):
    picked = pick_faces(dataset)
    assert {c: i.tolist() for c, i in picked.items()} == {c: i.tolist() for c, i in pick_faces(dataset).items()}
    train = set(dataset.indices("train").tolist())
    for c, idx in picked.items():
        assert len(idx) <= 4 and (dataset.labels[idx] == c).all()
        if len(idx) and (dataset.labels[dataset.indices("train")] == c).any():
            assert set(idx.tolist()) <= train
    assert any(len(set(dataset.subjects[i])) == len(i) == 4 for i in picked.values())


def test_the_training_curves_mark_each_baselines_stored_best_epoch(study):
    html = (study / "report.html").read_text()
    assert '<img alt="training-curves"' in html and (study / "figures" / "training-curves.svg").is_file()
    collapsed = re.search(r'<details class="figures"><summary>[^<]+</summary><figure><img alt="([^"]+)"', html)
    assert collapsed and collapsed.group(1) == "fine-tuning-curves"
    table = pd.read_csv(study / "tables" / "report-training.csv", keep_default_na=False)
    store = ResultStore.open_existing(study)
    try:
        metrics, epochs, runs = store.metrics(), store.epochs(), store.runs().set_index("run_id")
    finally:
        store.close()
    best = metrics[metrics.metric == "best_epoch"].set_index("run_id").value
    base = table[table.kind == "baseline"]
    assert set(base.run_id) == set(runs.index[runs.kind == "baseline"]) == set(best.index)
    chosen = base[base.selected].set_index("run_id").epoch
    assert chosen.sort_index().tolist() == best.sort_index().astype(int).tolist()
    for run_id, h in epochs[epochs.run_id.isin(best.index)].groupby("run_id"):  # the kept epoch: the best selection accuracy
        assert h.epoch.iloc[int(np.argmax(h.sel_acc.to_numpy()))] == best[run_id]
    tuned = table[table.kind == "variant"]
    assert set(tuned.technique) == {"prune", "prune + quantize", "prune-distill"} and not tuned.selected.any()  # int8-weights alone: nothing
    tuned_epochs = metrics[metrics.metric == "fine_tune_epochs"].set_index("run_id").value
    assert tuned.groupby("run_id").size().to_dict() == {r: int(n) for r, n in tuned_epochs.items() if n > 0}


def _hand_made_study() -> StudyResults:
    """Two baselines trained 4 epochs (kept: 3 and 2, not the last) and one fine-tuned variant run."""
    runs = pd.DataFrame({"run_id": ["a", "b", "v"], "kind": ["baseline", "baseline", "variant"], "status": "finished",
                         "seed": [0, 1, 0], "repeat": [0, 0, 0]})
    sel = {"a": [0.3, 0.5, 0.7, 0.6], "b": [0.4, 0.8, 0.6, 0.75], "v": [0.5, 0.55]}
    epochs = pd.DataFrame([{"run_id": r, "epoch": e + 1, "train_loss": 1.0 - 0.1 * e, "train_acc": 0.5 + 0.1 * e, "sel_loss": 1.0 - acc,
                            "sel_acc": acc} for r, accs in sel.items() for e, acc in enumerate(accs)])
    variant = Variant("k1", "prune 50%", "prune", 0.5, False, ("v",))
    return StudyResults(class_names=["x"], groups={}, codes={}, subjects=np.array(["s"]), y_true=np.zeros(1, int), runs=runs,
                        variants=[variant], preds={}, scalars=pd.DataFrame({"best_epoch": [3.0, 2.0]}, index=["a", "b"]), epochs=epochs)


def test_the_selected_epoch_is_the_stored_one_in_the_table_and_the_figure():
    table = training_table(_hand_made_study())
    assert table[table.selected].set_index("run_id").epoch.to_dict() == {"a": 3, "b": 2}
    assert table.run_id.tolist() == ["a"] * 4 + ["b"] * 4 + ["v"] * 2 and table[table.run_id == "v"].variant.eq("prune 50%").all()
    fig = plot_training(table[table.kind == "baseline"])
    try:
        for ax, values in zip(fig.axes, ([70.0, 80.0], [0.3, 0.2])):  # accuracy in %, loss
            stars = next(c for c in ax.collections if c.get_label() == "selected epoch")
            assert np.allclose(stars.get_offsets(), np.column_stack([[3, 2], values]))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
