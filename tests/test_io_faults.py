"""I/O faults: a full disk (a patched write, or a real RLIMIT_FSIZE) while a checkpoint, an ONNX file, a
figure or the store is written is one line naming the file and the cause; no partial file is left under
a final name, leftovers are removed at the next start, and a resume finishes every run exactly once."""
import errno
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from faircompress import train
from faircompress.atomic import EnvironmentFault, atomic_path, is_leftover, remove_leftovers, write_text_atomic
from faircompress.cli import app
from faircompress.config import dump_config, load_config
from faircompress.plan import plan
from faircompress.store import ResultStore, StoreError, StoreWriteError
from faircompress.study import run_study

runner = CliRunner()
NO_SPACE = "No space left on device"


def _torn_write(path) -> None:
    """What a write cut short by a full disk does: some bytes land, then the OS refuses the rest."""
    Path(path).write_bytes(b"\0" * 100)
    raise OSError(errno.ENOSPC, NO_SPACE)


@contextmanager
def _file_size_limit(n_bytes: int):
    """A real write limit (RLIMIT_FSIZE): writes past it fail with EFBIG (SIGXFSZ ignored, as Python does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_leftover(p)]


def _assert_complete_artefacts(study: Path) -> None:
    """Every checkpoint and ONNX file under its final name loads: none is partial."""
    import onnx
    from safetensors import safe_open

    for path in study.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    for path in study.rglob("*.onnx"):
        onnx.load(str(path))


def _assert_resume_finishes_every_run_once(cfg) -> None:
    report = run_study(cfg)
    assert not report.failed
    with sqlite3.connect(Path(cfg.output_dir) / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, status FROM runs").fetchall()
    assert sorted(rows) == sorted((r.run_id, "finished") for r in plan(cfg))
    assert not _partials(Path(cfg.output_dir))
    _assert_complete_artefacts(Path(cfg.output_dir))


def _statuses(study: Path) -> dict[str, str]:
    with sqlite3.connect(study / "results.sqlite") as c:
        return dict(c.execute("SELECT run_id, status FROM runs").fetchall())


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def cfg(tiny_overrides):
    return load_config(None, {**tiny_overrides, "train.epochs": 1, "seeds": [0, 1]})


# ----------------------------------------------------------------------------- the helpers themselves
def test_atomic_path_renames_a_complete_file_and_removes_a_failed_one(tmp_path):
    final = tmp_path / "sub" / "a.txt"
    write_text_atomic(final, "old")
    with pytest.raises(EnvironmentFault) as e:
        with atomic_path(final) as tmp:
            _torn_write(tmp)
    assert str(e.value) == f"{final}: cannot write ({NO_SPACE})"
    assert final.read_text() == "old" and not _partials(tmp_path)
    with pytest.raises(ValueError):  # not the machine's fault: raised as it is
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise ValueError("bug")
    assert final.read_text() == "old" and not _partials(tmp_path)
    with pytest.raises(EnvironmentFault, match="cannot write \\(Not a directory\\)"):
        write_text_atomic(final / "x.txt", "a file where a folder should be")


def test_remove_leftovers_removes_only_partial_files_of_dead_writers(tmp_path):
    dead = _dead_pid()
    keep = [tmp_path / "model.onnx", tmp_path / "a" / "notes.partial-x", tmp_path / "a" / "b.partial-1.txt",
            tmp_path / f"report.html.partial-{os.getppid()}"]  # a live process is still writing it
    gone = [tmp_path / f"model.onnx.partial-{dead}", tmp_path / "a" / "b" / f"fig.svg.partial-{os.getpid()}", tmp_path / "a" / ".tmpCokYWL"]
    for p in keep + gone:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert sorted(remove_leftovers(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_real_file_size_limit_is_one_line_naming_the_file(tmp_path):
    from faircompress.compress.export import export_onnx

    model, ckpt, onnx_file = torch.nn.Linear(1000, 1000), tmp_path / "model.safetensors", tmp_path / "model.onnx"
    with _file_size_limit(1 << 20):
        with pytest.raises(EnvironmentFault) as saved:  # safetensors reports it as its own error type
            train.save_checkpoint(model, ckpt)
        with pytest.raises(EnvironmentFault) as exported:
            export_onnx(model, onnx_file, (1, 1, 1000))
    assert str(saved.value) == f"{ckpt}: cannot write (File too large)"
    assert str(exported.value) == f"{onnx_file}: cannot write (File too large)"
    assert not ckpt.exists() and not onnx_file.exists() and not _partials(tmp_path)


def test_a_real_full_store_rolls_back_and_says_so(tmp_path):
    import numpy as np
    from test_store import _result, _start

    store = ResultStore(tmp_path)
    _start(store)
    big = _result()
    big.sample_ids, big.y_true, big.y_pred = np.arange(50_000), np.zeros(50_000, int), np.zeros(50_000, int)
    with _file_size_limit(200_000), pytest.raises(StoreWriteError) as e:
        store.finish_run("r1", big)
    assert str(e.value) == f"{store.path}: cannot write the results store (I/O error)" and "move" not in str(e.value)
    assert store.status("r1") == "running" and store.predictions("r1").empty
    store.finish_run("r1", _result())  # the store is fine once there is room
    assert store.status("r1") == "finished"
    store.close()


def test_a_store_the_machine_cannot_open_is_not_called_corrupt(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(StoreWriteError) as e:
        ResultStore(tmp_path)
    assert str(e.value) == f"{tmp_path / 'results.sqlite'}: cannot write the results store (cannot open the file)"
    monkeypatch.undo()
    (tmp_path / "results.sqlite").write_bytes(b"garbage" * 200)
    with pytest.raises(StoreError) as corrupt:
        ResultStore(tmp_path)
    assert not isinstance(corrupt.value, EnvironmentFault) and "move it aside" in str(corrupt.value)


# ----------------------------------------------------------------------------- a study under a full disk
def _write_config(path: Path, cfg) -> Path:
    path.write_text(dump_config(cfg))
    return path


def test_full_disk_while_saving_a_baseline_stops_the_study_and_a_resume_finishes(cfg, tmp_path, monkeypatch):
    study, first = Path(cfg.output_dir), plan(cfg)[0]
    real = train.save_file

    def save_file(tensors, filename, metadata=None):
        if Path(filename).name.startswith("model.safetensors"):
            _torn_write(filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(train, "save_file", save_file)
    res = runner.invoke(app, ["run", str(_write_config(tmp_path / "s.yaml", cfg))])
    ckpt = study / "runs" / first.run_id / "model.safetensors"
    assert res.exit_code == 1 and _error_line(res.output) == f"error: {ckpt}: cannot write ({NO_SPACE})"
    assert "missing" not in res.output  # no dependent run was tried
    assert _statuses(study) == {first.run_id: "failed"} and not ckpt.exists() and not _partials(study)
    monkeypatch.undo()
    _assert_resume_finishes_every_run_once(cfg)


def test_full_disk_while_exporting_a_variant_stops_the_study_and_a_resume_finishes(cfg, monkeypatch):
    study, runs = Path(cfg.output_dir), plan(cfg)
    variant = runs[2]
    monkeypatch.setattr(torch.onnx, "export", lambda module, args, f, **kw: _torn_write(f))
    with pytest.raises(EnvironmentFault) as e:
        run_study(cfg)
    exported = study / "models" / variant.prefix_id / "model.onnx"
    assert str(e.value) == f"{exported}: cannot write ({NO_SPACE})"
    assert _statuses(study) == {runs[0].run_id: "finished", runs[1].run_id: "finished", variant.run_id: "failed"}
    assert not exported.exists() and not _partials(study)
    monkeypatch.undo()
    _assert_resume_finishes_every_run_once(cfg)


@pytest.mark.parametrize("fail_run_too", [False, True], ids=["store-recovers", "store-stays-full"])
def test_full_disk_in_a_store_transaction_rolls_back_and_a_resume_finishes(tiny_overrides, monkeypatch, fail_run_too):
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1})
    study, first = Path(cfg.output_dir), plan(cfg)[0]

    def full(self, run_id, *args):
        with self.transaction() as c:
            c.execute("UPDATE runs SET status='finished' WHERE run_id=?", (run_id,))
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ResultStore, "finish_run", full)
    if fail_run_too:
        monkeypatch.setattr(ResultStore, "fail_run", full)
    with pytest.raises(StoreWriteError) as e:
        run_study(cfg)
    assert str(e.value) == f"{study / 'results.sqlite'}: cannot write the results store (disk full)"
    assert _statuses(study) == {first.run_id: "running" if fail_run_too else "failed"}  # 'finished' was rolled back
    monkeypatch.undo()
    _assert_resume_finishes_every_run_once(cfg)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    from conftest import TINY_DATA

    cfg = load_config(None, {"output_dir": str(tmp / "study"), "dataset.params": TINY_DATA, "train.epochs": 1, "train.batch_size": 8,
                             "train.precision": "fp32", "train.device": "cpu", "evaluation.latency_runs": 3, "recipes": []})
    assert not run_study(cfg).failed
    return cfg


def test_full_disk_while_writing_a_figure_leaves_no_torn_svg(finished_study, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    cfg = finished_study.model_copy(update={"output_dir": str(tmp_path / "study")})
    shutil.copytree(finished_study.output_dir, cfg.output_dir)
    study = Path(cfg.output_dir)
    real = Figure.savefig

    def savefig(self, fname, *args, format=None, **kwargs):
        if format == "svg":
            _torn_write(fname)
        return real(self, fname, *args, format=format, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    res = runner.invoke(app, ["report", str(study), "--bootstrap", "100"])
    svg = next((study / "figures").glob("*.png")).with_suffix(".svg")
    assert res.exit_code == 1 and _error_line(res.output) == f"error: {svg}: cannot write ({NO_SPACE})"
    assert not svg.exists() and not (study / "report.html").exists() and not _partials(study)
    monkeypatch.undo()
    res = runner.invoke(app, ["report", str(study), "--bootstrap", "100"])
    assert res.exit_code == 0 and svg.read_text().rstrip().endswith("</svg>")
    _assert_resume_finishes_every_run_once(cfg)


@pytest.mark.slow
def test_a_run_killed_mid_write_leaves_a_leftover_the_next_start_removes(tiny_overrides, tmp_path):
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1})
    study = Path(cfg.output_dir)
    # SIGXFSZ at its default kills the process at the first write past 1 MB: the training state, which
    # safetensors writes to a temp file of its own before the rename into our temp name
    killer = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
              "from faircompress.cli import main; sys.argv = ['faircompress', 'run', sys.argv[1]]; main()")
    proc = subprocess.run([sys.executable, "-c", killer, str(_write_config(tmp_path / "s.yaml", cfg))], capture_output=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr.decode()[-2000:]
    left = _partials(study)
    assert len(left) == 1 and not list(study.rglob("*.safetensors"))
    _assert_resume_finishes_every_run_once(cfg)


def test_a_cache_folder_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FAIRCOMPRESS_CACHE", str(blocker))
    res = runner.invoke(app, ["data", "check", "synthetic", "-p", "subjects=12", "-p", "sequences=18", "--cache"])
    assert res.exit_code == 1
    assert _error_line(res.output) == (f"error: {blocker}: cannot use as the dataset cache (not a folder); "
                                       "set FAIRCOMPRESS_CACHE to a writable folder")
