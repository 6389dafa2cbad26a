"""Memory per variant: the peak resident memory of loading and running each exported file, measured
in a child process of its own, stored with the run's scalars and shown beside size and latency."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.config import load_config
from faircompress.evaluate.memory import MemoryProbe, measure_memory, parse_probe
from faircompress.evaluate.memory_probe import increment_mb
from faircompress.plan import plan, result_fields
from faircompress.store import ResultStore
from faircompress.study import run_study

SIZE = 16


@pytest.fixture(scope="module")
def fp32_and_int8(tmp_path_factory):
    """The paper CNN exported by the project's export path, and its int8-weights file."""
    from faircompress.compress.export import export_onnx
    from faircompress.compress.recipes import parse_recipe
    from faircompress.models import build_model

    tmp = tmp_path_factory.mktemp("memory")
    model = build_model("paper_cnn", in_channels=1, num_classes=8, input_size=SIZE).eval()
    fp32 = export_onnx(model, tmp / "fp32.onnx", (1, SIZE, SIZE))
    step = parse_recipe([{"quantize": {"mode": "int8-weights"}}]).export_steps[0]
    step.transform(fp32, tmp / "int8.onnx", np.zeros((1, 1, SIZE, SIZE), np.uint8))
    return fp32, tmp / "int8.onnx"


def test_the_fp32_file_costs_more_memory_than_its_int8_weights_file(fp32_and_int8):
    fp32, int8 = (measure_memory(p, (1, SIZE, SIZE), batch=8) for p in fp32_and_int8)
    for use in (fp32, int8):
        assert use.note is None, use.note
        assert 0 < use.b1_mb <= use.batch_mb  # the batch's peak includes loading and batch 1
        assert use.base_mb > 10  # an interpreter with ONNX Runtime imported is not empty
    # 3.1 M weights: 12 MB as fp32, held in memory at least once; int8 codes are a quarter of that
    assert fp32.b1_mb > int8.b1_mb + 5 and fp32.batch_mb > int8.batch_mb + 5


def test_a_started_probe_runs_beside_the_parent_and_stops_when_unwanted(fp32_and_int8):
    # the study zips the file while the probe loads it; the figures are the child's own either way
    started = MemoryProbe(fp32_and_int8[0], (1, SIZE, SIZE), batch=8)
    assert started.child.poll() is None  # not waited for: the parent goes on
    use = started.result()
    assert use.note is None and 0 < use.b1_mb <= use.batch_mb, use
    unwanted = MemoryProbe(fp32_and_int8[0], (1, SIZE, SIZE), batch=8)
    unwanted.stop()  # the parent failed meanwhile: no child is left behind
    assert unwanted.child.poll() is not None


def test_a_corrupt_file_gives_no_figures_and_the_childs_reason(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"not a protobuf at all" * 50)
    use = measure_memory(bad, (1, SIZE, SIZE), batch=8)
    assert use.scalars() == {} and use.b1_mb is None and use.batch_mb is None
    assert "exited with status 1" in use.note and "onnxruntime" in use.note.lower(), use.note


def test_a_child_that_hangs_or_is_killed_gives_no_figures(fp32_and_int8):
    slow = measure_memory(fp32_and_int8[0], (1, SIZE, SIZE), batch=8, timeout_s=0.01)
    assert slow.scalars() == {} and "timed out after 0.01 s" in slow.note
    killed = parse_probe(-9, "", "")
    assert killed.scalars() == {} and "killed by signal 9" in killed.note
    for stdout in ("", "5\n", '{"base_mb": 50.0}\n'):  # nothing, not an object, fields missing
        garbled = parse_probe(0, stdout, "")
        assert garbled.scalars() == {} and "printed no result" in garbled.note


def test_a_crashing_probe_leaves_the_runs_memory_empty_and_says_why(tiny_overrides, tmp_path, monkeypatch):
    from faircompress.evaluate import memory
    from faircompress.plan import Hooks

    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.exit('segfault-like failure')\n")
    monkeypatch.setattr(memory, "PROBE", crash)
    notes: list[str] = []
    hooks = Hooks()
    hooks.note = notes.append
    cfg = load_config(None, {**tiny_overrides, "train.epochs": 1, "evaluation.memory": True})
    assert not run_study(cfg, hooks).failed
    variants, m = _stored(Path(cfg.output_dir))
    assert len(variants) == 1 and m.accuracy.notna().all() and m.latency_ms.notna().all()
    assert not {"peak_rss_mb_b1", "peak_rss_mb_batch", "rss_base_mb"} & set(m.columns)
    note = json.loads(variants.details_json.iloc[0])["memory"]["note"]
    assert note == "the memory probe exited with status 1: segfault-like failure"
    assert f"baseline (fp32) | seed=0: memory not measured ({note})" in notes
    shown = CliRunner().invoke(app, ["show", str(cfg.output_dir)])
    assert shown.exit_code == 0 and "latency ms (b=1)" in shown.output and "memory MB" not in shown.output


def test_the_probe_imports_neither_the_package_nor_torch():
    import ast

    from faircompress.evaluate import memory_probe

    tree = ast.parse(Path(memory_probe.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"__future__", "json", "sys", "pathlib", "numpy", "onnxruntime"}, imported  # its baseline stays ONNX Runtime's


def test_without_a_peak_reset_an_increment_is_reported_only_when_the_peak_rose_after_the_baseline():
    kib = 1024
    assert increment_mb(peak_kib=300 * kib, base_kib=50 * kib, floor_kib=None) == 250  # reset: the peak is the file's
    assert increment_mb(peak_kib=300 * kib, base_kib=50 * kib, floor_kib=200 * kib) == 250  # rose above the imports' peak
    assert increment_mb(peak_kib=200 * kib, base_kib=50 * kib, floor_kib=200 * kib) is None  # may be the imports' peak
    half = parse_probe(0, json.dumps({"base_mb": 50.0, "b1_mb": None, "batch_mb": 250.0, "method": "VmHWM since start (no reset)"}), "")
    assert half.scalars() == {"rss_base_mb": 50.0, "peak_rss_mb_batch": 250.0} and "could not be reset" in half.note


def test_memory_is_a_measurement_setting_and_on_keeps_the_run_ids_of_studies_made_before_it(tiny_overrides):
    on = load_config(None, {**tiny_overrides, "evaluation.memory": True, "recipes": [[{"quantize": {"mode": "int8-weights"}}]]})
    off = on.model_copy(update={"evaluation": on.evaluation.model_copy(update={"memory": False})})
    assert result_fields(on) == result_fields(off)  # not a result-changing field: never refused by the binding
    ids_on, ids_off = [r.run_id for r in plan(on)], [r.run_id for r in plan(off)]
    variants = [r for r in plan(on) if r.kind == "variant"]
    assert all("memory" not in r.identity["evaluation"] for r in variants)  # the identity variants had before memory
    assert ids_on[0] == ids_off[0] and set(ids_on[1:]).isdisjoint(ids_off[1:])  # baselines shared; turning memory on re-measures


@pytest.fixture(scope="module")
def int8_study(tmp_path_factory):
    from conftest import TINY_DATA

    out = tmp_path_factory.mktemp("study") / "study"
    cfg = load_config(None, {"output_dir": str(out), "dataset.params": dict(TINY_DATA), "train.epochs": 1, "train.batch_size": 8,
                             "train.precision": "fp32", "train.device": "cpu", "evaluation.latency_runs": 3,
                             "recipes": [[{"quantize": {"mode": "int8-weights"}}]]})
    report = run_study(cfg)
    assert not report.failed, report.failed
    return out


def _stored(study: Path):
    store = ResultStore.open_existing(study)
    try:
        runs = store.runs().set_index("run_id")
        m = store.metrics().query("attribute == ''").pivot(index="run_id", columns="metric", values="value")
    finally:
        store.close()
    variants = runs[runs.kind == "variant"]
    return variants, m.loc[variants.index]


def test_each_variant_run_stores_its_memory_and_how_it_was_read(int8_study):
    variants, m = _stored(int8_study)
    assert len(variants) == 2  # the fp32 export and int8-weights
    assert (m.peak_rss_mb_b1 > 0).all() and (m.peak_rss_mb_batch >= m.peak_rss_mb_b1).all() and (m.rss_base_mb > 10).all()
    by_variant = dict(zip(variants.variant, m.peak_rss_mb_b1))
    assert by_variant["baseline (fp32)"] > by_variant["int8-weights"]
    for details in variants.details_json:
        memory = json.loads(details)["memory"]
        assert memory["method"].startswith("VmHWM") and memory["note"] is None


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"[│|] {re.escape(label)} +[│|]", line))


def test_show_and_the_tables_report_memory_beside_size_and_latency(int8_study):
    variants, m = _stored(int8_study)
    shown = CliRunner().invoke(app, ["show", str(int8_study)])
    assert shown.exit_code == 0, shown.output
    assert "memory MB (b=1)" in shown.output and "memory MB (batched)" in shown.output
    md = (int8_study / "tables" / "results.md").read_text()
    header = next(line for line in md.splitlines() if "latency ms (b=1)" in line)
    assert header.index("latency ms (b=1)") < header.index("memory MB (b=1)") < header.index("memory MB (batched)")
    shown_table, md_table = shown.output.split("deployment measures")[1], md.split("### Deployment measures")[1]
    for label, run_id in zip(variants.variant, variants.index):
        b1, batch = f"{m.loc[run_id, 'peak_rss_mb_b1']:.1f}", f"{m.loc[run_id, 'peak_rss_mb_batch']:.1f}"
        assert re.search(rf" {b1} +│ +{batch} +│$", _row(shown_table, label)), _row(shown_table, label)
        assert _row(md_table, label).endswith(f"| {b1} | {batch} |")
    csv = (int8_study / "tables" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"peak_rss_mb_b1_mean", "peak_rss_mb_batch_mean"} <= set(csv)
