"""Shared helpers for the benchmarks: run a study quietly, read back per-seed predictions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from faircompress.config import load_config  # noqa: E402
from faircompress.plan import Hooks  # noqa: E402
from faircompress.store import ResultStore  # noqa: E402
from faircompress.study import run_study  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench"


def synthetic_data(cfg):
    """The synthetic dataset a config names (the default study's when ``cfg`` is the default config)."""
    from faircompress.data.registry import DATASETS, default_cache_dir, load_dataset

    return load_dataset("synthetic", DATASETS.get("synthetic").params.model_validate(cfg.dataset.params), default_cache_dir())


class PrintHooks(Hooks):
    def run_started(self, run, i, n): print(f"  training {run.label} ...", flush=True)
    def run_skipped(self, run): print(f"  {run.label}: finished earlier, reused", flush=True)
    def run_finished(self, run, r):
        secs = sum(v for k, v in r.timings.items())
        print(f"  {run.label}: test accuracy {r.scalar('accuracy'):.4f} ({r.precision}, {secs:.0f}s)", flush=True)

    def run_failed(self, run, e): print(f"  {run.label}: FAILED {e}", flush=True)
    def batch(self, *a): pass
    def epoch(self, log): pass
    def note(self, text): print(f"  {text}", flush=True)


def study_results(cfg, what: str):
    """Run (or reuse) the study ``cfg`` with progress printed; stop naming ``what`` if a run failed;
    its loaded results (`report.results.StudyResults`)."""
    from faircompress.report.results import load_results

    report = run_study(cfg, PrintHooks())
    if report.failed:
        raise SystemExit(f"{what}: runs failed: {report.failed}")
    store = ResultStore.open_existing(cfg.output_dir)
    try:
        return load_results(store)
    finally:
        store.close()


def run(name: str, overrides: dict) -> dict:
    """Run (or reuse) a study and return per-seed predictions with subjects and attributes."""
    cfg = load_config(None, {"output_dir": str(BENCH_DIR / name), "name": name, "recipes": [], **overrides})
    print(f"[{name}]", flush=True)
    report = run_study(cfg, PrintHooks())
    if report.failed:
        raise SystemExit(f"{name}: runs failed: {report.failed}")
    store = ResultStore.open_existing(cfg.output_dir)
    runs = store.runs()
    runs = runs[(runs.status == "finished") & (runs.kind == "baseline")].sort_values("seed")
    preds = [store.predictions(r) for r in runs.run_id]
    samples = store.conn.execute("SELECT sample, subject, attributes_json FROM samples ORDER BY sample").fetchall()
    groups = json.loads(store.conn.execute("SELECT attribute_groups_json FROM datasets").fetchone()[0])
    store.close()
    sample_ids = preds[0]["sample"].to_numpy()
    info = {s: (subj, json.loads(a)) for s, subj, a in samples}
    return {
        "precision": list(runs.precision),
        "correct": np.stack([(p.y_true == p.y_pred).to_numpy() for p in preds]),  # (seeds, N)
        "subjects": np.array([info[s][0] for s in sample_ids]),
        "attr": {a: np.array([info[s][1][a] for s in sample_ids]) for a in groups},
        "groups": groups,
    }
