"""The compression study end to end on a tiny grid: sharing, failures, tables, deployable files."""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.compress.quantization import QuantizeStep
from faircompress.config import load_config
from faircompress.store import ResultStore
from faircompress.study import plan, run_study

GRID = [
    [{"quantize": {"mode": "int8-weights"}}],
    [{"prune": {"sparsity": 0.5, "epochs": 1}}],
    [{"prune": {"sparsity": 0.5, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}],
    [{"cluster": {"clusters": 4, "epochs": 1}}, {"quantize": {"mode": "int8-static"}}],
    [{"quantize": {"mode": "int8-dynamic"}}],
]


@pytest.fixture
def grid_cfg(tiny_overrides):
    return load_config(None, {**tiny_overrides, "train.epochs": 1, "recipes": GRID, "repeats": 2})


def test_plan_expands_recipes_times_repeats_and_runs_quantisation_once(grid_cfg):
    specs = plan(grid_cfg)
    kinds = [s.kind for s in specs]
    assert kinds.count("baseline") == 1
    # fp32 export + int8 + int8-dynamic once each; three fine-tuned recipes x 2 repeats
    assert kinds.count("variant") == 3 + 3 * 2
    assert len({s.run_id for s in specs}) == len(specs)
    pruned = [s for s in specs if s.recipe and s.recipe.technique.startswith("prune")]
    assert {s.prefix_id for s in pruned if s.repeat == 0} == {pruned[0].prefix_id}  # shared by prune and prune+int8


def test_grid_runs_shares_fine_tuning_and_every_file_is_deployable(grid_cfg):
    report = run_study(grid_cfg)
    assert not report.failed
    out = Path(grid_cfg.output_dir)
    # 1 pruned and 1 clustered model per repeat, trained once each
    assert len(list(out.glob("models/*/model.safetensors"))) == 2 * 2
    store = ResultStore.open_existing(out)
    runs = store.runs()
    variants = runs[runs.kind == "variant"]
    for art in variants.artefact:
        path = Path(art) if Path(art).is_absolute() else out / art
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"pixels": np.zeros((2, 1, 16, 16), np.float32)})[0]
        assert y.shape == (2, 8)
    m = store.metrics().query("attribute == ''").pivot(index="run_id", columns="metric", values="value")
    size = dict(zip(variants.variant, m.loc[variants.run_id, "zipped_bytes"]))
    assert set(variants.technique) == {"baseline", "quantize", "prune", "prune + quantize", "cluster + quantize"}
    assert variants.is_reference.sum() == 1 and dict(zip(variants.variant, variants.level))["prune 50% [epochs=1]"] == 0.5
    assert size["prune 50% [epochs=1] + int8-weights"] < size["prune 50% [epochs=1]"] < size["baseline (fp32)"]
    assert size["int8-weights"] < 0.3 * size["baseline (fp32)"]
    assert {"latency_ms", "throughput_ips", "nonzeros", "parameters", "raw_bytes"} <= set(m.columns)
    store.close()
    res = CliRunner().invoke(app, ["show", str(out)])
    assert res.exit_code == 0 and "accuracy (%) by gender" in res.output
    md = (out / "tables" / "results.md").read_text()
    assert "| prune 50% [epochs=1] + int8-weights | 2 |" in md
    csv = (out / "tables" / "results.csv").read_text().splitlines()
    assert csv[0].startswith("variant,n,size_mb_mean,size_mb_std,accuracy_mean") and len(csv) == 1 + 6


def test_a_failing_variant_is_recorded_and_the_study_carries_on(tiny_overrides, monkeypatch):
    grid_cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "recipes": [GRID[0], GRID[-1]], "repeats": 1})
    real = QuantizeStep.transform

    def flaky(self, src, dst, calibration):
        if self.params.mode == "int8-dynamic":
            raise RuntimeError("quantiser exploded")
        return real(self, src, dst, calibration)

    monkeypatch.setattr(QuantizeStep, "transform", flaky)
    report = run_study(grid_cfg)
    assert len(report.failed) == 1 and "quantiser exploded" in next(iter(report.failed.values()))
    store = ResultStore.open_existing(grid_cfg.output_dir)
    runs = store.runs()
    assert (runs.status == "finished").sum() == len(runs) - 1
    store.close()
    res = CliRunner().invoke(app, ["show", str(grid_cfg.output_dir)])
    assert "failed runs" in res.output and "quantiser exploded" in res.output
    monkeypatch.setattr(QuantizeStep, "transform", real)
    again = run_study(grid_cfg)  # the failed variant is retried, the rest skipped
    assert len(again.ran) == 1 and not again.failed


def test_throughput_comes_from_the_timed_full_batches_of_the_test_pass():
    from faircompress.evaluate.runtime import throughput_from_batches

    # 300 images at batch 64: four full batches and a partial one; the first is a warm-up
    assert throughput_from_batches([9.0, 0.5, 0.5, 0.6, 0.01], 64, 300) == pytest.approx(128)
    assert throughput_from_batches([9.0, 0.5, 0.5], 64, 192) is None  # too few to time: measured apart
