"""Side by side with the paper's own stack (tf-keras + tfmot + TFLite) on one slice of the default study.

The slice: the paper CNN trained 20 epochs on the default synthetic set, then int8 (TFLite's dynamic
range / our int8-weights), magnitude pruning to 50 % with 2 fine-tuning epochs and 16 clusters with 3,
each exported and scored on the test set. Ours runs as a faircompress study (1 repeat, latency and
memory probes off: the Keras side measures neither); the paper's runs in a child process of a Python
that has TensorFlow, from the same arrays, so faircompress never imports or depends on TensorFlow.
Both sides train as their defaults do on this machine (ours: `precision: auto`; Keras: fp32, its default).

Usage: .venv/bin/python benchmarks/paper_stack.py --tf-python /path/to/venv-with-tensorflow/bin/python
(that venv: pip install 'tensorflow==2.19.*' 'tf-keras==2.19.*' tensorflow-model-optimization)
Target (issue 23): ours >= 4.5x faster on an AMX machine, >= 3.5x on an AVX2-only one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import synthetic_data  # noqa: E402

from faircompress.config import load_config  # noqa: E402
from faircompress.study import run_study  # noqa: E402

SLICE = [[{"quantize": {"mode": "int8-weights"}}], [{"prune": {"sparsity": 0.5, "epochs": 2}}], [{"cluster": {"clusters": 16, "epochs": 3}}]]

KERAS = r'''
import json, os, sys, time, tempfile
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tfmot needs Keras 2 (tf-keras)
import numpy as np, tensorflow as tf, tf_keras as keras, tensorflow_model_optimization as tfmot
L = keras.layers
d = np.load(sys.argv[1])
x = {s: d[f"x_{s}"].transpose(0, 2, 3, 1).astype("float32") for s in ("train", "val", "test")}  # NHWC, raw 0..255
y = {s: d[f"y_{s}"] for s in ("train", "val", "test")}
k = int(d["classes"])
tf.keras.utils.set_random_seed(0)

def model():
    inp = L.Input(x["train"].shape[1:])
    h = inp
    for filters, size in [(64, 3), (128, 5), (512, 3), (512, 3)]:
        h = L.Conv2D(filters, size, padding="same")(h); h = L.BatchNormalization()(h); h = L.Activation("relu")(h)
        h = L.MaxPooling2D(2)(h); h = L.Dropout(0.25)(h)
    h = L.Flatten()(h)
    for units in (256, 512):
        h = L.Dense(units)(h); h = L.BatchNormalization()(h); h = L.Activation("relu")(h); h = L.Dropout(0.25)(h)
    return keras.Model(inp, L.Dense(k, activation="softmax")(h))

augment = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(10 / 360, fill_mode="nearest")])
train = (tf.data.Dataset.from_tensor_slices((x["train"], y["train"])).shuffle(len(y["train"]), seed=0).batch(32)
         .map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2))

def fit(m, epochs, extra=()):
    m.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tempfile.mktemp(suffix=".h5")
    cbs = [keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.1, patience=2, min_lr=1e-5),
           keras.callbacks.ModelCheckpoint(path, "val_accuracy", save_best_only=True, save_weights_only=True), *extra]
    m.fit(train, epochs=epochs, validation_data=(x["val"], y["val"]), callbacks=cbs, verbose=0)
    m.load_weights(path)
    return m

def tflite_accuracy(m, quantize):
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    if quantize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    interp = tf.lite.Interpreter(model_content=conv.convert())
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    hits = 0
    for a, b in zip(x["test"], y["test"]):
        interp.set_tensor(i, a[None]); interp.invoke(); hits += int(interp.get_tensor(o).argmax() == b)
    return hits / len(y["test"])

out, t = {}, time.perf_counter()
base = fit(model(), 20)
out["baseline training"] = time.perf_counter() - t
t = time.perf_counter(); out["baseline accuracy"] = tflite_accuracy(base, False); out["int8 accuracy"] = tflite_accuracy(base, True)
out["baseline and int8 export + test"] = time.perf_counter() - t
base_weights = base.get_weights()

t = time.perf_counter()
m = model(); m.set_weights(base_weights)
pruned = tfmot.sparsity.keras.prune_low_magnitude(m, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=32))
pruned = fit(pruned, 2, [tfmot.sparsity.keras.UpdatePruningStep()])
out["prune 50% accuracy"] = tflite_accuracy(tfmot.sparsity.keras.strip_pruning(pruned), False)
out["prune 50% (2 epochs) + export + test"] = time.perf_counter() - t

t = time.perf_counter()
m = model(); m.set_weights(base_weights)
C = tfmot.clustering.keras
clustered = fit(C.cluster_weights(m, number_of_clusters=16, cluster_centroids_init=C.CentroidInitialization.LINEAR), 3)
out["cluster 16 accuracy"] = tflite_accuracy(C.strip_clustering(clustered), False)
out["cluster 16 (3 epochs) + export + test"] = time.perf_counter() - t
print("RESULT " + json.dumps(out))
'''


def arrays(path: Path) -> None:
    """The default study's synthetic set, split as faircompress splits it, as one .npz for the Keras child."""
    data = synthetic_data(load_config(None))
    parts = {}
    for split in ("train", "val", "test"):
        idx = data.indices(split)
        parts[f"x_{split}"], parts[f"y_{split}"] = data.images[idx], data.labels[idx]
    np.savez(path, classes=data.num_classes, **parts)


def ours(out: Path) -> tuple[float, dict]:
    cfg = load_config(None, {"output_dir": str(out), "name": "paper-stack-slice", "repeats": 1, "recipes": SLICE,
                             "evaluation": {"latency": False, "memory": False}})
    t = time.perf_counter()
    report = run_study(cfg)
    return time.perf_counter() - t, {"runs": len(report.ran), "failed": len(report.failed)}


def paper(tf_python: str, npz: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    done = subprocess.run([tf_python, "-c", KERAS, str(npz)], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - t
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"the Keras run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tf-python", required=True, help="a Python with tensorflow, tf-keras and tensorflow-model-optimization")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="paper-stack-"))
    try:
        arrays(work / "data.npz")
        ours_s, ours_info = ours(work / "study")
        paper_s, paper_info = paper(args.tf_python, work / "data.npz")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nslice of the default study (baseline 20 epochs; int8; prune 50 % + 2 epochs; 16 clusters + 3 epochs)")
    print(f"paper's stack (tf-keras + tfmot + TFLite, fp32): {paper_s:7.1f} s")
    for key, value in paper_info.items():
        print(f"    {key:<40} {value:.3f}" if "accuracy" in key else f"    {key:<40} {value:.1f} s")
    print(f"ours (faircompress, {ours_info['runs']} runs, {ours_info['failed']} failed):    {ours_s:7.1f} s")
    print(f"ours is {paper_s / ours_s:.2f}x faster (issue 23's target: >= 4.5x with AMX, >= 3.5x on AVX2)")


if __name__ == "__main__":
    main()
