"""End to end through the CLI: a tiny study, show, bad input, and kill-and-resume."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.store import ResultStore
from fakes import write_config

runner = CliRunner()




def test_tiny_study_runs_shows_and_skips_when_rerun(tmp_path, tiny_overrides):
    cfg = write_config(tmp_path / "study.yaml", {**tiny_overrides, "seeds": [0, 1]})
    res = runner.invoke(app, ["run", str(cfg), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "report:" not in res.output and not (Path(tiny_overrides["output_dir"]) / "report.html").exists()
    assert "accuracy (%) by gender" in res.output and "female" in res.output and "skin_tone" in res.output
    assert "training precision: fp32 on cpu (as train.precision sets it)" in res.output
    study = Path(tiny_overrides["output_dir"])
    store = ResultStore.open_existing(study)
    runs = store.runs()
    assert list(runs.status) == ["finished"] * 4 and list(runs.kind) == ["baseline", "baseline", "variant", "variant"]
    assert set(runs.seed) == {0, 1}
    assert (study / runs.artefact[0]).is_file() and str(runs.artefact[0]).endswith(".safetensors")
    assert str(runs.artefact[2]).endswith(".onnx")  # the fp32 export of each baseline is measured too
    assert not list(study.rglob("*.partial-*")) and not list(study.rglob("train_state*"))
    m = store.metrics()
    n_test = int(m.query("metric == 'n_test'").value.iloc[0])
    assert len(store.predictions(runs.run_id[0])) == n_test
    assert set(m[m.group != ""].attribute) == {"class", "gender", "skin_tone", "age"}
    assert (m.query("metric == 'gap'").group == "").all() and not m.metric.str.contains(":").any()  # no name encodes an attribute
    store.close()

    again = runner.invoke(app, ["run", str(cfg), "--no-report"])
    assert again.exit_code == 0 and "ran 0, skipped 4" in again.output
    shown = runner.invoke(app, ["show", str(study)])
    assert shown.exit_code == 0 and "seed=1" in shown.output and "baseline (fp32)" in shown.output


def test_test_selection_is_labelled_as_leaking(tmp_path, tiny_overrides):
    cfg = write_config(tmp_path / "s.yaml", {**tiny_overrides, "train.selection": "test", "train.epochs": 1})
    res = runner.invoke(app, ["run", str(cfg), "--no-report"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "leaks test data" in res.output


def test_bad_config_exits_2_naming_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epochs: -1\n  batch_sise: 3\n")
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2
    assert "train.epochs (line 2)" in res.output and "train.batch_sise (line 3): unknown field" in res.output
    assert "Traceback" not in res.output


TINY_CONFIG = "dataset: {params: {subjects: 12, sequences: 18, peak_frames: 2, image_size: 16}}\nrecipes: []\n"


@pytest.mark.parametrize(
    "content,args,message",
    [
        (b"name: caf\xe9\n", [], "line 1: not UTF-8 (byte 0xE9 at column 10)"),
        (b"# to do\n", [], "the config is empty (to run the built-in default study, give no config)"),
        (b"seeds: [0]\nseeds: [1]\n", [], "key 'seeds' is given twice (lines 1 and 2)"),
        (b"recipes: [[]]\n", [], "recipes.0 (line 1): an empty recipe is the fp32 baseline"),
        (TINY_CONFIG.encode(), ["--device", "cuda"], "train.device is 'cuda' but this machine has no CUDA device"),
    ],
)
def test_bad_inputs_exit_2_before_the_study_directory_is_made(tmp_path, monkeypatch, content, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "study.yaml"
    cfg.write_bytes(content)
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "study"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "study").exists()


def test_corrupt_store_and_unwritable_output_exit_cleanly(tmp_path, tiny_overrides):
    study = Path(tiny_overrides["output_dir"])
    study.mkdir(parents=True)
    (study / "results.sqlite").write_bytes(b"garbage" * 200)
    cfg = write_config(tmp_path / "s.yaml", tiny_overrides)
    res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2 and "not a usable results store" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["run", str(cfg), "--out", str(blocker / "study")])
    assert res.exit_code == 1 and "cannot write" in res.output  # the machine, not the input
    res = runner.invoke(app, ["show", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no results store" in res.output


def test_data_synth_writes_pngs_and_csv(tmp_path):
    out = tmp_path / "synth"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--seed", "1", "--image-size", "16", "--params", str(_params(tmp_path))])
    assert res.exit_code == 0, res.output
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,label,label_name,subject,split,gender,skin_tone,age"
    assert len(lines) - 1 == len(list(out.rglob("*.png"))) == 18 * 3
    from PIL import Image

    first = lines[1].split(",")[0]
    assert Image.open(out / first).size == (16, 16)
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--image-size", "4"])
    assert bad.exit_code == 2 and "image_size" in bad.output


def _params(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("subjects: 12\nsequences: 18\npeak_frames: 2\n")
    return p


@pytest.mark.slow
def test_killed_study_resumes_with_every_run_exactly_once(tmp_path, tiny_overrides):
    overrides = {**tiny_overrides, "seeds": [0, 1], "train.epochs": 3, "dataset.params": {**tiny_overrides["dataset.params"], "image_size": 32}}
    cfg = write_config(tmp_path / "s.yaml", overrides)
    study = Path(overrides["output_dir"])
    db = study / "results.sqlite"
    cmd = [sys.executable, "-m", "faircompress.cli", "run", str(cfg), "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def count(status):
        with sqlite3.connect(db) as c:
            try:
                return c.execute("SELECT COUNT(*) FROM runs WHERE status=? AND kind='baseline'", (status,)).fetchone()[0]
            except sqlite3.OperationalError:  # the store file exists but its tables are still being created
                return 0

    # kill once a run has finished and the next one is mid-training (its epoch state is on disk)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if db.exists() and count("finished") >= 1 and list(study.glob("runs/*/train_state.safetensors")):
            break
        assert proc.poll() is None, "study ended before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("study did not reach the kill point")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert count("finished") < 2 and count("running") == 1

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT seed, status, attempts FROM runs WHERE kind='baseline' ORDER BY seed").fetchall()
        preds = c.execute("SELECT run_id, COUNT(*), COUNT(DISTINCT sample) FROM predictions GROUP BY run_id").fetchall()
        epochs = c.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id").fetchall()
        n_runs = c.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs WHERE status='finished'").fetchone()
    assert [(s, st) for s, st, _ in rows] == [(0, "finished"), (1, "finished")]
    assert sorted(a for *_, a in rows)[-1] == 2  # the killed run was retried once
    assert n_runs == (4, 4)  # 2 baselines and their 2 fp32 exports, each exactly once
    assert len(preds) == 4 and all(n == d for _, n, d in preds)
    assert all(n == 3 for _, n in epochs)  # the resumed run kept the epochs it had finished
    assert not list(study.rglob("*.partial-*"))


def test_second_process_on_the_same_study_is_refused(tmp_path, tiny_overrides):
    from faircompress.study import study_lock

    study = Path(tiny_overrides["output_dir"])
    study.mkdir(parents=True)
    cfg = write_config(tmp_path / "s.yaml", tiny_overrides)
    with study_lock(study):
        res = runner.invoke(app, ["run", str(cfg)])
    assert res.exit_code == 2 and "another faircompress process" in res.output


def test_run_killed_after_training_reuses_its_checkpoint(tmp_path, tiny_overrides):
    from faircompress.config import load_config
    from faircompress.study import Hooks, run_study

    cfg = load_config(None, tiny_overrides)
    run_study(cfg)
    store = ResultStore.open_existing(cfg.output_dir)
    runs = store.runs()
    run_id = runs[runs.kind == "baseline"].run_id.iloc[0]
    before = store.predictions(run_id)
    # as if killed after the checkpoint was written but before the results were committed
    store.start_run(run_id, study="x", identity={"kind": "baseline", "label": "b", "seed": 0}, config={}, versions={}, git_commit="")
    store.close()

    class NoTraining(Hooks):
        def epoch(self, log):
            raise AssertionError("retrained although a checkpoint exists")

    report = run_study(cfg, NoTraining())
    assert report.ran == [run_id] and not report.failed
    store = ResultStore.open_existing(cfg.output_dir)
    assert store.predictions(run_id).equals(before)
    assert len(store.conn.execute("SELECT * FROM epochs WHERE run_id=?", (run_id,)).fetchall()) == 2
    store.close()


def test_a_progress_hook_error_does_not_mark_a_stored_run_failed(tiny_overrides):
    from faircompress.config import load_config
    from faircompress.study import Hooks, run_study

    class Broken(Hooks):
        def run_finished(self, spec, result):
            raise KeyError("display bug")

    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1})
    with pytest.raises(KeyError, match="display bug"):
        run_study(cfg, Broken())
    store = ResultStore.open_existing(cfg.output_dir)
    assert list(store.runs().status) == ["finished"]  # committed before the hook ran, and left so
    store.close()


def test_a_study_made_under_an_older_protocol_is_refused_with_the_reason(tiny_overrides, tmp_path):
    from faircompress.plan import PROTOCOL_VERSION

    study = Path(tiny_overrides["output_dir"])
    store = ResultStore(study)
    store.set_protocol(PROTOCOL_VERSION - 1)
    store.close()
    cfg = write_config(tmp_path / "s.yaml", tiny_overrides)
    res = runner.invoke(app, ["run", str(cfg)], terminal_width=300)
    assert res.exit_code == 2 and f"protocol {PROTOCOL_VERSION - 1}" in res.output and "BatchNorm follows Keras" in res.output
    assert "new directory" in res.output
