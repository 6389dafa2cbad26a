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
    """Predicted classes for uint8 images (N, C, H, W) or float32 features (N, F, 1, 1); appends each
    batch's run time to ``seconds``."""
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


def _median_seconds(sess, x: np.ndarray, runs: int, warmup: int) -> float:
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _random_images(n: int, image_shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, *image_shape)).astype(np.float32)


def onnx_latency(sess, image_shape: tuple[int, ...], runs: int = 50) -> float:
    """CPU latency at batch 1: median of ``runs`` after 3 warm-up runs, in ms."""
    return 1000 * _median_seconds(sess, _random_images(1, image_shape), runs, warmup=3)


MIN_TIMED_BATCHES = 3


def onnx_throughput(sess, image_shape: tuple[int, ...], batch: int = 64, runs: int = 5) -> float:
    """Images per second at ``batch``, from the median of ``runs`` timed batches after a warm-up."""
    return batch / _median_seconds(sess, _random_images(batch, image_shape), runs, warmup=1)


def throughput_from_batches(seconds: list[float], batch: int, n_images: int) -> float | None:
    """Images per second from the timed full batches of a prediction pass (the first is a warm-up);
    None when there are too few full batches to time."""
    full = seconds[1 : n_images // batch]
    return batch / statistics.median(full) if len(full) >= MIN_TIMED_BATCHES else None
