import os
import sqlite3

import numpy as np
import pandas as pd
import pytest

from faircompress.store import SCHEMA_VERSION, ResultStore, RunResult, StoreError


def _result(n=5):
    return RunResult(
        metrics=pd.DataFrame({"metric": ["accuracy", "accuracy", "gap"], "attribute": ["", "gender", "gender"], "group": ["", "f", ""],
                              "value": [0.6, 0.6, 0.1]}),
        epochs=[{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "sel_loss": 1.1, "sel_acc": 0.4, "lr": 5e-4, "seconds": 1.0, "train_seconds": 0.9}],
        sample_ids=np.arange(n), y_true=np.zeros(n, int), y_pred=np.array([0, 0, 0, 1, 1][:n]), timings={"train_s": 1.0},
    )


def _start(store, run_id="r1"):
    store.start_run(run_id, study="s", identity={"kind": "baseline", "label": "b", "seed": 0}, config={"x": 1}, versions={"torch": "x"},
                    git_commit="abc")


def test_run_lifecycle_and_retry(tmp_path):
    store = ResultStore(tmp_path)
    _start(store)
    assert store.status("r1") == "running"
    _start(store)  # a retry after a crash
    store.finish_run("r1", _result())
    runs = store.runs()
    assert len(runs) == 1 and runs.status[0] == "finished" and runs.attempts[0] == 2
    assert runs.git_commit[0] == "abc" and '"torch"' in runs.versions_json[0]
    assert len(store.predictions("r1")) == 5
    m = store.metrics().set_index(["metric", "attribute", "group"]).value
    assert m[("accuracy", "", "")] == 0.6 and m[("accuracy", "gender", "f")] == 0.6 and m[("gap", "gender", "")] == 0.1


def test_a_failing_write_leaves_nothing_behind(tmp_path):
    store = ResultStore(tmp_path)
    _start(store)
    bad = _result()
    bad.y_pred = np.array([0, 0])  # fewer predictions than samples: zip stops early ...
    bad.sample_ids = np.array([1, 1, 2, 3, 4])  # ... and a duplicate sample violates the primary key
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_run("r1", bad)
    assert store.status("r1") == "running"
    assert store.metrics().empty and store.predictions("r1").empty


def test_restart_clears_partial_rows_of_an_unfinished_run(tmp_path):
    store = ResultStore(tmp_path)
    _start(store)
    store.conn.execute("INSERT INTO metrics VALUES ('r1', 'stale', '', '', 1.0)")
    _start(store)
    assert store.metrics().empty


def test_failed_run_is_recorded(tmp_path):
    store = ResultStore(tmp_path)
    _start(store)
    store.fail_run("r1", "RuntimeError: boom")
    r = store.runs()
    assert r.status[0] == "failed" and "boom" in r.error[0]


def test_corrupt_store_gives_a_clear_error(tmp_path):
    (tmp_path / ResultStore.FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable results store"):
        ResultStore(tmp_path)


def test_missing_store_and_unwritable_directory(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        ResultStore.open_existing(tmp_path / "nothing")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "afile"
            target.write_text("x")
            ro = target
        with pytest.raises(StoreError, match="cannot write|not a usable"):
            ResultStore(ro / "study")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_store_of_another_schema_version_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    store.conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    store.close()
    with pytest.raises(StoreError, match="schema 999"):
        ResultStore(tmp_path)


_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE runs (run_id TEXT PRIMARY KEY, study TEXT NOT NULL, kind TEXT NOT NULL, label TEXT NOT NULL, seed INTEGER NOT NULL,
    config_json TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL,
    timings_json TEXT, device TEXT, precision TEXT, selection TEXT, versions_json TEXT, git_commit TEXT, artefact TEXT, error TEXT,
    recipe_json TEXT, repeat INTEGER, baseline_id TEXT, details_json TEXT);
CREATE TABLE metrics (run_id TEXT NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (run_id, name));
CREATE TABLE class_metrics (run_id TEXT NOT NULL, class TEXT NOT NULL, count INTEGER, recall REAL, PRIMARY KEY (run_id, class));
CREATE TABLE group_metrics (run_id TEXT NOT NULL, attribute TEXT NOT NULL, grp TEXT NOT NULL, count INTEGER, accuracy REAL,
    PRIMARY KEY (run_id, attribute, grp));
INSERT INTO runs (run_id, study, kind, label, seed, config_json, status, recipe_json, repeat, baseline_id) VALUES
    ('b', 's', 'baseline', 'baseline seed=0', 0, '{}', 'finished', NULL, 0, NULL),
    ('ref', 's', 'variant', 'baseline (fp32) | seed=0', 0, '{}', 'finished', '[]', 0, 'b'),
    ('p', 's', 'variant', 'prune 50% + int8-weights | seed=0', 0, '{}', 'finished',
     '[{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "int8-weights"}}]', 0, 'b');
INSERT INTO metrics VALUES ('p', 'accuracy', 0.7), ('p', 'gap:gender', 0.1), ('p', 'zipped_bytes', 1000);
INSERT INTO group_metrics VALUES ('p', 'gender', 'female', 10, 0.8);
INSERT INTO class_metrics VALUES ('p', 'happy', 4, 0.5);
"""


def test_a_schema_1_store_is_migrated_in_place(tmp_path):
    with sqlite3.connect(tmp_path / ResultStore.FILENAME) as c:
        c.executescript(_V1)
    store = ResultStore(tmp_path)
    runs = store.runs().set_index("run_id")
    assert runs.loc["p", "variant"] == "prune 50% + int8-weights" and runs.loc["p", "technique"] == "prune + quantize"
    assert runs.loc["p", "level"] == 0.5 and runs.loc["ref", "is_reference"] == 1 and runs.loc["p", "is_reference"] == 0
    assert runs.loc["ref", "variant"] == "baseline (fp32)" and runs.loc["ref", "recipe_key"] != runs.loc["p", "recipe_key"]
    m = store.metrics().set_index(["metric", "attribute", "group"]).value
    assert m[("gap", "gender", "")] == 0.1 and m[("accuracy", "", "")] == 0.7 and m[("zipped_bytes", "", "")] == 1000
    assert m[("accuracy", "gender", "female")] == 0.8 and m[("count", "gender", "female")] == 10
    assert m[("accuracy", "class", "happy")] == 0.5 and m[("count", "class", "happy")] == 4
    assert store.protocol() == 1  # what every schema 1 store ran
    store.close()
    ResultStore(tmp_path).close()  # opens as schema 2 from now on
    with sqlite3.connect(tmp_path / ResultStore.FILENAME) as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert not c.execute("SELECT name FROM sqlite_master WHERE name IN ('group_metrics', 'class_metrics')").fetchall()


def test_split_counts_are_recorded_once_with_the_samples_and_added_to_an_older_store(tmp_path):
    store = ResultStore(tmp_path)
    samples = [(0, "s1", 1, '{"g": 0}')]
    counts = [("train", 1, '{"g": 0}', 7), ("val", 0, '{"g": 1}', 2)]
    store.record_samples("k", "d", ["a", "b"], {"g": ["x", "y"]}, samples)  # as a store made before counts were kept
    assert not store.has_split_counts("k") and store.split_counts("k").empty
    store.record_samples("k", "d", ["a", "b"], {"g": ["x", "y"]}, samples, counts)  # the next run adds them
    got = store.split_counts("k")
    assert list(got.itertuples(index=False, name=None)) == counts and store.sample_rows("k") == samples
    store.record_samples("k", "d", ["a", "b"], {"g": ["x", "y"]}, samples, [("train", 0, '{"g": 0}', 99)])  # once
    assert store.split_counts("k").n.tolist() == [7, 2]


def test_adopting_an_older_dataset_key_moves_its_split_counts(tmp_path):
    store = ResultStore(tmp_path)
    store.record_samples("old", "d", ["a"], {}, [(0, "s", 0, "{}")], [("train", 0, "{}", 5)])
    store.adopt(["old"], "new", {"dataset": "new", "plan": {}}, {})
    assert store.split_counts("new").n.tolist() == [5] and store.split_counts("old").empty
