from __future__ import annotations

import os

import pytest

TINY_DATA = {"subjects": 12, "sequences": 18, "peak_frames": 2, "image_size": 16, "seed": 3}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Dataset caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("FAIRCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def tiny_overrides(tmp_path):
    """Config overrides for a study that trains in seconds."""
    return {
        "output_dir": str(tmp_path / "study"),
        "dataset.params": dict(TINY_DATA),
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.precision": "fp32",
        "train.device": "cpu",
        "evaluation.latency_runs": 3,
        "recipes": [],
    }


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
