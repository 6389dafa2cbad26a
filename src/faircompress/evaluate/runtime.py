"""Inference on an exported file with ONNX Runtime: predictions, latency, throughput."""
from __future__ import annotations

import os
import statistics
import time

import numpy as np


def session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Predicted classes for uint8 images (N, C, H, W)."""
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: images[i : i + batch].astype(np.float32)})[0].argmax(1) for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def onnx_latency(sess, image_shape: tuple[int, ...], runs: int = 50, batch: int = 64, batch_runs: int = 5) -> dict[str, float]:
    """CPU latency at batch 1 (median of ``runs``, ms) and throughput at ``batch`` (images/s)."""
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, *image_shape)).astype(np.float32)
    many = rng.integers(0, 256, (batch, *image_shape)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {name: one})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: one})
        times.append(time.perf_counter() - t)
    sess.run(None, {name: many})
    t = time.perf_counter()
    for _ in range(batch_runs):
        sess.run(None, {name: many})
    per_batch = (time.perf_counter() - t) / batch_runs
    return {"latency_ms": 1000 * statistics.median(times), "throughput_ips": batch / per_batch}
