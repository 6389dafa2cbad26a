"""Per-run metric files in the layout of Stoychev & Gunes's own evaluation scripts.

Their notebooks (github.com/samuilstoychev/model-compression-fer, ``evaluation.py``) pickle one dict
per evaluated model into ``logs/`` (CK+) or ``logs_rafdb/`` (RAF-DB), named
``<what>_model_metrics[_s<sparsity %>|_c<clusters>]_<unix time>``, e.g.
``pruned_and_quantised_model_metrics_s50_1619009136``, and their analysis notebooks
``pickle.load`` every file. The dicts hold:
  - CK+: ``size`` (zipped bytes), ``acc``, ``f_acc``, ``m_acc``, ``f_acc_breakdown`` and
    ``m_acc_breakdown`` (accuracy per class within the gender, in class order) and their means
    ``f_acc_balanced``, ``m_acc_balanced``;
  - RAF-DB: ``size``, ``acc``, ``f_acc``, ``m_acc``, ``caucasian_acc``, ``afamerican_acc``,
    ``asian_acc`` and ``age0_acc`` ... ``age4_acc`` (0-3, 4-19, 20-39, 40-69, 70+).
A study writes one file per finished model (every baseline seed and repeat; the time is the run's
finish time). Where their code would divide by zero (a class a gender has no test image of) the
breakdown holds NaN and the balanced mean is over the classes present. Images of unknown gender
count toward ``acc`` only. Studies on other datasets use the CK+ layout (it needs a gender
attribute with female and male groups). ``index.csv`` maps each file to its run.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import write_bytes_atomic, write_text_atomic
from ..report.paper import COLUMNS, accuracy_within, group_members, paper_variant, variant_recipe
from ..report.results import StudyResults, dataset_name, load_results
from ..store import ResultStore
from . import EXPORT_FORMATS, Exported

PICKLE_PROTOCOL = 3  # what the authors' Python 3 notebooks wrote
RAFDB_KEYS = {"caucasian_acc": "caucasian", "afamerican_acc": "african_american", "asian_acc": "asian",
              "age0_acc": "age_0_3", "age1_acc": "age_4_19", "age2_acc": "age_20_39", "age3_acc": "age_40_69",
              "age4_acc": "age_70_plus"}


class ExportError(ValueError):
    """The study cannot be written in this layout; the message says what is missing."""


@EXPORT_FORMATS.register("stoychev")
def export_stoychev(study_dir: Path, out: Path) -> Exported:
    """Pickled metric dicts per run, as the authors' evaluation scripts wrote them."""
    store = ResultStore.open_existing(study_dir)
    try:
        res = load_results(store, intersections=False)
        runs = store.runs()
    finally:
        store.close()
    rafdb = dataset_name(runs) == "rafdb"
    _require_groups(res, study_dir, rafdb)
    folder = out / ("logs_rafdb" if rafdb else "logs")
    _remove_previous(folder)
    done = Exported(folder)
    finished_at = runs.set_index("run_id").finished_at
    index, taken = [], set()
    for variant in res.variants:
        named = paper_variant(variant_recipe(res, variant))
        if named is None:
            done.skipped.append(f"{variant.label}: not one of the paper's variants, so the authors' layout has no name for it")
            continue
        for run_id in variant.run_ids:
            stamp = int(finished_at.get(run_id, 0) or 0)
            while (named.log_stem, stamp) in taken:  # two runs finished in the same second
                stamp += 1
            taken.add((named.log_stem, stamp))
            metrics = run_metrics(res, run_id, rafdb)
            path = write_bytes_atomic(folder / f"{named.log_stem}_{stamp}", pickle.dumps(metrics, protocol=PICKLE_PROTOCOL))
            done.files.append(path)
            row = res.runs.set_index("run_id").loc[run_id]
            index.append({"file": path.name, "run_id": run_id, "variant": variant.label, "paper_row": named.row,
                          "seed": int(row.seed), "repeat": int(row["repeat"]) if pd.notna(row["repeat"]) else 0})
    write_text_atomic(folder / "index.csv", pd.DataFrame(index, columns=["file", "run_id", "variant", "paper_row", "seed", "repeat"])
                      .to_csv(index=False))
    return done


def run_metrics(res: StudyResults, run_id: str, rafdb: bool) -> dict:
    """One model's dict, with the authors' keys and plain Python values."""
    right = res.preds[run_id] == res.y_true
    size = res.scalar("zipped_bytes").get(run_id, np.nan)
    metrics: dict = {"size": int(size) if np.isfinite(size) else None, "acc": float(right.mean())}
    female, male = (group_members(res, "gender", g) for g in ("female", "male"))
    metrics["f_acc"], metrics["m_acc"] = accuracy_within(right, female), accuracy_within(right, male)
    if rafdb:
        for key, column in RAFDB_KEYS.items():
            metrics[key] = accuracy_within(right, group_members(res, *COLUMNS[column]))
        return metrics
    for prefix, members in (("f", female), ("m", male)):
        breakdown = [accuracy_within(right, members & (res.y_true == c)) for c in range(len(res.class_names))]
        present = [a for a in breakdown if not np.isnan(a)]
        metrics[f"{prefix}_acc_breakdown"] = breakdown
        metrics[f"{prefix}_acc_balanced"] = float(np.mean(present)) if present else float("nan")
    return metrics


def _require_groups(res: StudyResults, study_dir: Path, rafdb: bool) -> None:
    needed = [("gender", "female"), ("gender", "male")]
    if rafdb:
        needed += [COLUMNS[c] for c in RAFDB_KEYS.values()]
    absent = [f"{a}: {g}" for a, g in needed if g not in res.groups.get(a, [])]
    if absent:
        have = "; ".join(f"{a}: {', '.join(gs)}" for a, gs in res.groups.items()) or "no attributes"
        raise ExportError(f"{study_dir}: the authors' layout needs the groups {', '.join(absent)}, which this study's "
                          f"dataset does not have (it has {have})")


def _remove_previous(folder: Path) -> None:
    """Files an earlier export wrote (listed in its index.csv), so none outlives its run."""
    index = folder / "index.csv"
    if index.exists():
        for name in pd.read_csv(index).file.astype(str):
            (folder / Path(name).name).unlink(missing_ok=True)
