"""The result tables `show` prints and `report` writes, one function each, all computed from one
loaded `StudyResults` (torch-free).

`variant_stats` is the paper's Tables 6/7 as long-format data: per variant and measure (size,
accuracy, each group's accuracy, each attribute's gap, deployment measures), the mean and std over the
variant's runs. The display tables below select from it by its columns, never by parsing names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from .analysis import gap_groups, group_accuracies, model_gaps
from .results import MB, StudyResults

LEAK_NOTE = "selected on test (leaks test data)"
DEPLOYMENT = ["raw_bytes", "parameters", "nonzeros", "latency_ms", "throughput_ips",  # stored scalars, averaged per variant
              "peak_rss_mb_b1", "peak_rss_mb_batch"]
DEPLOYMENT_TITLE = ("Deployment measures of the exported ONNX files (means; memory: peak resident MB of loading and running "
                    "the file, over a process with ONNX Runtime imported)")
STATS_COLUMNS = ["key", "variant", "n", "measure", "attribute", "group", "mean", "std"]


def per_run_measures(res: StudyResults, run_ids: list[str]) -> pd.DataFrame:
    """One row per run, columns (measure, attribute, group): accuracy, each group's accuracy and each
    attribute's gap, all from the stored predictions."""
    cols: dict[tuple[str, str, str], np.ndarray] = {}
    correct = np.stack([res.preds[r] == res.y_true for r in run_ids]) if run_ids else np.zeros((0, len(res.y_true)), bool)
    cols[("accuracy", "", "")] = correct.mean(1)
    for attr in res.attributes:
        acc = group_accuracies(res, attr, run_ids).pivot(index="run", columns=attr, values="accuracy").reindex(run_ids)
        for g in res.groups[attr]:
            if g in acc.columns:
                cols[("accuracy", attr, g)] = acc[g].to_numpy()
    pop = np.stack([res.preds[r] for r in run_ids]) if run_ids else np.zeros((0, len(res.y_true)), int)
    gaps = gap_groups(res)
    for attr in sorted(a for a in gaps if a in res.attributes):  # by name, as the tables always listed them
        cols[("gap", attr, "")] = model_gaps(res, pop, attr, gaps[attr])[0]
    frame = pd.DataFrame(cols, index=pd.Index(run_ids, name="run_id"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["measure", "attribute", "group"])
    return frame


def variant_stats(res: StudyResults) -> pd.DataFrame:
    """Per variant and measure: mean and std over its runs (long format, `STATS_COLUMNS`); computed
    once per load (the report's tables, findings and weight tables all read it)."""
    if "variant_stats" not in res.memo:
        res.memo["variant_stats"] = _variant_stats(res)
    return res.memo["variant_stats"]


def _variant_stats(res: StudyResults) -> pd.DataFrame:
    runs = res.run_table().set_index("run_id")
    if runs.empty:
        return pd.DataFrame(columns=STATS_COLUMNS)
    measures = per_run_measures(res, list(runs.index))
    deploy = {(m, "", ""): res.scalar(m).reindex(runs.index) for m in DEPLOYMENT if m in res.scalars}
    data = pd.concat([pd.DataFrame({("size_mb", "", ""): runs.size_mb}), measures, pd.DataFrame(deploy, index=runs.index)], axis=1)
    agg = data.groupby(runs.key.to_numpy(), sort=False).agg(["mean", "std"])
    labels, sizes = {v.key: v.label for v in res.variants}, runs.groupby("key", sort=False).size()
    rows = [(k, labels[k], int(sizes[k]), *col, agg.loc[k, (*col, "mean")], agg.loc[k, (*col, "std")])
            for k in agg.index for col in data.columns]
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def variant_table(stats: pd.DataFrame) -> pd.DataFrame:
    """`variant_stats` as one wide row per variant (the CSV form): columns '<measure>_mean/_std',
    where a group's accuracy is named '<attribute>:<group>' and a gap 'gap:<attribute>'."""
    if stats.empty:
        return pd.DataFrame()
    name = np.where(stats.measure.eq("accuracy") & stats.attribute.ne(""), stats.attribute + ":" + stats.group,
                    np.where(stats.attribute.ne(""), stats.measure + ":" + stats.attribute, stats.measure))
    long = stats.assign(column=name)
    order = list(dict.fromkeys(long.column))
    wide = long.pivot(index="key", columns="column", values=["mean", "std"])
    out = pd.DataFrame({"variant": long.drop_duplicates("key").set_index("key").variant,
                        "n": long.drop_duplicates("key").set_index("key").n})
    for c in order:
        out[f"{c}_mean"], out[f"{c}_std"] = wide[("mean", c)], wide[("std", c)]
    return out.loc[list(dict.fromkeys(long.key))].reset_index(drop=True)


def paper_table(stats: pd.DataFrame, digits: int = 2, attribute: str | None = None, gaps: bool = False) -> pd.DataFrame:
    """Display form of `variant_stats`: variant, size, accuracy and each group as 'mean ± std' (%).

    attribute: only that attribute's groups (and no size/accuracy); gaps: the gap per attribute
    instead of the groups (a compact overview)."""
    overall = stats[stats.measure.isin(["size_mb", "accuracy"]) & stats.attribute.eq("")]
    if attribute is not None:
        rows = stats[stats.measure.eq("accuracy") & stats.attribute.eq(attribute)]
    elif gaps:
        rows = pd.concat([overall, stats[stats.measure.eq("gap")]])
    else:
        rows = pd.concat([overall, stats[stats.measure.eq("accuracy") & stats.attribute.ne("")]])
    out = stats.drop_duplicates("key").set_index("key")[["variant", "n"]]
    for (measure, attr, group), cell in rows.groupby(["measure", "attribute", "group"], sort=False):
        scale = 1 if measure == "size_mb" else 100
        name = ("size (MB)" if measure == "size_mb" else "accuracy" if not attr else group if attribute
                else f"{measure} {attr}" if measure == "gap" else f"{attr} {group}")
        cell = cell.set_index("key")
        mean, std = cell["mean"] * scale, cell["std"].fillna(0) * scale
        out[name] = [f"{a:.{digits}f} ± {b:.{digits}f}" if pd.notna(a) else "–" for a, b in zip(mean.reindex(out.index), std.reindex(out.index))]
    return out.reset_index(drop=True)


def scalar_means(stats: pd.DataFrame) -> pd.DataFrame:
    """Each variant's mean of every scalar measure (size, accuracy, deployment), one row per key in
    the study's order."""
    means = stats[stats.attribute.eq("")].pivot(index="key", columns="measure", values="mean")
    return means.reindex(list(dict.fromkeys(stats.key)))


def deployment_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Means of the deployment measures of the exported files. Memory is the peak resident memory of
    loading the file and running it, over a process with ONNX Runtime imported."""
    keys = list(dict.fromkeys(stats.key))
    means = scalar_means(stats)
    out = pd.DataFrame({"variant": stats.drop_duplicates("key").set_index("key").variant.reindex(keys),
                        "zipped MB": means["size_mb"].round(3)})
    if "raw_bytes" in means:
        out["raw MB"] = (means["raw_bytes"] / MB).round(3)
    if "nonzeros" in means:
        out["non-zeros"] = means["nonzeros"].round().astype("Int64")
    if "latency_ms" in means:
        out["latency ms (b=1)"] = means["latency_ms"].round(3)
        out["images/s (batched)"] = means["throughput_ips"].round(1)
    for measure, column in (("peak_rss_mb_b1", "memory MB (b=1)"), ("peak_rss_mb_batch", "memory MB (batched)")):
        if measure in means:  # either can be missing alone (evaluate/memory_probe.py)
            out[column] = means[measure].round(1)
    return out.reset_index(drop=True)


def baseline_table(res: StudyResults) -> pd.DataFrame:
    """One row per training run (any status): run, seed, status, selection, error, and for finished
    runs their PyTorch test accuracy, gap per attribute and accuracy per group (from predictions)."""
    runs = res.baselines()
    table = pd.DataFrame({"run_id": runs.run_id, "run": runs.label, "seed": runs.seed, "status": runs.status,
                          "selection": runs.selection.map(lambda s: LEAK_NOTE if s == "test" else s), "error": runs.error})
    done = [r for r in runs.run_id if r in res.preds]
    if done:
        m = per_run_measures(res, done)
        m.columns = [("gap " + a) if meas == "gap" else (f"{a}: {g}" if a else meas) for meas, a, g in m.columns]
        table = table.merge(m, left_on="run_id", right_index=True, how="left")
    return table.reset_index(drop=True)


def failed_runs(res: StudyResults) -> pd.DataFrame:
    bad = res.runs[res.runs.status == "failed"]
    return pd.DataFrame({"run": bad.label, "error": bad.error.fillna("").str.split("\n", regex=False).str[0]})


def write_tables(res: StudyResults, study_dir: Path, stats: pd.DataFrame | None = None) -> list[Path]:
    """Markdown and CSV of the study's tables under ``study_dir/tables`` (temp name, then rename)."""
    stats = variant_stats(res) if stats is None else stats
    if stats.empty:
        return []
    out = Path(study_dir) / "tables"
    files = {
        "results.csv": variant_table(stats).to_csv(index=False),
        "results.md": markdown_table(paper_table(stats), "Accuracy (%) and zipped size per variant, mean ± std over baselines and repeats")
        + "\n" + markdown_table(deployment_table(stats), DEPLOYMENT_TITLE),
    }
    fails = failed_runs(res)
    if not fails.empty:
        files["results.md"] += "\n" + markdown_table(fails, "Failed runs")
    return [write_text_atomic(out / name, text) for name, text in files.items()]


def markdown_table(df: pd.DataFrame, title: str) -> str:
    """A Markdown table under a title. Cells, headers and title are escaped (`markdown_text`): group
    and class names come from datasets and must not break the table or inject HTML."""
    cells = df.map(lambda v: "–" if pd.api.types.is_scalar(v) and pd.isna(v) else markdown_text(v))  # pandas 3 keeps NaN in astype(str)
    header = " | ".join(map(markdown_text, cells.columns))
    lines = [f"### {markdown_text(title)}", "", f"| {header} |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_MARKDOWN_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "&": "&amp;", "<": "&lt;", ">": "&gt;"})


def markdown_text(value: object) -> str:
    """``value`` as text for one line of a Markdown table: line breaks become spaces; backslash, pipe
    and backtick are backslash-escaped, and &, <, > become HTML entities."""
    return " ".join(str(value).splitlines()).translate(_MARKDOWN_ESCAPES)
