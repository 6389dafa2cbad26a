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


def onnx_predict(sess, images: np.ndarray, batch: int = 256, seconds: list[float] | None = None) -> np.ndarray:
    """Predicted classes for uint8 images (N, C, H, W); appends each batch's run time to ``seconds``."""
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].astype(np.float32)
        t = time.perf_counter()
        logits = sess.run(None, {name: x})[0]
        if seconds is not None:
            seconds.append(time.perf_counter() - t)
        out.append(logits.argmax(1))
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def onnx_latency(sess, image_shape: tuple[int, ...], runs: int = 50) -> float:
    """CPU latency at batch 1: median of ``runs`` after 3 warm-up runs, in ms."""
    name = sess.get_inputs()[0].name
    one = np.random.default_rng(0).integers(0, 256, (1, *image_shape)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {name: one})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: one})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


MIN_TIMED_BATCHES = 3


def onnx_throughput(sess, image_shape: tuple[int, ...], batch: int = 64, runs: int = 5) -> float:
    """Images per second at ``batch``, from the median of ``runs`` timed batches after a warm-up."""
    name = sess.get_inputs()[0].name
    many = np.random.default_rng(0).integers(0, 256, (batch, *image_shape)).astype(np.float32)
    sess.run(None, {name: many})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: many})
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def throughput_from_batches(seconds: list[float], batch: int, n_images: int) -> float | None:
    """Images per second from the timed full batches of a prediction pass (the first is a warm-up);
    None when there are too few full batches to time."""
    full = seconds[1 : n_images // batch]
    return batch / statistics.median(full) if len(full) >= MIN_TIMED_BATCHES else None
