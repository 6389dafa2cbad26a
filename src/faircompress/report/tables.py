"""Result tables from a study's store (torch-free)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..store import ResultStore

LEAK_NOTE = "selected on test (leaks test data)"
MB = 1e6  # the paper's MB


def runs_table(store: ResultStore, kind: str | None = None) -> pd.DataFrame:
    """One row per run: label, status, selection, accuracy, then accuracy per group and gap per attribute."""
    runs = store.runs()
    if kind is not None:
        runs = runs[runs.kind == kind]
    if runs.empty:
        return pd.DataFrame()
    m = store.metrics()
    metrics = m.pivot(index="run_id", columns="name", values="value") if not m.empty else pd.DataFrame()
    groups = store.group_metrics()
    table = runs[["run_id", "label", "seed", "status", "selection", "precision", "error"]].set_index("run_id")
    table["selection"] = table["selection"].map(lambda s: LEAK_NOTE if s == "test" else s)
    table["accuracy"] = metrics.get("accuracy")
    if not groups.empty:
        wide = groups.assign(col=groups["attribute"] + ":" + groups["grp"]).pivot(index="run_id", columns="col", values="accuracy")
        ordered = list(dict.fromkeys(groups["attribute"] + ":" + groups["grp"]))
        table = table.join(wide[ordered])
        for attr in dict.fromkeys(groups["attribute"]):
            table[f"gap:{attr}"] = metrics.get(f"gap:{attr}")
    return table.reset_index()


def variant_table(store: ResultStore) -> pd.DataFrame:
    """The paper's Tables 6/7 as data: one row per recipe (over baselines and repeats), with mean and
    std of zipped size (MB), accuracy and every group's accuracy, plus deployment measures."""
    runs = store.runs()
    runs = runs[(runs.kind == "variant") & (runs.status == "finished")]
    if runs.empty:
        return pd.DataFrame()
    m = store.metrics().pivot(index="run_id", columns="name", values="value").loc[runs.run_id]
    g = store.group_metrics()
    g = g[g.run_id.isin(runs.run_id)]
    wide = g.assign(col=g["attribute"] + ":" + g["grp"]).pivot(index="run_id", columns="col", values="accuracy")
    group_cols = list(dict.fromkeys(g["attribute"] + ":" + g["grp"]))
    data = pd.DataFrame({
        "variant": runs.set_index("run_id").label.str.split(" | ", regex=False).str[0],
        "size_mb": m["zipped_bytes"] / MB,
        "accuracy": m["accuracy"],
    }).join(wide[group_cols])
    for col in [c for c in m.columns if c.startswith("gap:")] + ["raw_bytes", "parameters", "nonzeros", "latency_ms", "throughput_ips"]:
        if col in m:
            data[col] = m[col]
    order = list(dict.fromkeys(data["variant"]))
    agg = data.groupby("variant", sort=False).agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    agg.insert(0, "n", data.groupby("variant", sort=False).size())
    return agg.loc[order].reset_index()


def paper_table(table: pd.DataFrame, digits: int = 2, attribute: str | None = None, gaps: bool = False) -> pd.DataFrame:
    """Display form of `variant_table`: variant, size, accuracy and each group as 'mean ± std' (%).

    attribute: only that attribute's groups (and no size/accuracy); gaps: the gap per attribute
    instead of the groups (a compact overview)."""
    groups = [c[:-5] for c in table.columns if ":" in c and c.endswith("_mean") and not c.startswith("gap:")]
    if attribute is not None:
        cols = [c for c in groups if c.split(":", 1)[0] == attribute]
    elif gaps:
        cols = ["size_mb", "accuracy"] + [c[:-5] for c in table.columns if c.startswith("gap:") and c.endswith("_mean")]
    else:
        cols = ["size_mb", "accuracy"] + groups
    out = pd.DataFrame({"variant": table["variant"], "n": table["n"]})
    for c in cols:
        scale = 1 if c == "size_mb" else 100
        mean, std = table[f"{c}_mean"] * scale, table[f"{c}_std"].fillna(0) * scale
        name = "size (MB)" if c == "size_mb" else (c.split(":", 1)[1] if attribute else c.replace(":", " "))
        out[name] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in zip(mean, std)]
    return out


def deployment_table(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"variant": table["variant"], "zipped MB": table["size_mb_mean"].round(3)})
    if "raw_bytes_mean" in table:
        out["raw MB"] = (table["raw_bytes_mean"] / MB).round(3)
    if "nonzeros_mean" in table:
        out["non-zeros"] = table["nonzeros_mean"].round().astype("Int64")
    if "latency_ms_mean" in table:
        out["latency ms (b=1)"] = table["latency_ms_mean"].round(3)
        out["images/s (batched)"] = table["throughput_ips_mean"].round(1)
    return out


def failed_runs(store: ResultStore) -> pd.DataFrame:
    runs = store.runs()
    bad = runs[runs.status == "failed"]
    return pd.DataFrame({"run": bad.label, "error": bad.error.fillna("").str.split("\n", regex=False).str[0]})


def write_tables(store: ResultStore, study_dir: Path, table: pd.DataFrame | None = None) -> list[Path]:
    """Markdown and CSV of the study's tables under ``study_dir/tables`` (temp name, then rename).
    ``table``: an already computed `variant_table`."""
    table = variant_table(store) if table is None else table
    if table.empty:
        return []
    out = Path(study_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results.csv": table.to_csv(index=False),
        "results.md": markdown_table(paper_table(table), "Accuracy (%) and zipped size per variant, mean ± std over baselines and repeats")
        + "\n" + markdown_table(deployment_table(table), "Deployment measures of the exported ONNX files (means)"),
    }
    fails = failed_runs(store)
    if not fails.empty:
        files["results.md"] += "\n" + markdown_table(fails, "Failed runs")
    written = []
    for name, text in files.items():
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
        written.append(out / name)
    return written


def markdown_table(df: pd.DataFrame, title: str) -> str:
    cells = df.map(lambda v: "–" if pd.api.types.is_scalar(v) and pd.isna(v) else str(v))  # pandas 3 keeps NaN in astype(str)
    lines = [f"### {title}", "", "| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"
