"""How the models learnt (the paper's Figs. 7 and 8): training and selection ("sel": validation, or
test under the authors' protocol) accuracy and loss per epoch, from the store's epoch history. The
baselines' curves are drawn as the mean and spread over their seeds with each seed's selected epoch
(its stored `best_epoch`) marked; the compressed variants' fine-tuning curves per technique."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .figures import _plt, save
from .results import StudyResults

CURVES = ["train_loss", "train_acc", "sel_loss", "sel_acc"]
COLUMNS = ["run_id", "kind", "recipe_key", "variant", "technique", "seed", "repeat", "epoch", *CURVES, "selected"]


def training_table(res: StudyResults) -> pd.DataFrame:
    """One row per epoch of every finished baseline (its training) and variant run (its fine-tuning;
    none for a variant without training steps). ``selected``: the epoch a baseline kept, its stored
    ``best_epoch`` (a variant stores none)."""
    runs = _trained_runs(res)
    if res.epochs.empty or runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    ep = res.epochs[res.epochs.run_id.isin(runs.index)]
    order = pd.Series(np.arange(len(runs)), index=runs.index).reindex(ep.run_id).to_numpy()
    ep = ep.iloc[np.lexsort((ep.epoch.to_numpy(), order))]  # the runs in the study's order, each by epoch
    who = runs.reindex(ep.run_id)
    best = res.scalar("best_epoch").reindex(ep.run_id).to_numpy()
    return pd.DataFrame({"run_id": ep.run_id.to_numpy(), **{c: who[c].to_numpy() for c in COLUMNS[1:7]},
                         "epoch": ep.epoch.to_numpy(), **{c: ep[c].to_numpy() for c in CURVES}, "selected": ep.epoch.to_numpy() == best})


def _trained_runs(res: StudyResults) -> pd.DataFrame:
    """Finished baselines, then the variants' runs in the study's order: kind, recipe_key, variant,
    technique, seed, repeat, indexed by run_id."""
    base = res.baselines()
    base = base[base.status == "finished"]
    rows = [(r, "baseline", "", "baseline", "") for r in base.run_id]
    rows += [(r, "variant", v.key, v.label, v.technique) for v in res.variants if not v.is_reference for r in v.run_ids]
    table = pd.DataFrame(rows, columns=["run_id", *COLUMNS[1:5]]).set_index("run_id")
    ident = res.runs.set_index("run_id")
    table["seed"] = ident.seed.reindex(table.index).to_numpy()
    table["repeat"] = ident["repeat"].fillna(0).astype(int).reindex(table.index).to_numpy()
    return table


def training_curves(table: pd.DataFrame, out: Path) -> Path | None:
    """The baselines' training curves (None when no baseline has an epoch recorded)."""
    base = table[table.kind == "baseline"]
    return save(plot_training(base), out, "training-curves") if not base.empty else None


def plot_training(base: pd.DataFrame):
    """Accuracy and loss per epoch, training and selection, mean ± std over the seeds; a star marks
    each seed's selected epoch on its selection curve."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), layout="constrained")
    for ax, what, scale in ((axes[0], "acc", 100), (axes[1], "loss", 1)):
        for split, style in (("train", "--"), ("sel", "-")):
            _mean_band(ax, base, f"{split}_{what}", scale, style, f"{split} (mean ± std over {base.seed.nunique()} seed(s))")
        kept = base[base.selected.astype(bool)]
        ax.scatter(kept.epoch, scale * kept[f"sel_{what}"], marker="*", s=90, color="tab:red", zorder=4, label="selected epoch")
        _label(ax, f"baselines: {'accuracy' if what == 'acc' else 'loss'}", "epoch", what, base.epoch)
        ax.legend(fontsize=7)
    return fig


def fine_tuning_curves(table: pd.DataFrame, out: Path) -> Path | None:
    """The variants' fine-tuning curves, one row of panels per technique (None when no variant fine-tuned)."""
    tuned = table[table.kind == "variant"]
    if tuned.empty:
        return None
    plt = _plt()
    techniques = list(dict.fromkeys(tuned.technique))
    fig, axes = plt.subplots(len(techniques), 2, figsize=(9.5, 3.0 * len(techniques)), squeeze=False, layout="constrained")
    for row, technique in zip(axes, techniques):
        for ax, what, scale in ((row[0], "acc", 100), (row[1], "loss", 1)):
            _variant_lines(ax, tuned[tuned.technique == technique], what, scale)
            _label(ax, f"{technique}: {'accuracy' if what == 'acc' else 'loss'}", "fine-tuning epoch", what, tuned.epoch)
    return save(fig, out, "fine-tuning-curves")


def _label(ax, title: str, xlabel: str, what: str, epochs: pd.Series) -> None:
    """Title and axis labels; whole epochs on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.set(title=title, xlabel=xlabel, ylabel="accuracy (%)" if what == "acc" else "loss")
    if epochs.nunique() <= 12:
        ax.set_xticks(sorted(epochs.unique()))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _variant_lines(ax, rows: pd.DataFrame, what: str, scale: float) -> None:
    for _, runs in rows.groupby("recipe_key", sort=False):
        line = _mean_band(ax, runs, f"sel_{what}", scale, "-", str(runs.variant.iloc[0]))
        _mean_band(ax, runs, f"train_{what}", scale, "--", None, line.get_color())
    ax.legend(fontsize=6)


def _mean_band(ax, rows: pd.DataFrame, column: str, scale: float, style: str, label: str | None, color=None):
    """The mean of ``column`` per epoch over the runs, with ± std shaded; returns the line."""
    stats = rows.groupby("epoch")[column].agg(["mean", "std"]).fillna(0.0) * scale
    line, = ax.plot(stats.index, stats["mean"], style, marker="o", ms=3, label=label, color=color)
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15, color=line.get_color())
    return line

