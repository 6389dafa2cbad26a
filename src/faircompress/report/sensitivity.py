"""The layer-wise sensitivity scan (`faircompress sensitivity`, see `faircompress/sensitivity.py`) as
a table and figures: per-layer curves of the change of accuracy and of each attribute's gap against
the pruning level (one line per layer), and a layer x level heat-map of the same changes with int8
as a last column. Torch-free: everything comes from the store."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from ..store import ResultStore
from .figures import _plt, save

INT8 = "int8"


def scans(store: ResultStore) -> dict[str, pd.DataFrame]:
    """Per split, the rows of its newest scan (normally only the first baseline's validation scan)."""
    meta = store.sensitivity_scans()
    out = {}
    for split, rows in meta.groupby("split", sort=False):
        newest = rows.sort_values("created_at").iloc[-1]
        out[str(split)] = store.sensitivity(str(newest.baseline_id), str(split))
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "val"))  # val first


def long_table(store: ResultStore) -> pd.DataFrame:
    """Every stored scan row, with the metric each row measures ('accuracy' or 'gap')."""
    rows = store.sensitivity()
    metric = np.where(rows.attribute == "", "accuracy", "gap")
    return rows.assign(metric=metric)[["baseline_id", "split", "layer", "position", "technique", "level", "attribute", "metric",
                                       "value", "reference", "delta", "sparsity", "elements"]]


def write_csv(store: ResultStore, study_dir: Path) -> Path:
    path = study_dir / "tables" / "sensitivity.csv"
    write_text_atomic(path, long_table(store).to_csv(index=False))
    return path


def _column(technique: str, level: float) -> str:
    return INT8 if technique == "int8" else f"{100 * level:g}%"


def _measures(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(attribute, title) of the measures a scan holds: accuracy first, then each attribute's gap."""
    attrs = [a for a in dict.fromkeys(rows.attribute) if a]
    return [("", "accuracy")] + [(a, f"gap {a}") for a in attrs]


def pivot(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per layer and measure, one column per level (and int8): the change against the
    baseline in percentage points."""
    rows = rows.assign(column=[_column(t, lv) for t, lv in zip(rows.technique, rows.level)])
    levels = [_column("prune", lv) for lv in sorted(rows[rows.technique == "prune"].level.unique())]
    columns = levels + ([INT8] if (rows.technique == "int8").any() else [])
    out = []
    for attribute, title in _measures(rows):
        sub = rows[rows.attribute == attribute]
        wide = sub.pivot_table(index=["position", "layer"], columns="column", values="delta", aggfunc="first")
        wide = (100 * wide.reindex(columns=columns)).round(2)
        sizes = sub.groupby(["position", "layer"]).elements.first()
        wide.insert(0, "elements", sizes.reindex(wide.index).to_numpy())
        wide.insert(0, "measure", f"Δ {title} (pp)")
        out.append(wide.reset_index().drop(columns="position"))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def figures(rows: pd.DataFrame, out: Path, suffix: str = "") -> list[Path]:
    """Per-layer curves and the layer x level heat-map of one scan's rows."""
    if rows.empty:
        return []
    return [_curves(rows, out, f"sensitivity-curves{suffix}"), _heatmap(rows, out, f"sensitivity-heatmap{suffix}")]


def _layers(rows: pd.DataFrame) -> list[str]:
    return list(rows.sort_values("position").layer.drop_duplicates())


def _curves(rows: pd.DataFrame, out: Path, name: str) -> Path:
    plt = _plt()
    measures = _measures(rows)
    fig, axes = plt.subplots(1, len(measures), figsize=(4.6 * len(measures), 3.6), squeeze=False)
    prune = rows[rows.technique == "prune"]
    for ax, (attribute, title) in zip(axes[0], measures):
        sub = prune[prune.attribute == attribute]
        for layer in _layers(rows):
            line = sub[sub.layer == layer].sort_values("level")
            ax.plot(100 * line.level, 100 * line.delta, "o-", ms=3, lw=1, label=layer)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=f"Δ {title}, one layer pruned alone", xlabel="sparsity of that layer (%)", ylabel="pp vs baseline")
    axes[0][0].legend(fontsize=6, ncol=1 if len(_layers(rows)) < 12 else 2)
    return save(fig, out, name)


def _heatmap(rows: pd.DataFrame, out: Path, name: str) -> Path:
    plt = _plt()
    measures = _measures(rows)
    layers = _layers(rows)
    levels = sorted(rows[rows.technique == "prune"].level.unique())
    columns = [_column("prune", lv) for lv in levels] + ([INT8] if (rows.technique == "int8").any() else [])
    fig, axes = plt.subplots(1, len(measures), figsize=(max(4.0, 0.55 * len(columns) + 2.5) * len(measures),
                                                        0.38 * len(layers) + 1.8), squeeze=False)
    cells = rows.assign(column=[_column(t, lv) for t, lv in zip(rows.technique, rows.level)])
    for ax, (attribute, title) in zip(axes[0], measures):
        grid = (100 * cells[cells.attribute == attribute].pivot_table(index="layer", columns="column", values="delta",
                                                                      aggfunc="first")).reindex(index=layers, columns=columns)
        values = grid.to_numpy(dtype=float)
        bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        bound = bound or 1.0
        cmap = "RdBu" if attribute == "" else "RdBu_r"  # red: accuracy lost, or a gap widened
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-bound, vmax=bound, aspect="auto")
        if values.size <= 400:
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "float" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=6,
                        color="0.4" if np.isnan(v) else "w" if abs(v) > 0.6 * bound else "k")
        ax.set_xticks(range(len(columns)), columns, fontsize=7, rotation=45)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set(title=f"Δ {title} (pp)", xlabel="sparsity of that layer alone; int8: int8-weights' rounding")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return save(fig, out, name)


def write_outputs(store: ResultStore, study_dir: Path) -> tuple[Path | None, list[Path]]:
    """``tables/sensitivity.csv`` and the figures of every split's newest scan (None and [] without a scan)."""
    found = scans(store)
    if not found:
        return None, []
    figs = []
    for split, rows in found.items():
        figs += figures(rows, study_dir / "figures", "" if split == "val" else f"-{split}")
    return write_csv(store, study_dir), figs


NOTE = ("Each prunable layer of the study's first baseline compressed alone in a fresh copy (magnitude pruning at each "
        "sparsity; int8: the kernel rounded as int8-weights stores it, kernels under 1,024 elements left float), no "
        "fine-tuning, evaluated in PyTorch on the {split} split ({images} images); the change of accuracy and of each "
        "attribute's gap (groups with at least 5 images) against the unmodified baseline on the same split, in pp.")
