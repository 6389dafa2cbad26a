"""Datasets by name. A loader is one module in `data/loaders/` that registers a `DatasetSource`;
the registry finds it there (see `faircompress.registry`)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from ..atomic import EnvironmentFault
from ..registry import Registry
from .dataset import FaceDataset
from .problems import LoadReport


@dataclass(frozen=True)
class DatasetSource:
    params: type[BaseModel]                      # strict pydantic model of the loader's parameters
    load: Callable[[BaseModel, LoadReport], FaceDataset]  # builds the dataset, recording problems found
    fingerprint: Callable[[BaseModel], str] | None = None  # extra cache key (e.g. source file list)
    version: str = "1"                           # bump when the loader's output changes
    example: Callable[[Path], dict] | None = None  # writes a tiny copy of the layout under a folder, returns params


DATASETS: Registry[DatasetSource] = Registry("dataset", "faircompress.data.loaders", "faircompress.datasets")


def default_cache_dir() -> Path:
    return Path(os.environ.get("FAIRCOMPRESS_CACHE", Path.home() / ".cache" / "faircompress"))


def _usable_cache_dir(folder: Path) -> Path:
    """``folder``, made if missing; one that cannot hold the cache stops here, before a long load."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
        cause = "not writable"
    except OSError as e:
        cause = "not a folder" if isinstance(e, FileExistsError) else e.strerror
    raise EnvironmentFault(f"{folder}: cannot use as the dataset cache ({cause}); set FAIRCOMPRESS_CACHE to a writable folder")


def cache_key(name: str, params: BaseModel) -> str:
    source = DATASETS.get(name)
    blob = {"name": name, "version": source.version, "params": params.model_dump(mode="json")}
    if source.fingerprint is not None:
        blob["fingerprint"] = source.fingerprint(params)
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def load_dataset(name: str, params: BaseModel | dict | None = None, cache_dir: Path | None = None, strict: bool = False) -> FaceDataset:
    """Load a registered dataset, reusing a cached ``.npz`` when its key matches. ``strict`` stops at
    the first unreadable file instead of skipping it (and reads the files, not the cache)."""
    source = DATASETS.get(name)
    if not isinstance(params, source.params):
        params = source.params.model_validate(params or {})
    if cache_dir is None or strict:
        return source.load(params, LoadReport(strict=strict))
    path = _usable_cache_dir(Path(cache_dir)) / f"{name}-{cache_key(name, params)}.npz"
    if path.exists():
        try:
            return FaceDataset.load_npz(path)
        except Exception:  # a torn or stale cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    ds = source.load(params, LoadReport())
    ds.save_npz(path)
    return ds

