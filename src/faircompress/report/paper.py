"""The paper's own numbers beside a study's, and the authors' names for its variants.

Stoychev & Gunes (2022) report one model per variant in their appendix: Table 6 (CK+: size, overall,
female and male accuracy) and Table 7 (RAF-DB: also race and age groups). `comparison` places a
study's means over its models beside those values when the study ran on the paper's dataset;
`PaperVariant` names a recipe the way the authors' notebooks and logs do (shared with
`faircompress export --format stoychev`). Only the paper's recipes have names: the baseline,
weight-only int8 (their TFLite dynamic-range quantisation), pruning, clustering, and pruning or
clustering followed by that quantisation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from .results import StudyResults, Variant

PAPER_QUANT_MODE = "int8-weights"  # TFLite's dynamic-range quantisation: int8 weights, float activations
TABLES = {"ckplus": "stoychev2022_table6.csv", "rafdb": "stoychev2022_table7.csv"}
TABLE_NAMES = {"ckplus": "Table 6 (CK+)", "rafdb": "Table 7 (RAF-DB)"}
# the paper's column -> (attribute, group) of our loaders; None: not a group column
COLUMNS: dict[str, tuple[str, str] | None] = {
    "size_mb": None, "overall": None,
    "female": ("gender", "female"), "male": ("gender", "male"),
    "caucasian": ("race", "Caucasian"), "african_american": ("race", "African-American"), "asian": ("race", "Asian"),
    "age_0_3": ("age", "0-3"), "age_4_19": ("age", "4-19"), "age_20_39": ("age", "20-39"),
    "age_40_69": ("age", "40-69"), "age_70_plus": ("age", "70+"),
}
HEADINGS = {"size_mb": "size (MB)", "overall": "overall", "female": "female", "male": "male", "caucasian": "Cauc.",
            "african_american": "Af.-Am.", "asian": "Asian", "age_0_3": "A0", "age_4_19": "A1", "age_20_39": "A2",
            "age_40_69": "A3", "age_70_plus": "A4"}


@dataclass(frozen=True)
class PaperVariant:
    """One of the paper's model variants: what was done (``pruned``, ``clustered`` or neither), at
    which level (sparsity in % or clusters), and whether it was quantised afterwards."""

    base: str          # "", "pruned" or "clustered"
    level: int | None
    quantised: bool

    @property
    def row(self) -> str:
        """The row label of the paper's Tables 6 and 7."""
        if not self.base:
            return "quantised" if self.quantised else "baseline"
        if self.base == "pruned":
            return f"pruned ({self.level}%)" + (" + quant." if self.quantised else "")
        return f"clust. ({self.level} cl.) + quant." if self.quantised else f"clustered ({self.level} cl.)"

    @property
    def log_stem(self) -> str:
        """The authors' metric-file name before its timestamp (their notebooks' ``logs/`` names)."""
        if not self.base:
            return "quantised_model_metrics" if self.quantised else "model_metrics"
        done = f"{self.base}_and_quantised" if self.quantised else self.base
        return f"{done}_model_metrics_{'s' if self.base == 'pruned' else 'c'}{self.level}"


def paper_variant(recipe: list[dict]) -> PaperVariant | None:
    """The paper's variant a recipe (its list of ``{step: params}``) reproduces, or None."""
    names = [next(iter(step)) for step in recipe]
    params = [next(iter(step.values())) or {} for step in recipe]
    quantised = bool(names) and names[-1] == "quantize"
    if quantised and params[-1].get("mode", PAPER_QUANT_MODE) != PAPER_QUANT_MODE:
        return None
    head = names[:-1] if quantised else names
    if not head:
        return PaperVariant("", None, quantised)
    if len(head) != 1:
        return None
    if head[0] == "prune":
        if (not isinstance(params[0].get("sparsity"), (int, float))  # per-layer sparsities: not one of the paper's
                or params[0].get("method", "magnitude") != "magnitude" or params[0].get("scope", "per_tensor") != "per_tensor"):
            return None  # the paper pruned each kernel by magnitude (tfmot's default)
        sparsity = 100 * float(params[0]["sparsity"])
        return PaperVariant("pruned", int(round(sparsity)), quantised) if np.isclose(sparsity, round(sparsity)) else None
    if head[0] == "cluster":
        if params[0].get("skip"):  # the paper clustered every kernel
            return None
        return PaperVariant("clustered", int(params[0]["clusters"]), quantised)
    return None


def paper_table(dataset: str) -> pd.DataFrame | None:
    """The paper's table for a dataset (accuracies in %), indexed by row label; None for other datasets."""
    if dataset not in TABLES:
        return None
    with resources.as_file(resources.files("faircompress.report") / "resources" / TABLES[dataset]) as path:
        return pd.read_csv(path, comment="#", index_col="model")


def variant_recipe(res: StudyResults, variant: Variant) -> list[dict]:
    row = res.runs.set_index("run_id").loc[variant.run_ids[0]]
    return json.loads(row.recipe_json) if isinstance(row.recipe_json, str) else []


def run_measures(res: StudyResults, variant: Variant, columns: list[str]) -> pd.DataFrame:
    """One row per model of the variant: the paper's measures (size in MB, accuracies in %)."""
    sizes = res.scalar("zipped_bytes")
    rows = []
    for run_id in variant.run_ids:
        right = res.preds[run_id] == res.y_true
        row = {"size_mb": sizes.get(run_id, np.nan) / 1e6, "overall": 100 * right.mean()}
        for col in columns:
            if COLUMNS.get(col):
                row[col] = 100 * accuracy_within(right, group_members(res, *COLUMNS[col]))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def group_members(res: StudyResults, attribute: str, group: str) -> np.ndarray:
    """(N,) whether each test image is in the group (all False when the study has no such group)."""
    names = res.groups.get(attribute, [])
    return res.codes[attribute] == names.index(group) if group in names else np.zeros(len(res.y_true), dtype=bool)


def accuracy_within(right: np.ndarray, members: np.ndarray) -> float:
    return float(right[members].mean()) if members.any() else float("nan")


def comparison(res: StudyResults, dataset: str) -> pd.DataFrame:
    """Long form: for each of the study's variants that is one of the paper's rows and each of the
    paper's measures, our mean and std over the variant's models, the paper's value and the difference.
    Empty when the dataset has no table in the paper or no variant matches."""
    table = paper_table(dataset)
    columns = [] if table is None else list(table.columns)
    rows = []
    for variant in res.variants:
        named = paper_variant(variant_recipe(res, variant))
        if table is None or named is None or named.row not in table.index:
            continue
        ours = run_measures(res, variant, columns)
        for col in columns:
            mean = ours[col].mean()
            rows.append({"variant": variant.label, "paper_row": named.row, "measure": HEADINGS[col], "ours": mean,
                         "ours_std": ours[col].std(ddof=1) if len(ours) > 1 else 0.0, "models": len(ours),
                         "paper": float(table.loc[named.row, col]), "difference": mean - float(table.loc[named.row, col])})
    return pd.DataFrame(rows, columns=["variant", "paper_row", "measure", "ours", "ours_std", "models", "paper", "difference"])


def side_by_side(long: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, each measure's cell 'ours (paper)' to one decimal (size to two)."""
    if long.empty:
        return pd.DataFrame()
    def cell(r) -> str:
        digits = 2 if r.measure == HEADINGS["size_mb"] else 1
        return "—" if np.isnan(r.ours) else f"{r.ours:.{digits}f} ({r.paper:.{digits}f})"
    cells = long.assign(cell=long.apply(cell, axis=1))
    wide = cells.pivot(index=["variant", "paper_row"], columns="measure", values="cell")
    order = [m for m in dict.fromkeys(long.measure)]
    wide = wide[order].rename_axis(columns=None).reset_index().rename(columns={"paper_row": "paper's row"})
    rank = {v: i for i, v in enumerate(dict.fromkeys(long.variant))}
    return wide.sort_values("variant", key=lambda s: s.map(rank)).reset_index(drop=True)


def unmatched_rows(res: StudyResults, dataset: str) -> list[str]:
    """The paper's rows the study has no variant for."""
    table = paper_table(dataset)
    if table is None:
        return []
    have = {named.row for v in res.variants if (named := paper_variant(variant_recipe(res, v))) is not None}
    return [row for row in table.index if row not in have]
