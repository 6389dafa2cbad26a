"""A tiny study killed at random points and starved of disk, then resumed: does every run end up
recorded exactly once, with no partial file left?

The study reads a file dataset (the generic folder layout, so content hashing, image decoding and
the dataset cache are part of every trial) and each trial has its own cache folder.
1. Runs the study once, uninterrupted, to time it and to keep its predictions as the reference.
2. 20 kills: each trial starts the study in a fresh directory, SIGKILLs it at a uniformly random
   moment of its run time, then resumes it (`faircompress run` again) to the end.
3. 5 full disks: each trial runs the study on a disk too small for it (a tmpfs of a size drawn
   log-uniformly between 256 kB and what the study needs, when this process may mount one; else a
   file-size limit, RLIMIT_FSIZE), so some write fails mid-study; the command must stop with exit
   status 1 and a one-line error; the disk then grows (or the limit goes) and the trial resumes.
After each resume: every planned run is finished exactly once (one row each, one prediction per
test sample), `faircompress verify` passes, no temporary (`*.partial-*`) file is left, and the
predictions equal the uninterrupted study's.

Usage: .venv/bin/python benchmarks/fault_campaign.py [--kills 20] [--disks 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from faircompress.atomic import is_leftover  # noqa: E402
from faircompress.config import dump_config, load_config  # noqa: E402
from faircompress.data.examples import make_folder  # noqa: E402
from faircompress.plan import plan  # noqa: E402

STUDY = {
    "dataset.name": "folder",
    "train.epochs": 3, "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu",
    "evaluation.latency_runs": 3, "seeds": [0, 1], "repeats": 1,
    "recipes": [[{"quantize": {"mode": "int8-weights"}}], [{"prune": {"sparsity": 0.5, "epochs": 1}}],
                [{"prune": {"sparsity": 0.5, "epochs": 1}}, {"quantize": {"mode": "int8-weights"}}]],
}


def command(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "faircompress.cli", "run", str(cfg), "--out", str(out / "study")]


def environment(trial: Path) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "300", "FAIRCOMPRESS_CACHE": str(trial / "cache")}


def run(cfg: Path, trial: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(command(cfg, trial), capture_output=True, text=True, env=environment(trial),
                          preexec_fn=limit if fsize else None, timeout=1800)


def mount_tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0


def starve(cfg: Path, trial: Path, size: int, tmpfs: bool) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run on a disk of ``size`` bytes (or with files capped at it), then resume with room."""
    if tmpfs:
        starved = run(cfg, trial)
        subprocess.run(["mount", "-o", "remount,size=4g", str(trial)], check=True)
        return starved, run(cfg, trial)
    return run(cfg, trial, fsize=size), run(cfg, trial)


def outcome(trial: Path, planned: set[str]) -> dict:
    """What the store, the study folder and the trial's cache hold after a resume."""
    out = trial / "study"
    with sqlite3.connect(out / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, status FROM runs").fetchall()
        preds = dict(((r, (n, d)) for r, n, d in
                      c.execute("SELECT run_id, COUNT(*), COUNT(DISTINCT sample) FROM predictions GROUP BY run_id")))
        n_test = c.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        predictions = c.execute("SELECT run_id, sample, y_pred FROM predictions ORDER BY run_id, sample").fetchall()
    finished = [r for r, s in rows if s == "finished"]
    once = (sorted(finished) == sorted(planned) and len(rows) == len(planned)
            and all(preds.get(r) == (n_test, n_test) for r in planned))
    verify = subprocess.run([sys.executable, "-m", "faircompress.cli", "verify", str(out)], capture_output=True, text=True)
    partial = [p for p in trial.rglob("*") if is_leftover(p)]
    return {"once": once, "verified": verify.returncode == 0, "partial": partial, "predictions": predictions}


def kill_at(cfg: Path, trial: Path, seconds: float) -> str:
    proc = subprocess.Popen(command(cfg, trial), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(trial))
    try:
        proc.wait(timeout=seconds)
        return "ended before the kill"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return "killed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--disks", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    make_folder(work / "faces")
    cfg_obj = load_config(None, {**STUDY, "dataset.params": {"root": str(work / "faces"), "image_size": 32}})
    cfg = work / "study.yaml"
    cfg.write_text(dump_config(cfg_obj))
    planned = {r.run_id for r in plan(cfg_obj)}

    t = time.perf_counter()
    ref = run(cfg, work / "reference")
    span = time.perf_counter() - t
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = outcome(work / "reference", planned)
    files = [p for p in (work / "reference").rglob("*") if p.is_file()]
    needed, largest = sum(p.stat().st_size for p in files), max(p.stat().st_size for p in files)
    tmpfs = mount_tmpfs(work / "probe", 1 << 20) and subprocess.run(["umount", str(work / "probe")]).returncode == 0
    print(f"study: {len(planned)} runs on a {len(list((work / 'faces').rglob('*.png')))}-image folder dataset, {span:.1f} s "
          f"uninterrupted; it writes {needed / 1e6:.1f} MB (largest file {largest / 1e6:.1f} MB); full disks: "
          f"{'a tmpfs that fills up (ENOSPC)' if tmpfs else 'RLIMIT_FSIZE (EFBIG): no tmpfs can be mounted here'}; work in {work}")

    trials = []
    for i in range(args.kills):
        at = rng.uniform(0.02, 0.98) * span
        trial = work / f"kill-{i:02d}"
        what = kill_at(cfg, trial, at)
        resumed = run(cfg, trial)
        trials.append((f"kill at {at:5.1f} s ({what})", resumed.returncode == 0, trial))
    for i in range(args.disks):
        size = int(math.exp(rng.uniform(math.log(256e3), math.log(needed if tmpfs else largest))))
        trial = work / f"disk-{i}"
        if tmpfs:
            mount_tmpfs(trial, size)
        starved, resumed = starve(cfg, trial, size, tmpfs)
        message = [line for line in starved.stderr.splitlines() if line.strip()]
        one_line = starved.returncode == 1 and len(message) == 1 and "cannot write" in message[0]
        what = f"exit {starved.returncode}, {'one line' if one_line else 'NOT one line'}: {message[0][-100:] if message else ''}"
        trials.append((f"disk of {size / 1e3:7.0f} kB ({what})", resumed.returncode == 0 and one_line, trial))

    once = partial = same = verified = 0
    for label, ok, trial in trials:
        res = outcome(trial, planned) if (trial / "study" / "results.sqlite").exists() else None
        good = bool(res and ok and res["once"])
        once += good
        partial += len(res["partial"]) if res else 0
        verified += bool(res and res["verified"])
        same += bool(res and res["predictions"] == reference["predictions"])
        print(f"  {label}: {'recorded once' if good else 'FAILED'}")
    n = len(trials)
    print(f"\nruns recorded once: {once}/{n}")
    print(f"artefacts verified: {verified}/{n}")
    print(f"predictions equal to the uninterrupted study's: {same}/{n}")
    print(f"partial files left: {partial}")
    for i in range(args.disks):
        subprocess.run(["umount", str(work / f"disk-{i}")], capture_output=True)


if __name__ == "__main__":
    main()
