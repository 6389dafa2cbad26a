"""First load and cached reload of CK+ and RAF-DB at full scale, on fake trees in the published
layouts (CK+: 123 subjects, ~600 sequences of 20 frames at 640x490, about 330 labelled; RAF-DB basic:
15,339 aligned images with their annotation files). Targets: first load < 60 s, reload < 3 s.

Usage: python benchmarks/data_load.py [--dir /tmp/faircompress-fake-trees]  (trees are kept for reuse)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
from fakes import make_ckplus, make_rafdb  # noqa: E402

from faircompress.data.common import report_of  # noqa: E402
from faircompress.data.registry import load_dataset  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "faircompress-fake-trees"))
args = ap.parse_args()
trees = Path(args.dir)

ck, raf = trees / "CK+", trees / "RAF-DB-basic"
if not (ck / "Emotion").exists():
    t = time.perf_counter()
    info = make_ckplus(ck, subjects=123, sequences=5, frames=20, size=(640, 490), labelled=0.53, seed=1)
    print(f"built fake CK+: {info['sequences']} sequences, {info['labelled']} labelled, in {time.perf_counter() - t:.0f} s")
if not (raf / "EmoLabel").exists():
    t = time.perf_counter()
    make_rafdb(raf, train=12271, test=3068, seed=1)
    print(f"built fake RAF-DB: 15,339 images in {time.perf_counter() - t:.0f} s")

print(f"\n{'dataset':<8} {'images':>7} {'first load':>11} {'cached reload':>14}  targets: < 60 s, < 3 s")
for name, params in [("ckplus", {"root": ck}), ("rafdb", {"root": raf})]:
    cache = Path(tempfile.mkdtemp(prefix="faircompress-cache-"))
    try:
        t = time.perf_counter()
        ds = load_dataset(name, params, cache)
        first = time.perf_counter() - t
        t = time.perf_counter()
        again = load_dataset(name, params, cache)
        reload = time.perf_counter() - t
        assert len(again) == len(ds)
        kinds = dict(report_of(ds).kinds())
        print(f"{name:<8} {len(ds):>7} {first:>10.1f}s {reload:>13.2f}s  {'PASS' if first < 60 and reload < 3 else 'FAIL'}  problems: {kinds}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
