"""The child process of `memory.measure_memory`: loads one .onnx file in ONNX Runtime, runs batch 1
and then the throughput batch, and prints the resident memory it saw as one JSON line.

Run as a script (``python -I memory_probe.py '{...}'``), never imported by the parent: it imports
only the standard library, NumPy and ONNX Runtime (never faircompress or torch), so the baseline it
measures is an interpreter with ONNX Runtime imported and nothing else.

Linux only: memory is read from /proc/self/status (VmRSS, and the peak VmHWM, the counter
``getrusage().ru_maxrss`` also reports). Writing "5" to /proc/self/clear_refs resets the peak to the
current RSS, so the peak afterwards is exactly that of loading and running the file. Where the reset
is refused, the peak still includes the imports' transient allocations: an increment is reported only
when the peak rose above it (then it happened after the baseline), else it is unknown (null).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RUNS = 2  # per batch size: the first run plans ONNX Runtime's memory pattern, the second reaches the steady peak


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status ('VmRSS', 'VmHWM'), in KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{STATUS} has no {field} line")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel refuses."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return status_kib("VmHWM") <= status_kib("VmRSS")


def increment_mb(peak_kib: int, base_kib: int, floor_kib: int | None) -> float | None:
    """Peak over the baseline RSS in MB. ``floor_kib``: the peak before loading where it could not be
    reset (None where it was); a peak that never rose above it may be the imports', so it is unknown."""
    if floor_kib is not None and peak_kib <= floor_kib:
        return None
    return (peak_kib - base_kib) / 1024


def images(shape: list[int], batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8).astype(np.float32)


def run_batches(sess: ort.InferenceSession, x: np.ndarray) -> None:
    name = sess.get_inputs()[0].name
    for _ in range(RUNS):
        sess.run(None, {name: x})


def probe(path: str, shape: list[int], batch: int, threads: int) -> dict:
    if not STATUS.exists():
        return {"error": "memory is read from /proc/self/status, which this system lacks (Linux only)"}
    one, many = images(shape, 1), images(shape, batch)  # made before the baseline: the caller's data, not the file's cost
    reset = reset_peak()
    base, floor = status_kib("VmRSS"), None if reset else status_kib("VmHWM")
    opts = ort.SessionOptions()
    if threads:  # as evaluate.runtime.session, which cannot be imported here (it would import the package)
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    run_batches(sess, one)
    b1 = status_kib("VmHWM")
    run_batches(sess, many)
    peak = status_kib("VmHWM")
    return {"base_mb": base / 1024, "b1_mb": increment_mb(b1, base, floor), "batch_mb": increment_mb(peak, base, floor),
            "method": "VmHWM reset by clear_refs" if reset else "VmHWM since start (no reset)"}


def main(argv: list[str]) -> int:
    args = json.loads(argv[1])
    out = probe(args["path"], args["shape"], args["batch"], args["threads"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
