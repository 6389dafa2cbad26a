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
from .dataset import FaceDataset, InputShape
from .identity import Manifest, manifest
from .problems import LoadReport


@dataclass(frozen=True)
class DatasetSource:
    params: type[BaseModel]                      # strict pydantic model of the loader's parameters
    load: Callable[[BaseModel, LoadReport], FaceDataset]  # builds the dataset, recording problems found
    sources: Callable[[BaseModel], list[Path]] | None = None  # the files and folders it reads (hashed by content)
    version: str = "1"                           # bump when the loader's output changes
    example: Callable[[Path], dict] | None = None  # writes a tiny copy of the layout under a folder, returns params
    shape: Callable[[BaseModel], InputShape] | None = None  # the images and classes its parameters fix, where they do
    split_note: Callable[[BaseModel], str | None] | None = None  # what a reader must know of how its parameters split
    # the data (e.g. a test split that is not subject-disjoint); the report says it


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


@dataclass(frozen=True)
class DatasetIdentity:
    """What a dataset is: its loader, the loader's parameters and the content of every file it reads
    (procedural datasets have no files). Two loads with one key give identical arrays."""

    name: str
    params: BaseModel
    manifest: Manifest

    @property
    def key(self) -> str:
        blob = {"name": self.name, "version": DATASETS.get(self.name).version, "params": self.params.model_dump(mode="json"),
                "files": self.manifest.key()}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def declared_shape(name: str, params: BaseModel | dict | None) -> InputShape | None:
    """The input shape a dataset's parameters fix before it is loaded; None where the data decides
    (e.g. the classes of a folder's labels.csv)."""
    source = DATASETS.get(name)
    return source.shape(_validated(source, params)) if source.shape else None


def split_note(name: str, params: BaseModel | dict | None) -> str | None:
    """What the report must say about how the dataset's test split was drawn, from its parameters
    (None when there is nothing beyond the loader's usual protocol)."""
    source = DATASETS.get(name)
    return source.split_note(_validated(source, params)) if source.split_note else None


def _validated(source: DatasetSource, params: BaseModel | dict | None) -> BaseModel:
    return params if isinstance(params, source.params) else source.params.model_validate(params or {})


def identify(name: str, params: BaseModel | dict | None = None, memo: Path | None = None) -> DatasetIdentity:
    """Validate a dataset's parameters and hash the files it reads (``memo``: see `identity.DigestMemo`)."""
    source = DATASETS.get(name)
    params = _validated(source, params)
    roots = [p for p in source.sources(params) if p.exists()] if source.sources else []
    return DatasetIdentity(name, params, manifest(*roots, memo=memo))


def load_dataset(name: str, params: BaseModel | dict | None = None, cache_dir: Path | None = None, strict: bool = False) -> FaceDataset:
    """Load a registered dataset: from the files, or with ``cache_dir`` from the cache when one
    matches its content. ``strict`` stops at the first unreadable file instead of skipping it."""
    source = DATASETS.get(name)
    params = _validated(source, params)
    if cache_dir is None or strict:
        return source.load(params, LoadReport(strict=strict))
    return load_identified(identify(name, params, memo=Path(cache_dir) / "digests.json"), cache_dir)


def load_identified(ident: DatasetIdentity, cache_dir: Path | None) -> FaceDataset:
    """The dataset ``ident`` names, from the cache (``<name>-<key>.npz``) when it is there."""
    source = DATASETS.get(ident.name)
    if cache_dir is None:
        return source.load(ident.params, LoadReport())
    path = _usable_cache_dir(Path(cache_dir)) / f"{ident.name}-{ident.key}.npz"
    if path.exists():
        try:
            return FaceDataset.load_npz(path)
        except Exception:  # a torn or stale cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    ds = source.load(ident.params, LoadReport())
    ds.save_npz(path)
    return ds
