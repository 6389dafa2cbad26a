"""A few face crops per class as the model sees them, after preprocessing (the paper's Figs. 4 and 5).
The only part of the report that needs the images: the dataset is loaded through its registry as the
study loaded it (its config is in the runs table), and only when it is the study's dataset; otherwise,
or with ``include=False`` (`--no-faces`, for a report that will be shared), the report says why in
one line and no face is written anywhere."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import EnvironmentFault
from ..data.dataset import FaceDataset
from .figures import _plt, save
from .results import StudyResults

NAME = "faces"
PER_CLASS = 4
LEFT_OUT = "Face images left out of this report (--no-faces)."


def face_grid(res: StudyResults, out: Path, include: bool = True) -> tuple[Path | None, str]:
    """(the grid's PNG, "") or (None, why there is none)."""
    data, why = study_dataset(res) if include else (None, "")
    if data is not None and data.is_features:
        data, why = None, f"the {data.name} dataset holds precomputed features, not images"
    if data is None:
        for ext in ("png", "svg"):  # an earlier report's grid must not travel with this one
            (out / f"{NAME}.{ext}").unlink(missing_ok=True)
        return None, f"No face grid: {why}." if include else LEFT_OUT
    return save(plot_faces(data, pick_faces(data)), out, NAME), ""


def study_dataset(res: StudyResults) -> tuple[FaceDataset | None, str]:
    """The study's dataset, loaded as `faircompress run` loads it, or None and why it cannot be."""
    from ..data.registry import default_cache_dir, identify, load_identified

    finished = res.runs[res.runs.status == "finished"]
    if finished.empty:
        return None, "no finished run records the dataset's config"
    dataset = json.loads(finished.config_json.iloc[-1]).get("dataset", {})
    name = str(dataset.get("name", "?"))
    cache = default_cache_dir() if dataset.get("cache", True) else None
    try:
        ident = identify(name, dataset.get("params", {}), memo=cache / "digests.json" if cache else None)
        absent = _absent_source(name, ident.params)
        if absent is not None:
            return None, f"the {name} dataset is not here ({absent} is missing)"
        keys = set(finished.dataset_key.dropna())
        if keys and ident.key not in keys:
            return None, f"the {name} dataset found here is not the one the study was run on (its files or loader differ)"
        return load_identified(ident, cache), ""
    except (ValueError, KeyError, OSError, ImportError, EnvironmentFault) as e:  # DatasetError is a ValueError
        return None, f"the {name} dataset could not be loaded here ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def _absent_source(name: str, params) -> Path | None:
    """The first file or folder the loader reads that is not there (None for a generated dataset)."""
    from ..data.registry import DATASETS

    sources = DATASETS.get(name).sources
    return next((p for p in (sources(params) if sources else []) if not p.exists()), None)


def pick_faces(data: FaceDataset, per_class: int = PER_CLASS, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to ``per_class`` image indices of each class, the same every time: training images of
    distinct subjects where there are enough (another split's where the training split has none)."""
    rng = np.random.default_rng(seed)
    train = np.zeros(len(data), bool)
    train[data.indices("train")] = True
    picked = {}
    for c in range(data.num_classes):
        pool = np.flatnonzero((data.labels == c) & train)
        pool = pool if len(pool) else np.flatnonzero(data.labels == c)
        _, first = np.unique(data.subjects[pool], return_index=True)  # one image per subject first
        candidates = pool[np.sort(first)] if len(first) >= per_class else pool
        picked[c] = np.sort(rng.choice(candidates, size=min(per_class, len(candidates)), replace=False))
    return picked


def plot_faces(data: FaceDataset, picked: dict[int, np.ndarray]):
    """One row per class, its picked crops side by side, in the model's input pixels."""
    plt = _plt()
    cols = max([len(i) for i in picked.values()] + [1])
    fig, axes = plt.subplots(len(picked), cols, figsize=(1.1 * cols + 1.0, 1.1 * len(picked) + 0.4), squeeze=False, layout="constrained")
    for row, (c, idx) in zip(axes, picked.items()):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(idx):
                image = data.images[idx[j]]
                ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
            else:
                ax.spines[:].set_visible(False)
        row[0].set_ylabel(data.class_names[c] + ("" if len(idx) else " (none)"), fontsize=8)
    fig.suptitle(f"{data.name}: {data.image_size[0]}×{data.image_size[1]} crops as the model sees them", fontsize=9)
    return fig
