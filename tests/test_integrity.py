"""A study is bound to one dataset and one plan; artefacts are checked; nothing is lost silently."""
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.data.examples import make_folder
from faircompress.store import ResultStore
from fakes import write_config

runner = CliRunner()




def _run(cfg: Path, *args: str):
    return runner.invoke(app, ["run", str(cfg), "--no-report", *args], terminal_width=400)  # binding and files, not reports


@pytest.fixture
def folder_study(tmp_path, tiny_overrides):
    """A tiny study on a file dataset (the generic folder layout), trained once."""
    make_folder(tmp_path / "faces")
    over = {**tiny_overrides, "train.epochs": 1, "dataset.name": "folder", "dataset.params": {"root": str(tmp_path / "faces"), "image_size": 16}}
    cfg = write_config(tmp_path / "study.yaml", over)
    res = _run(cfg)
    assert res.exit_code == 0, res.output
    return cfg, over, Path(over["output_dir"])


def test_a_changed_plan_is_refused_naming_the_fields_and_additions_are_allowed(folder_study, tmp_path):
    cfg, over, study = folder_study
    before = (study / "config.yaml").read_text()
    res = _run(write_config(tmp_path / "edited.yaml", {**over, "train.epochs": 3, "train.lr": 0.001}))
    assert res.exit_code == 2, res.output
    assert "train.epochs: 1 -> 3" in res.output and "train.lr: 0.0005 -> 0.001" in res.output and "--out" in res.output
    assert (study / "config.yaml").read_text() == before  # nothing in the study changed
    res = _run(write_config(tmp_path / "more.yaml", {**over, "seeds": [0, 1], "train.device": "cpu", "evaluation.latency": False}))
    assert res.exit_code == 0, res.output  # a new seed is more of the same question; device and latency change nothing
    from faircompress.report.results import load_results

    store = ResultStore.open_existing(study)
    reference = load_results(store).reference
    assert len(reference.run_ids) == 2  # one per seed: seed 0's export measured again without latency is not a repeat
    store.close()


def test_a_dataset_edited_in_place_is_refused_naming_the_file(folder_study, tmp_path):
    import os

    cfg, over, study = folder_study
    labels = tmp_path / "faces" / "labels.csv"
    header, *rows = labels.read_text().splitlines()
    cells = [r.split(",") for r in rows]
    col = header.split(",").index("path")
    i = next(i for i in range(1, len(cells)) if cells[i][1] != cells[0][1] and len(cells[i][col]) == len(cells[0][col]))
    cells[0][col], cells[i][col] = cells[i][col], cells[0][col]  # two images' labels swapped: same size
    stat = labels.stat()
    labels.write_text("\n".join([header, *(",".join(c) for c in cells)]) + "\n")
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    res = _run(cfg)
    assert res.exit_code == 2, res.output
    assert "1 file changed (faces/labels.csv)" in res.output and "Traceback" not in res.output


def test_report_scores_each_run_on_its_own_dataset_or_says_why_it_cannot(folder_study):
    cfg, over, study = folder_study
    with sqlite3.connect(study / "results.sqlite") as c:  # a store from before studies were bound, holding two datasets
        c.execute("INSERT INTO datasets VALUES ('other', 'folder', '[]', '{}')")
        c.execute("INSERT INTO samples VALUES ('other', 999999, 's', 0, '{}')")
        c.execute("UPDATE runs SET dataset_key = 'other' WHERE kind = 'variant'")
    res = runner.invoke(app, ["report", str(study)], terminal_width=400)
    assert res.exit_code == 2 and "2 different datasets" in res.output and "KeyError" not in res.output, res.output


def test_a_study_from_before_binding_is_adopted_when_its_test_set_is_the_same(folder_study):
    cfg, over, study = folder_study
    with sqlite3.connect(study / "results.sqlite") as c:
        c.execute("DELETE FROM meta WHERE key = 'binding'")
        for table in ("runs", "samples", "datasets"):
            c.execute(f"UPDATE {table} SET dataset_key = 'size-based-key'")
    res = _run(cfg)
    assert res.exit_code == 0 and "ran 0, skipped 2" in res.output, res.output
    store = ResultStore.open_existing(study)
    assert store.runs().dataset_key.nunique() == 1 and store.runs().dataset_key[0] != "size-based-key"
    store.close()


def test_verify_finds_missing_and_altered_files_and_run_rebuilds_them(folder_study):
    cfg, over, study = folder_study
    res = runner.invoke(app, ["verify", str(study)], terminal_width=400)
    assert res.exit_code == 0 and "2 files match their checksum" in res.output, res.output
    store = ResultStore.open_existing(study)
    runs = store.runs().set_index("kind")
    before = {k: store.predictions(r).y_pred.tolist() for k, r in store.runs().set_index("kind").run_id.items()}
    store.close()
    baseline, variant = study / runs.artefact["baseline"], study / runs.artefact["variant"]
    with open(baseline, "r+b") as fh:  # one flipped byte
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    variant.unlink()
    res = runner.invoke(app, ["verify", str(study)], terminal_width=400)
    assert res.exit_code == 1 and "missing" in res.output and "differs from the file" in res.output
    res = _run(cfg)
    assert res.exit_code == 0 and "rebuilding" in res.output and "ran 2" in res.output, res.output
    assert runner.invoke(app, ["verify", str(study)]).exit_code == 0
    store = ResultStore.open_existing(study)
    after = {k: store.predictions(r).y_pred.tolist() for k, r in store.runs().set_index("kind").run_id.items()}
    assert after == before and (store.runs().status == "finished").all() and len(store.runs()) == 2
    store.close()


def test_unreadable_images_are_counted_per_split_and_stop_the_study_above_the_limit(tmp_path, tiny_overrides):
    make_folder(tmp_path / "faces")
    bad = sorted((tmp_path / "faces").rglob("*.png"))[0]
    bad.write_bytes(b"not a png")
    over = {**tiny_overrides, "train.epochs": 1, "dataset.name": "folder", "dataset.params": {"root": str(tmp_path / "faces")}}
    res = _run(write_config(tmp_path / "s.yaml", over))
    assert res.exit_code == 2 and "could not be read, more than dataset.max_unreadable (1.0%)" in res.output, res.output
    assert not Path(over["output_dir"]).exists()  # refused before the study directory is made
    res = _run(write_config(tmp_path / "s.yaml", {**over, "dataset.max_unreadable": 0.5}))
    assert res.exit_code == 0 and "(1 unreadable)" in res.output, res.output


def test_a_bad_dataset_path_leaves_no_study_folder(tmp_path, tiny_overrides):
    over = {**tiny_overrides, "dataset.name": "rafdb", "dataset.params": {"root": str(tmp_path / "nowhere")}}
    res = _run(write_config(tmp_path / "s.yaml", over))
    assert res.exit_code == 2 and "nowhere" in res.output and "Traceback" not in res.output
    assert not Path(over["output_dir"]).exists()


def test_run_no_cache_reads_the_files(tmp_path, tiny_overrides, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAIRCOMPRESS_CACHE", str(cache))
    res = _run(write_config(tmp_path / "s.yaml", {**tiny_overrides, "train.epochs": 1}), "--no-cache")
    assert res.exit_code == 0 and not list(cache.glob("*.npz")), res.output


def test_an_old_study_is_adopted_only_when_every_dataset_and_config_fits_and_refusal_writes_nothing(folder_study):
    cfg, over, study = folder_study
    with sqlite3.connect(study / "results.sqlite") as c:  # as a schema-2 store holding two datasets: runs know none
        c.execute("DELETE FROM meta WHERE key = 'binding'")
        c.execute("UPDATE runs SET dataset_key = NULL")
        c.execute("INSERT INTO datasets VALUES ('zz-other', 'folder', '[]', '{}')")  # after the matching one
        c.execute("INSERT INTO samples VALUES ('zz-other', 0, 's', 0, '{}')")
        before = c.execute("SELECT run_id, dataset_key FROM runs").fetchall()
    res = _run(cfg)
    assert res.exit_code == 2 and "another test set" in res.output, res.output
    with sqlite3.connect(study / "results.sqlite") as c:
        assert c.execute("SELECT run_id, dataset_key FROM runs").fetchall() == before  # nothing moved
        assert c.execute("SELECT COUNT(*) FROM meta WHERE key = 'binding'").fetchone()[0] == 0
        c.execute("DELETE FROM samples WHERE dataset_key = 'zz-other'")
        c.execute("DELETE FROM datasets WHERE dataset_key = 'zz-other'")
        c.execute("UPDATE runs SET config_json = replace(config_json, '\"epochs\": 1', '\"epochs\": 7')")
    res = _run(cfg)
    assert res.exit_code == 2 and "train.epochs: 7 -> 1" in res.output, res.output


def test_a_run_is_scored_on_its_own_dataset_even_when_another_was_recorded_later(folder_study):
    cfg, over, study = folder_study
    shown = runner.invoke(app, ["show", str(study)], terminal_width=400).output
    with sqlite3.connect(study / "results.sqlite") as c:  # an older version recorded a second dataset after this one
        c.execute("INSERT INTO datasets VALUES ('zz-later', 'folder', '[\"a\"]', '{}')")
        c.execute("INSERT INTO samples VALUES ('zz-later', 0, 's', 0, '{}')")
    again = runner.invoke(app, ["show", str(study)], terminal_width=400)
    assert again.exit_code == 0 and again.output == shown


def test_damage_to_a_run_outside_the_plan_is_reported_not_rebuilt(tmp_path, tiny_overrides):
    over = {**tiny_overrides, "train.epochs": 1, "seeds": [0, 1]}
    assert _run(write_config(tmp_path / "two.yaml", over)).exit_code == 0
    study = Path(over["output_dir"])
    store = ResultStore.open_existing(study)
    runs = store.runs()
    store.close()
    seed1 = study / runs[(runs.kind == "baseline") & (runs.seed == 1)].artefact.iloc[0]
    seed1.write_bytes(seed1.read_bytes()[:-1] + b"\0")
    res = _run(write_config(tmp_path / "one.yaml", {**over, "seeds": [0]}))
    assert res.exit_code == 0 and "not in this config's plan" in res.output and "ran 0" in res.output, res.output
    assert seed1.exists()


def test_a_rebuilt_variant_does_not_reuse_its_unverified_fine_tuned_model(tmp_path, tiny_overrides):
    recipes = [[{"prune": {"sparsity": 0.5, "epochs": 1}}], [{"prune": {"sparsity": 0.5, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}]]
    over = {**tiny_overrides, "train.epochs": 1, "recipes": recipes, "repeats": 1}
    cfg = write_config(tmp_path / "s.yaml", over)
    assert _run(cfg).exit_code == 0
    study = Path(over["output_dir"])
    store = ResultStore.open_existing(study)
    runs = store.runs()
    before = {r: store.predictions(r).y_pred.tolist() for r in runs.run_id}
    store.close()
    quantised = study / runs[runs.technique == "prune + quantize"].artefact.iloc[0]
    (fine_tuned,) = (study / "models").glob("*/model.safetensors")
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(fine_tuned)
    save_file({k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in weights.items()}, fine_tuned)  # loads, but wrong
    quantised.unlink()
    res = _run(cfg)
    assert res.exit_code == 0 and res.output.count("rebuilding it") == 2 and "ran 2" in res.output, res.output
    store = ResultStore.open_existing(study)
    assert {r: store.predictions(r).y_pred.tolist() for r in runs.run_id} == before
    store.close()
    assert runner.invoke(app, ["verify", str(study)]).exit_code == 0
