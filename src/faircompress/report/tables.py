"""Result tables from a study's store (torch-free)."""
from __future__ import annotations

import pandas as pd

from ..store import ResultStore

LEAK_NOTE = "selected on test (leaks test data)"


def runs_table(store: ResultStore) -> pd.DataFrame:
    """One row per run: label, status, selection, accuracy, then accuracy per group and gap per attribute."""
    runs = store.runs()
    if runs.empty:
        return pd.DataFrame()
    metrics = store.metrics().pivot(index="run_id", columns="name", values="value") if not store.metrics().empty else pd.DataFrame()
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


def group_table(store: ResultStore) -> pd.DataFrame:
    """Long table: run, attribute, group, count, accuracy."""
    runs = store.runs()[["run_id", "label"]]
    return store.group_metrics().merge(runs, on="run_id")[["label", "attribute", "grp", "count", "accuracy"]]
