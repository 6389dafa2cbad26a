from __future__ import annotations

import os

import pytest

TINY_DATA = {"subjects": 12, "sequences": 18, "peak_frames": 2, "image_size": 16, "seed": 3}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Dataset caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("FAIRCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_overrides(tmp_path):
    """Config overrides for a study that trains in seconds."""
    return {
        "output_dir": str(tmp_path / "study"),
        "dataset.params": dict(TINY_DATA),
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.precision": "fp32",
        "train.device": "cpu",
        "evaluation.latency_runs": 3,
        "evaluation.memory": False,  # a child process per variant; tests/test_memory.py turns it on
        "recipes": [],
    }


def finished_mlp_study(overrides: dict, recipes: list, epochs: int, model: dict | None = None):
    """Run a tiny study of pca_mlp (hidden 30; or ``model``) with ``recipes``, one repeat, nothing
    measured but accuracy; check every run finished. Returns (output folder, open store, its runs)."""
    from pathlib import Path

    from faircompress.config import load_config
    from faircompress.store import ResultStore
    from faircompress.study import run_study

    cfg = load_config(None, {**overrides, "model": model or {"name": "pca_mlp", "params": {"hidden": 30}}, "train.epochs": epochs,
                             "evaluation.memory": False, "evaluation.latency": False, "recipes": recipes, "repeats": 1})
    run_study(cfg)
    out = Path(cfg.output_dir)
    store = ResultStore.open_existing(out)
    runs = store.runs()
    assert (runs.status == "finished").all(), runs[["status", "error"]]
    return out, store, runs


def plain_and_mitigated(overrides: dict, fine_tune: dict, step: tuple[str, dict] = ("prune", {"sparsity": 0.5, "epochs": 2}),
                        epochs: int = 1, model: dict | None = None) -> dict:
    """A tiny pca_mlp study (`finished_mlp_study`) of one compression step twice: plainly fine-tuned
    and with the ``fine_tune`` option. Returns, for 'plain' and 'mitigated': the variant's test
    predictions (``preds``), its fine-tuned weights (``weights``, before export) and ``details``;
    and the study's ``out`` folder."""
    import json

    from safetensors.torch import load_file

    from faircompress.config import load_config
    from faircompress.plan import plan

    name, params = step
    out, store, runs = finished_mlp_study(overrides, [[{name: params}], [{name: {**params, "fine_tune": fine_tune}}]], epochs, model)
    prefixes = {r.run_id: r.prefix_id for r in plan(load_config(out / "config.yaml")) if r.recipe is not None}
    found: dict = {"out": out}
    for role, technique in (("plain", name), ("mitigated", f"{name}-{fine_tune['objective']}")):
        run = runs[runs.technique == technique].iloc[0]
        found[role] = {"preds": store.predictions(run.run_id).y_pred.tolist(), "details": json.loads(run.details_json),
                       "weights": load_file(out / "models" / prefixes[run.run_id] / "model.safetensors")}
    store.close()
    return found


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


# A tiny study run through the CLI (so it ends with its report), shared by the report tests.
REPORT_GRID = [
    [{"quantize": {"mode": "int8-weights"}}],
    [{"prune": {"sparsity": 0.5, "epochs": 1}}],
    [{"prune": {"sparsity": 0.7, "epochs": 1}}],
    [{"prune": {"sparsity": 0.5, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}],
    [{"prune": {"sparsity": 0.5, "epochs": 1, "fine_tune": {"objective": "distill"}}}],  # the mitigation section's twin of the 2nd
]


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    overrides = {
        "output_dir": str(tmp / "study"), "dataset.params": {"subjects": 12, "sequences": 18, "peak_frames": 2, "image_size": 16, "seed": 3},
        "train.epochs": 1, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu",
        "evaluation.latency_runs": 3, "recipes": REPORT_GRID, "repeats": 2, "seeds": [0, 1],
    }
    from typer.testing import CliRunner  # imported here: torch loads after pytest_configure sets the threads

    from faircompress.cli import app
    from faircompress.config import dump_config, load_config

    cfg_file = tmp / "tiny.yaml"
    cfg_file.write_text(dump_config(load_config(None, overrides)))
    res = CliRunner().invoke(app, ["run", str(cfg_file)])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output
    return tmp / "study"
