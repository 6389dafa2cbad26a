"""A study's results, loaded once from the store: the one object every table, figure, `show` and
`report` read (torch-free; no images needed).

Variants are grouped by their recipe's key (a hash of its canonical steps), never by a label; the
label is only what tables print. The reference is the recipe with no steps (each baseline's own fp32
export); a variant's population is all of its repeats over all baselines.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from ..data.composition import Composition
from ..evaluate.size import MB
from ..store import ResultStore, StoreError
INTERSECTION = " × "  # joins two attributes' names (and their groups') into an intersection


@dataclass(frozen=True)
class Variant:
    """One recipe of the study and the finished runs that applied it."""

    key: str                 # the recipe's key: what rows are grouped by
    label: str               # what tables print
    technique: str           # the steps' names, e.g. 'prune + quantize'
    level: float             # the first step's level parameter (nan when it has none)
    is_reference: bool
    run_ids: tuple[str, ...]


@dataclass
class StudyResults:
    class_names: list[str]
    groups: dict[str, list[str]]          # attribute (and "a × b" intersections) -> group names
    codes: dict[str, np.ndarray]          # attribute -> (N,) codes, -1 unknown
    subjects: np.ndarray                  # (N,)
    y_true: np.ndarray                    # (N,)
    runs: pd.DataFrame                    # every run, with its typed identity columns
    variants: list[Variant]               # in plan order; the reference first when it finished
    preds: dict[str, np.ndarray]          # run_id -> (N,) predictions aligned with y_true (finished runs)
    scalars: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id x scalar metric (size, latency, ...)
    other_splits: Composition | None = None  # train and val image counts; None when the store has none recorded
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)   # every run's per-epoch history (`ResultStore.epochs`)
    memo: dict = field(default_factory=dict, repr=False)  # derived tables computed once per load (see analysis.py)

    @property
    def attributes(self) -> list[str]:
        return [a for a in self.groups if INTERSECTION not in a]

    @property
    def reference(self) -> Variant | None:
        return next((v for v in self.variants if v.is_reference), None)

    def population(self, variant: Variant) -> np.ndarray:
        """(models, N) predictions of a variant's runs."""
        return np.stack([self.preds[i] for i in variant.run_ids])

    def baselines(self) -> pd.DataFrame:
        """The training runs, every status."""
        return self.runs[self.runs.kind == "baseline"]

    def run_table(self) -> pd.DataFrame:
        """One row per finished variant run: run_id, variant key and label, technique, level, seed,
        repeat and zipped size in MB."""
        rows = [{"run_id": r, "key": v.key, "variant": v.label, "technique": v.technique, "level": v.level}
                for v in self.variants for r in v.run_ids]
        table = pd.DataFrame(rows, columns=["run_id", "key", "variant", "technique", "level"])
        ident = self.runs.set_index("run_id")
        table["seed"] = ident.seed.reindex(table.run_id).to_numpy()
        table["repeat"] = ident["repeat"].fillna(0).astype(int).reindex(table.run_id).to_numpy()
        table["size_mb"] = self.scalar("zipped_bytes").reindex(table.run_id).to_numpy() / MB
        return table

    def recipe_steps(self, variant: Variant) -> list[dict] | None:
        """The variant's recipe as its runs stored it ([{step: params}, ...]; None when not stored)."""
        raw = self.runs.set_index("run_id").recipe_json.get(variant.run_ids[0]) if variant.run_ids else None
        return json.loads(raw) if isinstance(raw, str) else None

    def scalar(self, metric: str) -> pd.Series:
        """A stored scalar metric per run_id (empty when no run has it)."""
        return self.scalars[metric] if metric in self.scalars else pd.Series(dtype=float)


def dataset_name(runs: pd.DataFrame) -> str:
    """The registered dataset a study's config names ('' for a study with no runs)."""
    return str(json.loads(runs.config_json.iloc[0]).get("dataset", {}).get("name", "")) if not runs.empty else ""


class NothingToAnalyse(ValueError):
    """The study has no recorded test samples yet."""


def load_results(store: ResultStore, intersections: bool = True) -> StudyResults:
    c = store.conn
    runs = store.runs()
    finished = runs[runs.status == "finished"]
    key = _dataset_of(store, finished)
    classes_json, groups_json = c.execute("SELECT class_names_json, attribute_groups_json FROM datasets WHERE dataset_key=?",
                                          (key,)).fetchone()
    samples = pd.read_sql_query("SELECT sample, subject, label, attributes_json FROM samples WHERE dataset_key=? ORDER BY sample",
                                c, params=(key,))
    groups, codes = _attribute_codes(samples, json.loads(groups_json), intersections)
    preds = _predictions(store, samples["sample"].to_numpy(), set(finished.run_id))
    metrics = store.metrics()
    scalar_rows = metrics[(metrics.attribute == "") & (metrics.group == "")]
    scalars = scalar_rows.pivot(index="run_id", columns="metric", values="value") if not scalar_rows.empty else pd.DataFrame()
    return StudyResults(json.loads(classes_json), groups, codes, samples.subject.astype(str).to_numpy(), samples.label.to_numpy(),
                        runs, _variants(finished[finished.run_id.isin(preds)]), preds, scalars,
                        _other_splits(store, key, list(json.loads(groups_json))), store.epochs())


def _other_splits(store: ResultStore, key: str, attributes: list[str]) -> Composition | None:
    """The recorded train and val counts (None for a study recorded before they were kept)."""
    rows = store.split_counts(key)
    return Composition.from_rows(rows, attributes, f"{store.path}: split_counts") if len(rows) else None


def _dataset_of(store: ResultStore, finished: pd.DataFrame) -> str:
    """The one dataset the study's runs were scored on; a store whose runs saw several cannot be
    analysed as one study (never score a run against another dataset's samples)."""
    recorded = [k for (k,) in store.conn.execute("SELECT dataset_key FROM datasets").fetchall()]
    if not recorded:
        raise NothingToAnalyse("the study has no test samples recorded yet (no run has started)")
    keys = finished.dataset_key.dropna().unique() if "dataset_key" in finished else []
    if finished.empty or (len(keys) == 0 and len(recorded) == 1):
        return recorded[-1]
    if len(keys) == 1 and finished.dataset_key.notna().all():
        return str(keys[0])
    counts = ", ".join(f"{k}: {n} runs" for k, n in finished.dataset_key.fillna("unknown").value_counts().items())
    raise StoreError(f"{store.path}: its runs were scored on {max(len(keys), len(recorded))} different datasets ({counts}); "
                     "one study compares models on one test set. Run each dataset into its own directory (--out DIR)")


def _attribute_codes(samples: pd.DataFrame, groups: dict[str, list[str]], intersections: bool):
    attrs = samples.attributes_json.map(json.loads)
    codes = {a: np.array([d[a] for d in attrs], dtype=np.int64) for a in groups}
    if intersections:
        for a, b in combinations(list(groups), 2):
            ga, gb = groups[a], groups[b]
            both = (codes[a] >= 0) & (codes[b] >= 0)
            codes[f"{a}{INTERSECTION}{b}"] = np.where(both, codes[a] * len(gb) + codes[b], -1)
            groups[f"{a}{INTERSECTION}{b}"] = [f"{x}{INTERSECTION}{y}" for x in ga for y in gb]
    return groups, codes


def _predictions(store: ResultStore, sample_ids: np.ndarray, run_ids: set[str]) -> dict[str, np.ndarray]:
    index = pd.Series(np.arange(len(sample_ids)), index=sample_ids)
    preds = {}
    for run_id, df in store.all_predictions().groupby("run_id"):
        if run_id in run_ids:
            arr = np.full(len(sample_ids), -1, dtype=np.int64)
            arr[index.reindex(df["sample"]).to_numpy()] = df.y_pred.to_numpy()
            preds[run_id] = arr
    return preds


def _variants(finished: pd.DataFrame) -> list[Variant]:
    """Variants in plan order. A recipe run again on the same baseline and repeat with other
    measurement settings (latency on or off) counts once, as its newest run: never as a repeat."""
    v = finished[finished.kind == "variant"]
    v = v.sort_values("finished_at", kind="stable").drop_duplicates(["baseline_id", "recipe_key", "repeat"], keep="last")
    v = v.sort_values("started_at", kind="stable")
    out = []
    for key, rows in v.groupby("recipe_key", sort=False):
        first = rows.iloc[0]
        level = float(first.level) if pd.notna(first.level) else float("nan")
        out.append(Variant(str(key), str(first.variant), str(first.technique), level, bool(first.is_reference), tuple(rows.run_id)))
    return sorted(out, key=lambda x: not x.is_reference)  # stable: plan order otherwise
