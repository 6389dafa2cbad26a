"""The study's figures (matplotlib, headless), each written as PNG and SVG: a forest plot of every gap
change with its interval, size and accuracy against the compression level per technique (the paper's
Figures 10, 11, 13, 14), the change of each gap against model size with intervals (a Pareto view), a
variant x group heat-map of accuracy change, weight histograms of one layer before and after pruning
(Figures 15, 16), and per-group confusion matrices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from .results import StudyResults


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path, name: str) -> Path:
    try:
        for fmt, extra in (("png", {"dpi": 110}), ("svg", {})):
            with atomic_path(out / f"{name}.{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, bbox_inches="tight", **extra)
    finally:
        _plt().close(fig)
    return out / f"{name}.png"


def level_curves(res: StudyResults, groups: pd.DataFrame, out: Path) -> list[Path]:
    """Per technique with levels: size vs level, and accuracy vs level overall and per group."""
    plt = _plt()
    runs = res.run_table().dropna(subset=["level"])
    paths = []
    ref = res.reference
    base = groups[groups.variant == ref.label] if ref is not None else groups.iloc[:0]
    for technique, fam in runs.groupby("technique", sort=False):
        fig, axes = plt.subplots(1, 1 + len(res.attributes), figsize=(4.2 * (1 + len(res.attributes)), 3.4))
        axes = np.atleast_1d(axes)
        _size_curve(axes[0], fam, technique)
        variants = [v for v in res.variants if v.key in set(fam.key)]
        for ax, attr in zip(axes[1:], res.attributes):
            _accuracy_curves(ax, res, variants, groups, base, attr)
            ax.set(title=f"{technique}: accuracy by {attr}", xlabel="level", ylabel="% (dotted: baseline)")
            ax.legend(fontsize=7)
        paths.append(save(fig, out, f"levels-{_slug(technique)}"))
    return paths


def _size_curve(ax, runs: pd.DataFrame, technique: str) -> None:
    stats = runs.groupby("level").size_mb.agg(["mean", "std"]).fillna(0)
    ax.plot(stats.index, stats["mean"], "o-")
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.25)
    ax.set(title=f"{technique}: zipped size", xlabel="level", ylabel="MB")


def _accuracy_curves(ax, res: StudyResults, variants: list, groups: pd.DataFrame, base: pd.DataFrame, attr: str) -> None:
    """Overall accuracy (dashed) and each group's accuracy against the level, ± std shaded."""
    levels = {v.label: v.level for v in variants}
    overall = sorted(((v.level, (res.population(v) == res.y_true).mean(1)) for v in variants), key=lambda t: t[0])
    if overall:
        lv = [lvl for lvl, _ in overall]
        mean, std = 100 * np.array([a.mean() for _, a in overall]), 100 * np.array([a.std() for _, a in overall])
        ax.plot(lv, mean, "k--", label="overall", lw=1)
        ax.fill_between(lv, mean - std, mean + std, alpha=0.1, color="k")
    g = groups[(groups.attribute == attr) & groups.variant.isin(levels)].assign(level=lambda d: d.variant.map(levels))
    for grp, rows in g.groupby("group", sort=False):
        rows = rows.sort_values("level")
        line, = ax.plot(rows.level, 100 * rows.accuracy, "o-", label=grp, ms=3)
        ax.fill_between(rows.level, 100 * (rows.accuracy - rows["std"]), 100 * (rows.accuracy + rows["std"]), alpha=0.2, color=line.get_color())
        b = base[(base.attribute == attr) & (base.group == grp)]
        if not b.empty:
            ax.axhline(100 * b.accuracy.iloc[0], ls=":", lw=1, color=line.get_color())


def gap_vs_size(res: StudyResults, gaps: pd.DataFrame, out: Path) -> Path:
    """Change of each attribute's gap against mean zipped size, with 95 % bootstrap intervals; the
    Pareto frontier (no smaller variant with a smaller gap change) is drawn as a line."""
    plt = _plt()
    size = res.run_table().groupby("variant").size_mb.mean()
    attrs = res.attributes
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.8 * len(attrs), 3.8), squeeze=False)
    for ax, attr in zip(axes[0], attrs):
        g = gaps[gaps.attribute == attr].assign(size=lambda d: d.variant.map(size)).sort_values("size")
        if g.empty:
            continue
        err = np.vstack([g.gap_change - g.ci_low, g.ci_high - g.gap_change]) * 100
        colors = np.where(g.significant, "tab:red", "tab:blue")
        ax.errorbar(g["size"], 100 * g.gap_change, yerr=err, fmt="none", ecolor="0.7", lw=1)
        ax.scatter(g["size"], 100 * g.gap_change, c=colors, s=14, zorder=3)
        best, frontier = np.inf, []
        for _, r in g.iterrows():
            if r.gap_change < best:
                best = r.gap_change
                frontier.append((r["size"], 100 * r.gap_change))
        if frontier:
            ax.plot(*zip(*frontier), "k--", lw=0.8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set(title=f"{attr}: change of gap (red: significant)", xlabel="zipped size (MB)", ylabel="pp vs baseline")
    return save(fig, out, "gap-vs-size")


def weight_histograms(before: np.ndarray, after: np.ndarray, layer: str, variant: str, out: Path, sparsity: float) -> Path:
    """One layer's weights in the baseline's file and in a pruned file (the paper's Figs. 15 and 16);
    dashed: the magnitude under which that share of the baseline's weights lies (where the cut falls;
    fine-tuning then moves the survivors)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
    cut = float(np.quantile(np.abs(before), sparsity)) if 0 < sparsity < 1 else 0.0
    for ax, w, title in [(axes[0], before, "baseline"), (axes[1], after, variant)]:
        counts, edges = np.histogram(w.ravel(), bins=120)
        ax.stairs(counts, edges, fill=True, color="tab:blue")  # one artist, not 120 bars: a 2-million-weight layer draws fast
        ax.set(title=f"{title}: {layer} ({np.mean(w == 0):.0%} zeros)", xlabel="weight", ylabel="count")
        ax.set_yscale("log")
        for x in (-cut, cut) if cut else ():
            ax.axvline(x, color="k", ls="--", lw=0.7)
    return save(fig, out, f"weights-{_slug(layer)}")


def sizes(res: StudyResults, out: Path) -> Path | None:
    """Zipped size of every variant, grouped by technique, each level's file before and after
    quantisation side by side, with its compression ratio against the baseline (the paper's Figs. 9
    and 12; the ratio is the Sun et al. measure)."""
    runs = res.run_table()
    if runs.empty or res.reference is None:
        return None
    plt = _plt()
    mean = runs.groupby("key", sort=False).size_mb.mean()
    base = float(mean[res.reference.key])
    families: dict[str, list] = {}
    for v in res.variants:
        families.setdefault("baseline" if v.is_reference else _quantised(v.technique)[0], []).append(v)
    fig, axes = plt.subplots(1, len(families), figsize=(max(4.0, 3.2 * len(families)), 3.6), squeeze=False)
    for ax, (family, variants) in zip(axes[0], families.items()):
        levels = sorted({v.level for v in variants if np.isfinite(v.level)})
        if levels:
            _level_size_bars(ax, variants, levels, mean, base)
        else:  # the baseline and its quantised files: one bar each
            for i, v in enumerate(variants):
                _size_bar(ax, i, mean[v.key], base, _QUANT_COLOURS[_quantised(v.technique)[1]] if i else "tab:blue")
            ax.set_xticks(range(len(variants)), [v.label.split(" (")[0] for v in variants], fontsize=7, rotation=30)
        ax.set(title=family, ylabel="zipped MB")
    return save(fig, out, "sizes")


_QUANT_COLOURS = {"": "tab:blue", "quantize": "tab:orange", "qat": "tab:green"}


def _quantised(technique: str) -> tuple[str, str]:
    """(the technique before its last quantising step, that step: 'quantize' (post-training), 'qat' or '');
    'baseline' for a quantising step alone."""
    head, _, last = technique.rpartition(" + ")
    return (head or "baseline", last) if last in ("quantize", "qat") else (technique, "")


def _level_size_bars(ax, variants: list, levels: list[float], mean: pd.Series, base: float) -> None:
    kinds = ["", "quantize"] + (["qat"] if any(_quantised(v.technique)[1] == "qat" for v in variants) else [])
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        shift = (j - (len(kinds) - 1) / 2) * width
        for i, level in enumerate(levels):
            match = [v for v in variants if _quantised(v.technique)[1] == kind and v.level == level]
            if match:
                _size_bar(ax, i + shift, mean[match[0].key], base, _QUANT_COLOURS[kind], width=width)
    ax.set_xticks(range(len(levels)), [f"{lv:g}" for lv in levels], fontsize=7)
    ax.set_xlabel("level (blue: not quantised, orange: quantised" + (", green: QAT)" if "qat" in kinds else ")"), fontsize=7)


def _size_bar(ax, x: float, size: float, base: float, colour: str, width: float = 0.6) -> None:
    ax.bar(x, size, width=width, color=colour)
    ax.text(x, size, f"{base / size:.1f}×", ha="center", va="bottom", fontsize=6)


def confusion_by_group(res: StudyResults, variants: list, attr: str, out: Path) -> Path:
    """Row-normalised confusion matrices (modal prediction of each population) per group."""
    from ..evaluate.fairness import NO_MODE, modal

    plt = _plt()
    names = res.groups[attr]
    k = len(res.class_names)
    fig, axes = plt.subplots(len(variants), len(names), figsize=(2.6 * len(names), 2.6 * len(variants)), squeeze=False)
    for i, variant in enumerate(variants):
        pred = modal(res.population(variant), k)
        for j, name in enumerate(names):
            m = (res.codes[attr] == j) & (pred != NO_MODE)  # images the population has no mode on are left out
            cm = np.zeros((k, k))
            np.add.at(cm, (res.y_true[m], pred[m]), 1)
            cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            ax = axes[i, j]
            ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
            ax.set_title(f"{variant.label}\n{attr} {name} (n={int(m.sum())})", fontsize=7)
            ax.set_xticks(range(k), [c[:3] for c in res.class_names], fontsize=5, rotation=90)
            ax.set_yticks(range(k), [c[:3] for c in res.class_names], fontsize=5)
    return save(fig, out, f"confusion-{_slug(attr)}")


def study_accuracy_curves(changes: pd.DataFrame, out: Path) -> list[Path]:
    """Per technique with levels: each study's accuracy change against level with its 95 % interval."""
    plt = _plt()
    paths = []
    for technique, rows in changes.dropna(subset=["level"]).groupby("technique", sort=False):
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        for study, r in rows.groupby("study", sort=False):
            r = r.sort_values("level")
            change = 100 * r["accuracy change"]
            ax.errorbar(r.level, change, yerr=[change - 100 * r.ci_low, 100 * r.ci_high - change], fmt="o-", capsize=3, label=study)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=f"{technique}: accuracy change by study", xlabel="level", ylabel="pp vs the study's baseline")
        ax.legend(fontsize=7)
        paths.append(save(fig, out, f"compare-accuracy-{_slug(technique)}"))
    return paths


def study_gap_forest(gaps: pd.DataFrame, out: Path) -> Path | None:
    """Per attribute: each shared variant's gap change in each study with its interval (red: significant
    within its study)."""
    singles = gaps[~gaps.attribute.str.contains(" × ", regex=False)] if not gaps.empty else gaps
    if singles.empty:
        return None
    plt = _plt()
    attrs, studies = list(dict.fromkeys(singles.attribute)), list(dict.fromkeys(singles.study))
    variants = list(dict.fromkeys(singles.variant))
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.6 * len(attrs) + 1.5, 0.3 * len(variants) * len(studies) + 1.2),
                             sharey=True, squeeze=False)
    for ax, attr in zip(axes[0], attrs):
        for j, study in enumerate(studies):
            r = singles[(singles.attribute == attr) & (singles.study == study)].set_index("variant").reindex(variants)
            y = np.arange(len(variants)) + 0.8 * j / max(len(studies), 1)
            ax.errorbar(100 * r.gap_change, y, xerr=[100 * (r.gap_change - r.ci_low), 100 * (r.ci_high - r.gap_change)],
                        fmt="o", ms=3, lw=0.8, label=study)
            sig = r.significant.fillna(False).astype(bool).to_numpy()
            ax.plot(100 * r.gap_change[sig], y[sig], "o", color="red", ms=4)
        ax.axvline(0, color="k", lw=0.6)
        ax.set(title=attr, xlabel="change of gap (pp)")
    axes[0][0].set_yticks(np.arange(len(variants)) + 0.4 * (len(studies) - 1) / max(len(studies), 1), variants, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(fontsize=7)
    return save(fig, out, "compare-gaps")


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def forest(res: StudyResults, gaps: pd.DataFrame, out: Path) -> Path:
    """Each variant's change of each attribute's gap with its 95 % interval, significant ones (after
    the study-wide correction) in red: the study's answer at a glance."""
    plt = _plt()
    tested = gaps[gaps.p.notna() & gaps.attribute.isin(res.attributes)]
    labels = list(dict.fromkeys(tested.variant))
    attrs = [a for a in res.attributes if (tested.attribute == a).any()] or res.attributes[:1]
    fig, axes = plt.subplots(1, len(attrs), figsize=(4.2 * len(attrs), 0.32 * len(labels) + 1.5), squeeze=False, sharey=True)
    y = np.arange(len(labels))
    for ax, attr in zip(axes[0], attrs):
        g = tested[tested.attribute == attr].set_index("variant").reindex(labels)
        ok = g.gap_change.notna().to_numpy()
        change, lo, hi = (100 * g[c].to_numpy(dtype=float)[ok] for c in ("gap_change", "ci_low", "ci_high"))
        ax.errorbar(change, y[ok], xerr=np.vstack([change - lo, hi - change]), fmt="none", ecolor="0.6", lw=1)
        ax.scatter(change, y[ok], c=np.where(g.significant.to_numpy(dtype=bool)[ok], "tab:red", "tab:blue"), s=16, zorder=3)
        ax.axvline(0, color="k", lw=0.6)
        ax.set(title=attr, xlabel="change of gap (pp)")
    axes[0][0].set_yticks(y, labels)
    axes[0][0].invert_yaxis()
    return save(fig, out, "forest-gap-change")


def accuracy_change_map(res: StudyResults, groups: pd.DataFrame, out: Path) -> Path | None:
    """Variant × group heat-map of the change of each group's accuracy against the baseline (pp);
    groups too small to judge are left out."""
    reference = res.reference
    g = groups[groups.attribute.isin(res.attributes) & ~groups.too_few.astype(bool)]
    if reference is None or g.empty:
        return None
    table = g.pivot_table(index="variant", columns=["attribute", "group"], values="accuracy", sort=False)
    if reference.label not in table.index or len(table) < 2:
        return None
    delta = 100 * (table - table.loc[reference.label]).drop(index=reference.label)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.55 * delta.shape[1] + 3, 0.35 * len(delta) + 1.8))
    bound = max(float(np.nanmax(np.abs(delta.to_numpy()))), 1.0)
    im = ax.imshow(delta.to_numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(np.arange(delta.shape[1]), [f"{a}: {grp}" for a, grp in delta.columns], rotation=60, ha="right")
    ax.set_yticks(np.arange(len(delta)), list(delta.index))
    fig.colorbar(im, ax=ax, label="accuracy change (pp)")
    return save(fig, out, "accuracy-change")
