"""Dixit et al.'s SFEW figures from the runs' stored details: lottery tickets' test accuracy per
retraining epoch beside the unpruned model's (their Figs. 2-3, one panel per sparsity, the ticket and
its controls), and distinctiveness pruning beside percentile pruning at the share it removed (their
Fig. 1: the largest share a layer lost is the percentile control's level; the table, and per angle
the test accuracy per retraining epoch of both beside the unpruned model's)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..compress.lottery import overall_sparsity
from .figures import _plt, save
from .results import StudyResults, Variant

CONTROL_NAMES = {"none": "ticket (percentile mask, reset)", "random_mask": "control: random mask", "random_init": "control: random init"}
TICKET_COLUMNS = ["variant", "sparsity", "rounds", "pruned_share", "rewind_epoch", "control", "epochs", "runs", "unpruned_test_acc", "start_test_acc", "best_test_acc",
                  "best_test_acc_std", "best_test_epoch", "selected_test_acc", "reached_unpruned", "first_epoch_reaching"]
MATCH_COLUMNS = ["distinct", "similar_below", "complementary_above", "runs", "units_removed_share", "largest_layer_share",
                 "largest_layer", "match", "matched_percentile", "percentile_level", "accuracy_distinct", "accuracy_distinct_std",
                 "accuracy_percentile", "accuracy_percentile_std", "unpruned_test_acc", "best_test_acc_distinct",
                 "best_test_acc_distinct_std", "reached_unpruned_distinct", "best_test_acc_percentile", "best_test_acc_percentile_std",
                 "reached_unpruned_percentile"]
DISTINCT_NAMES = {"none": "distinctiveness", "percentile": "control: percentile pruning"}


def _step_details(res: StudyResults, variant: Variant, step: str) -> list[dict]:
    """What ``step`` recorded in each of the variant's runs (runs without it left out)."""
    details = res.runs.set_index("run_id").details_json
    out = []
    for r in variant.run_ids:
        raw = details.get(r)
        rec = json.loads(raw).get("steps", {}).get(step) if isinstance(raw, str) else None
        if rec is not None:
            out.append(rec)
    return out


def _tickets(res: StudyResults) -> list[tuple[Variant, list[dict]]]:
    """One variant per ticket setting (recipes sharing the ticket, e.g. with int8 after it, share its
    retraining: the one with the fewest steps stands for them), in the study's order."""
    seen: dict[tuple, tuple[Variant, list[dict]]] = {}
    for v in res.variants:
        recs = _step_details(res, v, "ticket")
        if not recs:
            continue
        r = recs[0]
        key = (r["sparsity"], r.get("rounds", 1), r.get("rewind_epoch", 0), r["control"], r.get("scope"), r["epochs"])
        if key not in seen or v.technique.count("+") < seen[key][0].technique.count("+"):
            seen[key] = (v, recs)
    return list(seen.values())


def _accuracy(res: StudyResults, variant: Variant) -> float:
    return float((res.population(variant) == res.y_true).mean())


def _mean(values) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def ticket_table(res: StudyResults) -> pd.DataFrame:
    """Per ticket and control: the unpruned model's test accuracy, the reset network's before
    retraining, the best test accuracy over the retraining epochs (mean and std over runs) and its
    epoch, the selected epoch's, and how many runs reached the unpruned accuracy and when first
    (the median over the runs that did)."""
    rows = []
    for v, recs in _tickets(res):
        best = [r["best_test_acc"] for r in recs if r.get("best_test_acc") is not None]
        reached = [r["reaches_unpruned_epoch"] for r in recs if r.get("reaches_unpruned_epoch") is not None]
        rows.append({"variant": v.label, "sparsity": recs[0]["sparsity"], "rounds": recs[0].get("rounds", 1),
                     "pruned_share": _mean(r.get("pruned_share") for r in recs), "rewind_epoch": recs[0].get("rewind_epoch", 0),
                     "control": recs[0]["control"], "epochs": recs[0]["epochs"],
                     "runs": len(recs), "unpruned_test_acc": _mean(r.get("unpruned_test_acc") for r in recs),
                     "start_test_acc": _mean(r.get("start_test_acc") for r in recs), "best_test_acc": _mean(best),
                     "best_test_acc_std": float(np.std(best, ddof=1)) if len(best) > 1 else float("nan"),
                     "best_test_epoch": _mean(r.get("best_test_epoch") for r in recs),
                     "selected_test_acc": _mean(r.get("selected_test_acc") for r in recs),
                     "reached_unpruned": f"{len(reached)} of {len(recs)}",
                     "first_epoch_reaching": float(np.median(reached)) if reached else float("nan")})
    table = pd.DataFrame(rows, columns=TICKET_COLUMNS)  # each ticket's and control's rounds together, by sparsity
    return table.sort_values(["control", "rewind_epoch", "sparsity", "pruned_share"], kind="stable", ignore_index=True)


def ticket_curves(res: StudyResults, out: Path) -> Path | None:
    """Test accuracy per retraining epoch (epoch 0: reset and pruned, before retraining), mean ± std
    over runs, the ticket and each control, with the unpruned model's test accuracy as a dashed line;
    one panel per sparsity. None when the study has no ticket with test accuracies."""
    tickets = [(v, recs) for v, recs in _tickets(res) if any(e.get("test_acc") is not None for r in recs for e in r["per_epoch"])]
    if not tickets:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    levels = sorted({_level(recs[0]) for _, recs in tickets})
    iterative = _iterative(tickets)
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 3.4), squeeze=False, layout="constrained")
    for ax, level in zip(axes[0], levels):
        unpruned = []
        for v, recs in (t for t in tickets if _level(t[1][0]) == level):
            _plot_runs(ax, recs, _series(recs[0], iterative))
            unpruned += [r["unpruned_test_acc"] for r in recs if r.get("unpruned_test_acc") is not None]
        if unpruned:
            ax.axhline(100 * float(np.mean(unpruned)), color="black", ls="--", lw=1, label="unpruned model")
        ax.set(title=f"tickets at {level:.1%} sparsity", xlabel="retraining epoch", ylabel="test accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return save(fig, out, "tickets")


def _level(rec: dict) -> float:
    """A ticket's overall sparsity after its rounds (rounded, so that equal levels group)."""
    return round(overall_sparsity(rec["sparsity"], rec.get("rounds", 1)), 6)


def _iterative(tickets: list[tuple[Variant, list[dict]]]) -> set[float]:
    """The per-round sparsities the study ran iterative tickets (more than one round) at."""
    return {recs[0]["sparsity"] for _, recs in tickets if recs[0].get("rounds", 1) > 1}


def _series(rec: dict, iterative: set[float]) -> str:
    """The curve a ticket belongs to: the ticket or a control, with its scope and rewind point; where
    the study has iterative tickets, its per-round sparsity (a chain's first round is one of its
    points) or 'one-shot', and its retraining epochs."""
    name = CONTROL_NAMES.get(rec["control"], rec["control"])
    chain = f"{rec['sparsity']:.0%} per round" if rec["sparsity"] in iterative else "one-shot" if iterative else ""
    extras = [("global" if rec.get("scope") == "global" else ""), (f"rewind {rec['rewind_epoch']}" if rec.get("rewind_epoch") else ""),
              chain, f"{rec['epochs']} epochs" if iterative else ""]
    return name + "".join(f", {e}" for e in extras if e)


def ticket_sparsity_curves(res: StudyResults, out: Path) -> Path | None:
    """Frankle & Carbin's view of iterative tickets: against the weights remaining (log scale, as
    theirs), the best test accuracy over the retraining epochs (mean ± std over runs; dashed: the
    unpruned model's) and the first epoch reaching the unpruned accuracy (median of the runs that
    did; open marker: the epoch of the best accuracy where none did). One line per ticket and control
    with at least two levels; None when there is none."""
    series: dict[str, list[tuple[float, list[dict]]]] = {}
    tickets = _tickets(res)
    iterative = _iterative(tickets)
    for _, recs in tickets:
        series.setdefault(_series(recs[0], iterative), []).append((_level(recs[0]), recs))
    series = {k: sorted(v, key=lambda t: t[0]) for k, v in series.items() if len({lvl for lvl, _ in v}) > 1}
    if not series:
        return None
    plt = _plt()
    fig, (acc_ax, ep_ax) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    unpruned = []
    for name, points in series.items():
        remaining = [100 * (1 - lvl) for lvl, _ in points]
        best = [[r["best_test_acc"] for r in recs if r.get("best_test_acc") is not None] for _, recs in points]
        mean = np.array([100 * np.mean(b) if b else np.nan for b in best])
        std = np.array([100 * np.std(b, ddof=1) if len(b) > 1 else 0.0 for b in best])
        line, = acc_ax.plot(remaining, mean, marker="o", ms=3, label=name)
        acc_ax.fill_between(remaining, mean - std, mean + std, alpha=0.15, color=line.get_color())
        reach = [[r["reaches_unpruned_epoch"] for r in recs if r.get("reaches_unpruned_epoch")] for _, recs in points]
        fallback = [_mean(r.get("best_test_epoch") for r in recs) for _, recs in points]
        ep_ax.plot(remaining, [np.median(x) if x else np.nan for x in reach], marker="o", ms=4, color=line.get_color(), label=name)
        ep_ax.plot(remaining, [f if not x else np.nan for x, f in zip(reach, fallback)], ls="none", marker="o", mfc="none",
                   color=line.get_color())
        unpruned += [r["unpruned_test_acc"] for _, recs in points for r in recs if r.get("unpruned_test_acc") is not None]
    if unpruned:
        acc_ax.axhline(100 * float(np.mean(unpruned)), color="black", ls="--", lw=1, label="unpruned model")
    from matplotlib.ticker import MaxNLocator, NullFormatter

    ticks = sorted({100 * (1 - lvl) for points in series.values() for lvl, _ in points})
    for ax in (acc_ax, ep_ax):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
    ep_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ep_ax.set_ylim(bottom=0)
    acc_ax.set(ylabel="best test accuracy (%)", title="tickets against sparsity")
    ep_ax.set(ylabel="retraining epoch", title="first epoch at the unpruned accuracy (open: never; best epoch)")
    acc_ax.legend(fontsize=7)
    return save(fig, out, "ticket-sparsity")


def _recipe_step(res: StudyResults, variant: Variant) -> tuple[str, dict] | None:
    """The variant's one step and its parameters as the recipe was stored (None for several steps)."""
    steps = res.recipe_steps(variant)
    if not isinstance(steps, list) or len(steps) != 1:
        return None
    (name, params), = steps[0].items()
    return name, params


def _distinct_pairs(res: StudyResults) -> list[dict[str, tuple[Variant, list[dict]]]]:
    """Distinctiveness variants run alone, each with its percentile control where the study ran it
    (``control: percentile`` with every other parameter the same): {'none' | 'percentile': (variant,
    its runs' records)}, ordered by angle."""
    pairs: dict[str, dict[str, tuple[Variant, list[dict]]]] = {}
    for v in res.variants:
        step = _recipe_step(res, v) if v.technique in ("distinct", "distinct-percentile") else None
        recs = _step_details(res, v, "distinct") if step is not None and step[0] == "distinct" else []
        if not recs:
            continue
        params = dict(step[1])
        control = params.pop("control", "none")
        pairs.setdefault(json.dumps(params, sort_keys=True), {})[control] = (v, recs)
    return sorted(pairs.values(), key=lambda p: next(iter(p.values()))[1][0]["similar_below"])


def _run_accuracies(res: StudyResults, variant: Variant) -> list[float]:
    return [float((res.preds[r] == res.y_true).mean()) for r in variant.run_ids]


def _std(values) -> float:
    vals = [v for v in values if v is not None]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")


def _retraining(recs: list[dict], side: str) -> dict:
    """A side's retraining over its runs: best test accuracy (mean, std) and how many reached the unpruned accuracy."""
    best = [r.get("best_test_acc") for r in recs]
    reached = [r for r in recs if r.get("reaches_unpruned_epoch") is not None]
    return {f"best_test_acc_{side}": _mean(best), f"best_test_acc_{side}_std": _std(best),
            f"reached_unpruned_{side}": f"{len(reached)} of {len(recs)}" if any(r.get("per_epoch") for r in recs) else "—"}


def distinct_match_table(res: StudyResults) -> pd.DataFrame:
    """Per distinctiveness variant (run alone): the share of units it removed, the largest share a
    layer lost (Dixit et al. prune by percentile at that share to compare), and its percentile
    control with both accuracies: ``match`` 'exact' where the study ran the step's own control
    (``control: percentile``: the same analysis, the same retraining), else 'nearest': the study's
    percentile pruning variant nearest that share. Accuracies: the variants' files on the test
    split, mean and std over runs; with retraining recorded, the best test accuracy over the epochs
    and how many runs reached the unpruned model's. Empty without a control of either kind."""
    percentile = [v for v in res.variants if v.technique == "prune-percentile" and np.isfinite(v.level)]
    rows = []
    for pair in _distinct_pairs(res):
        if "none" not in pair or ("percentile" not in pair and not percentile):
            continue
        v, recs = pair["none"]
        largest = [max(r["layers"], key=lambda layer: layer["share"]) if r["layers"] else None for r in recs]
        share = _mean(layer["share"] if layer else 0.0 for layer in largest)
        if "percentile" in pair:
            match, mrecs = pair["percentile"]
            how, level = "exact", _mean(r["percent"] for r in mrecs)
        else:
            match, mrecs = min(percentile, key=lambda p: abs(p.level - share)), []
            how, level = "nearest", match.level
        rows.append({"distinct": v.label, "similar_below": recs[0]["similar_below"], "complementary_above": recs[0]["complementary_above"],
                     "runs": len(recs), "units_removed_share": _mean(r["share"] for r in recs), "largest_layer_share": share,
                     "largest_layer": ", ".join(sorted({layer["layer"] for layer in largest if layer})) or "—",
                     "match": how, "matched_percentile": match.label, "percentile_level": level,
                     "accuracy_distinct": _accuracy(res, v), "accuracy_distinct_std": _std(_run_accuracies(res, v)),
                     "accuracy_percentile": _accuracy(res, match), "accuracy_percentile_std": _std(_run_accuracies(res, match)),
                     "unpruned_test_acc": _mean(r.get("unpruned_test_acc") for r in recs + mrecs)}
                    | _retraining(recs, "distinct") | (_retraining(mrecs, "percentile") if mrecs else {}))
    return pd.DataFrame(rows, columns=MATCH_COLUMNS)


def _plot_runs(ax, recs: list[dict], name: str) -> None:
    """One retraining's test accuracy per epoch (0: pruned, before retraining), mean ± std over runs."""
    curves = pd.DataFrame([{"epoch": e["epoch"], "acc": e["test_acc"], "run": i} for i, r in enumerate(recs)
                           for e in [{"epoch": 0, "test_acc": r.get("start_test_acc")}, *r.get("per_epoch", [])]
                           if e.get("test_acc") is not None])
    if curves.empty:
        return
    stats = curves.groupby("epoch").acc.agg(["mean", "std"]).fillna(0.0) * 100
    line, = ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=f"{name} ({len(recs)} run(s))")
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15, color=line.get_color())


def distinct_curves(res: StudyResults, out: Path) -> Path | None:
    """Dixit et al.'s Fig. 1: per angle, the test accuracy per retraining epoch of distinctiveness
    pruning and of its percentile control (mean ± std over runs), with the unpruned model's test
    accuracy as a dashed line. None when no distinctiveness variant recorded its retraining."""
    pairs = [p for p in _distinct_pairs(res)
             if any(e.get("test_acc") is not None for _, recs in p.values() for r in recs for e in r.get("per_epoch", []))]
    if not pairs:
        return None
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 3.4), squeeze=False, layout="constrained")
    for ax, pair in zip(axes[0], pairs):
        unpruned = []
        for control, (v, recs) in sorted(pair.items(), key=lambda kv: kv[0] != "none"):  # distinct first, then its control
            at = (f" at {_mean(r['percent'] for r in recs):.1%} per layer" if control == "percentile" else
                  f" (up to {_mean(max((la['share'] for la in r['layers']), default=0.0) for r in recs):.1%} of a layer's units)")
            _plot_runs(ax, recs, DISTINCT_NAMES.get(control, control) + at)
            unpruned += [r["unpruned_test_acc"] for r in recs if r.get("unpruned_test_acc") is not None]
        if unpruned:
            ax.axhline(100 * float(np.mean(unpruned)), color="black", ls="--", lw=1, label="unpruned model")
        ax.set(title=pair.get("none", next(iter(pair.values())))[0].label, xlabel="retraining epoch", ylabel="test accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return save(fig, out, "distinct_match")


def lottery_tables(res: StudyResults) -> dict[str, pd.DataFrame]:
    """The two tables, where the study has what they need."""
    tables = {"tickets": ticket_table(res), "distinct_match": distinct_match_table(res)}
    return {k: t for k, t in tables.items() if not t.empty}
