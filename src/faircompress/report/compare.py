"""`faircompress compare STUDY STUDY ... --out DIR`: studies side by side, on what they share.

The paper's headline is a comparison of two studies: CK+'s model is less robust to compression than
RAF-DB's, and only on CK+ does compression widen the gender gap. Here each study is analysed as its own
report does (its gap table, corrected across that study), then the studies are compared on the
recipes (by recipe key) and attributes they share; what one study has and another lacks is listed,
never compared. The first study is the reference each other study is compared with:
  - accuracy change per shared variant in each study (paired subject bootstrap against its own
    baseline), and the difference of changes between studies with an interval (independent
    bootstraps) and a p-value, Holm-corrected across the comparison;
  - each shared attribute's gap change per study (the study's own test), and the difference of gap
    changes between studies (normal interval from the two bootstrap standard errors), Holm-corrected;
  - the weight-spread numbers behind the paper's explanation (`weights.py`), per study.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..evaluate import fairness as F
from ..store import ResultStore
from . import analysis as A
from . import weights as W
from .findings import Finding
from .results import INTERSECTION, StudyResults, Variant, dataset_name, load_results

Progress = Callable[[str], None]
Z95 = 1.959964


class CompareError(ValueError):
    """Studies that cannot be compared; the message says why."""


@dataclass
class Study:
    name: str
    path: Path
    dataset: str
    res: StudyResults
    gaps: pd.DataFrame
    spread: pd.DataFrame

    def variant(self, key: str) -> Variant:
        return next(v for v in self.res.variants if v.key == key)


def load_study(path: Path, n_boot: int, seed: int) -> Study:
    store = ResultStore.open_existing(path)
    try:
        res = load_results(store)
        runs = store.runs()
    finally:
        store.close()
    if res.reference is None:
        raise CompareError(f"{path}: no finished baseline (fp32) variant, so no change can be measured")
    return Study(str(runs.study.iloc[0]), path, dataset_name(runs) or "?", res,
                 A.gap_table(res, n_boot, seed), W.spread_table(res, path))


def unique_names(studies: list[Study]) -> None:
    """Two studies with one name are told apart by their folders."""
    names = [s.name for s in studies]
    for s in studies:
        if names.count(s.name) > 1:
            s.name = f"{s.name} ({s.path})"


# ----------------------------------------------------------------------------- what is shared
def shared_keys(studies: list[Study]) -> list[str]:
    """Recipe keys every study finished, in the first study's order, without the baseline."""
    keys = [{v.key for v in s.res.variants if not v.is_reference} for s in studies]
    common = set.intersection(*keys)
    return [v.key for v in studies[0].res.variants if v.key in common]


def mismatch_table(studies: list[Study]) -> pd.DataFrame:
    """Each variant or attribute some study lacks: where it is, and where it is missing."""
    rows = []
    labels = {v.key: v.label for s in studies for v in s.res.variants}
    for key, label in labels.items():
        have = [s.name for s in studies if any(v.key == key for v in s.res.variants)]
        if len(have) < len(studies):
            rows.append({"kind": "variant", "name": label, "in": ", ".join(have),
                         "missing in": ", ".join(s.name for s in studies if s.name not in have)})
    for attr in dict.fromkeys(a for s in studies for a in s.res.attributes):
        have = [s.name for s in studies if attr in s.res.attributes]
        if len(have) < len(studies):
            rows.append({"kind": "attribute", "name": attr, "in": ", ".join(have),
                         "missing in": ", ".join(s.name for s in studies if s.name not in have)})
    return pd.DataFrame(rows, columns=["kind", "name", "in", "missing in"])


def shared_attributes(studies: list[Study]) -> list[str]:
    return [a for a in studies[0].res.attributes if all(a in s.res.attributes for s in studies[1:])]


# ----------------------------------------------------------------------------- accuracy
def accuracy_changes(study: Study, keys: list[str], n_boot: int, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Per shared variant: its accuracy change against the study's baseline (pp) with a paired
    bootstrap interval; and each variant's bootstrap draws (for the differences between studies)."""
    res = study.res
    base = res.population(res.reference) == res.y_true
    rows, draws = [], {}
    for key in keys:
        variant = study.variant(key)
        pop = res.population(variant) == res.y_true
        boot = F.paired_accuracy_bootstrap(base, pop, res.subjects, n_boot, seed)
        change = float(pop.mean(1).mean() - base.mean(1).mean())
        lo, hi = np.nanquantile(boot, [0.025, 0.975])
        draws[key] = boot - np.nanmean(boot) + change  # centred on the estimate: the spread is what is compared
        rows.append({"study": study.name, "key": key, "variant": variant.label, "technique": variant.technique,
                     "level": variant.level, "accuracy change": change, "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows), draws


def accuracy_differences(studies: list[Study], draws: dict[str, dict[str, np.ndarray]], changes: pd.DataFrame) -> pd.DataFrame:
    """Each other study's accuracy change minus the first study's, per shared variant: an interval
    from the two independent bootstraps, p from its standard error, Holm across the comparison."""
    first = studies[0]
    ref = changes[changes.study == first.name].set_index("key")
    rows = []
    for other in studies[1:]:
        mine = changes[changes.study == other.name].set_index("key")
        for key in ref.index:
            diff_boot = draws[other.name][key] - draws[first.name][key]
            diff = float(mine.loc[key, "accuracy change"] - ref.loc[key, "accuracy change"])
            lo, hi = np.nanquantile(diff_boot, [0.025, 0.975])
            rows.append({"study": other.name, "against": first.name, "key": key, "variant": ref.loc[key, "variant"],
                         "technique": ref.loc[key, "technique"], "level": ref.loc[key, "level"], "difference": diff,
                         "ci_low": float(lo), "ci_high": float(hi), "p": F.bootstrap_p(diff, diff_boot)})
    return _holm(pd.DataFrame(rows, columns=["study", "against", "key", "variant", "technique", "level", "difference",
                                             "ci_low", "ci_high", "p"]))


# ----------------------------------------------------------------------------- gaps
def gap_changes(studies: list[Study], keys: list[str], attributes: list[str]) -> pd.DataFrame:
    """Each study's own gap change per shared variant and attribute (its report's numbers and test)."""
    rows = []
    for s in studies:
        labels = {s.variant(k).label: k for k in keys}
        g = s.gaps[s.gaps.variant.isin(labels) & s.gaps.attribute.isin(attributes)]
        rows.append(g.assign(study=s.name, key=g.variant.map(labels))[
            ["study", "key", "variant", "attribute", "gap_change", "ci_low", "ci_high", "se", "p_holm", "significant"]])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def gap_differences(studies: list[Study], gaps: pd.DataFrame) -> pd.DataFrame:
    """Each other study's gap change minus the first study's: a normal interval from the two
    bootstrap standard errors (independent test sets), Holm across the comparison."""
    if gaps.empty:
        return pd.DataFrame()
    first = gaps[gaps.study == studies[0].name].set_index(["key", "attribute"])
    rows = []
    for other in studies[1:]:
        mine = gaps[gaps.study == other.name].set_index(["key", "attribute"])
        for idx in first.index.intersection(mine.index):
            a, b = first.loc[idx], mine.loc[idx]
            diff, se = float(b.gap_change - a.gap_change), float(np.hypot(a.se, b.se))
            p = F.normal_p(diff, se)
            rows.append({"study": other.name, "against": studies[0].name, "key": idx[0], "variant": a.variant,
                         "attribute": idx[1], "difference": diff, "ci_low": diff - Z95 * se, "ci_high": diff + Z95 * se, "p": p})
    return _holm(pd.DataFrame(rows, columns=["study", "against", "key", "variant", "attribute", "difference", "ci_low",
                                             "ci_high", "p"]))


def _holm(df: pd.DataFrame) -> pd.DataFrame:
    df["p_holm"] = F.holm(df.p.to_numpy(dtype=float)) if len(df) else []
    df["significant"] = (df.p_holm < 0.05).astype(bool)
    return df


# ----------------------------------------------------------------------------- weights
def spread_by_study(studies: list[Study], changes: pd.DataFrame) -> pd.DataFrame:
    """Per study, over its baseline files (layers weighted by size): std, kurtosis, share near zero,
    the cut and energy removed at 60 %, beside the accuracy its 60 % pruning changed (if it pruned there)."""
    rows = []
    for s in studies:
        if s.spread.empty:
            continue
        w = s.spread.elements / s.spread.groupby("seed").elements.transform("sum") / s.spread.seed.nunique()
        at = f"@{W.PAPER_LEVEL:g}"
        prune60 = changes[(changes.study == s.name) & (changes.technique == "prune") & np.isclose(changes.level, W.PAPER_LEVEL)]
        rows.append({"study": s.name, "dataset": s.dataset, "std": float((s.spread["std"] * w).sum()),
                     "kurtosis": float((s.spread["kurtosis"] * w).sum()), f"share within ±{W.BAND:g} sd": float((s.spread["near_zero"] * w).sum()),
                     "cut at 60 % (sd)": float((s.spread[f"cut_sd{at}"] * w).sum()),
                     "energy removed at 60 %": float((s.spread[f"energy_removed{at}"] * w).sum()),
                     "accuracy change at prune 60 % (pp)": 100 * float(prune60["accuracy change"].iloc[0]) if len(prune60) else np.nan})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- findings
def compare_findings(studies: list[Study], acc_diff: pd.DataFrame, gaps: pd.DataFrame, gap_diff: pd.DataFrame,
                     mismatch: pd.DataFrame) -> list[Finding]:
    out = []
    if not mismatch.empty:
        out.append(Finding("warning", f"compared on the shared part only: {len(mismatch)} variant(s) or attribute(s) are "
                                      "missing in some study (see 'Not shared')"))
    out += robustness_findings(acc_diff)
    out += gap_study_findings(studies, gaps)
    out += gap_difference_findings(gap_diff)
    return out


def robustness_findings(acc_diff: pd.DataFrame) -> list[Finding]:
    """Per technique and study pair: the levels where one study's model loses significantly more."""
    out = []
    for (study, against, technique), rows in acc_diff.groupby(["study", "against", "technique"], sort=False):
        sig = rows[rows.significant]
        if sig.empty:
            top = rows.loc[rows.difference.abs().idxmax()]
            out.append(Finding("technique", f"{technique}: no evidence that {study} and {against} differ in robustness "
                                            f"(largest difference {_pp(top.difference)} at {top.variant}; "
                                            f"{_ci(top.ci_low, top.ci_high)})"))
            continue
        for r in sig.itertuples():
            weaker, stronger = (study, against) if r.difference < 0 else (against, study)
            out.append(Finding("technique", f"{technique}: at {r.variant}, {weaker}'s model loses {abs(100 * r.difference):.1f} pp "
                                            f"more accuracy than {stronger}'s ({_ci(r.ci_low, r.ci_high)}, difference "
                                            f"{study} − {against}; Holm p {r.p_holm:.3g}): {stronger} is more robust there"))
    return out


def gap_study_findings(studies: list[Study], gaps: pd.DataFrame) -> list[Finding]:
    """Per study and attribute: where compression widens or narrows the gap (its own corrected test)."""
    out = []
    singles = gaps[~gaps.attribute.str.contains(INTERSECTION, regex=False)] if not gaps.empty else gaps
    for s in studies:
        for attr, rows in singles[singles.study == s.name].groupby("attribute", sort=False):
            sig = rows[rows.significant.astype(bool)]
            if sig.empty:
                top = rows.loc[rows.gap_change.abs().idxmax()]
                out.append(Finding("gap", f"{s.name}: no evidence that compression changes the {attr} gap (largest change "
                                          f"{_pp(top.gap_change)} at {top.variant}; {_ci(top.ci_low, top.ci_high)})"))
            for r in sig.itertuples():
                verb = "widens" if r.gap_change > 0 else "narrows"
                out.append(Finding("gap", f"{s.name}: {r.variant} {verb} the {attr} gap by {abs(100 * r.gap_change):.1f} pp "
                                          f"({_ci(r.ci_low, r.ci_high)}; Holm p {r.p_holm:.3g} within the study)"))
    return out


def gap_difference_findings(gap_diff: pd.DataFrame) -> list[Finding]:
    if gap_diff.empty:
        return []
    sig = gap_diff[gap_diff.significant & ~gap_diff.attribute.str.contains(INTERSECTION, regex=False)]
    return [Finding("gap", f"{r.attribute} gap at {r.variant}: its change is {_pp(r.difference)} larger on {r.study} than on "
                           f"{r.against} ({_ci(r.ci_low, r.ci_high)}; Holm p {r.p_holm:.3g})") for r in sig.itertuples()]


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _ci(lo: float, hi: float) -> str:
    return f"95 % interval {100 * lo:+.1f} to {100 * hi:+.1f}"


# ----------------------------------------------------------------------------- the whole comparison
@dataclass
class Comparison:
    studies: list[Study]
    tables: dict[str, pd.DataFrame]
    findings: list[Finding]


def compare(paths: list[Path], n_boot: int = 1000, seed: int = 0, say: Progress = lambda m: None) -> Comparison:
    if len(paths) < 2:
        raise CompareError("compare needs at least two study directories")
    studies = []
    for p in paths:
        say(f"analysing {p}")
        studies.append(load_study(Path(p), n_boot, seed))
    unique_names(studies)
    keys, attributes = shared_keys(studies), shared_attributes(studies)
    if not keys:
        raise CompareError("the studies share no compressed variant (no recipe finished in all of them): nothing to compare")
    say("accuracy changes and their differences")
    parts = [accuracy_changes(s, keys, n_boot, seed + i) for i, s in enumerate(studies)]
    changes = pd.concat([p[0] for p in parts], ignore_index=True)
    acc_diff = accuracy_differences(studies, {s.name: p[1] for s, p in zip(studies, parts)}, changes)
    gaps = gap_changes(studies, keys, attributes)
    gap_diff = gap_differences(studies, gaps)
    mismatch = mismatch_table(studies)
    tables = {"studies": _study_table(studies), "accuracy_change": changes.drop(columns=["key"]),
              "accuracy_difference": acc_diff.drop(columns=["key"]), "gap_change": gaps.drop(columns=["key"]),
              "gap_difference": gap_diff.drop(columns=["key"], errors="ignore"), "weight_spread": spread_by_study(studies, changes),
              "not_shared": mismatch}
    return Comparison(studies, tables, compare_findings(studies, acc_diff, gaps, gap_diff, mismatch))


def _study_table(studies: list[Study]) -> pd.DataFrame:
    rows = []
    for s in studies:
        ref = s.res.population(s.res.reference) == s.res.y_true
        rows.append({"study": s.name, "folder": str(s.path), "dataset": s.dataset, "test images": len(s.res.y_true),
                     "baseline models": len(ref), "baseline accuracy": float(ref.mean(1).mean()),
                     "variants": sum(not v.is_reference for v in s.res.variants), "attributes": ", ".join(s.res.attributes)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the page
CAPTIONS = {
    "compare-accuracy-": "Each study's accuracy change against its own baseline, per level, with its 95 % interval: the "
                         "lower line is the less robust model.",
    "compare-gaps": "Each shared variant's gap change in each study with its interval; red: significant within its study. "
                    "Right of zero: compression widens the gap there.",
}
NOTES = {
    "studies": "The studies compared; the first is the one each other study is compared with.",
    "accuracy_difference": "Accuracy change (pp) of each other study minus the first's, per shared variant: interval from "
                           "the two studies' independent bootstraps (subjects and models resampled), p from its standard "
                           "error, Holm-corrected across this comparison; significant when p_holm < 0.05.",
    "gap_difference": "Gap change (pp) of each other study minus the first's: normal interval from the two bootstrap "
                      "standard errors, Holm-corrected across this comparison.",
    "gap_change": "Each study's own gap change (pp) and test (Holm within the study, as in its report).",
    "accuracy_change": "Each study's accuracy change (pp) against its own baseline, with a paired subject bootstrap interval.",
    "weight_spread": "The paper's explanation per study (layers weighted by size, mean over baseline models): a narrow, "
                     "peaked distribution is cut near zero and should lose less; beside it, what 60 % pruning cost.",
    "not_shared": "What some study lacks: left out of every comparison above.",
}
TITLES = {"studies": "The studies", "accuracy_difference": "Robustness: difference of accuracy changes",
          "gap_difference": "Difference of gap changes between studies", "gap_change": "Gap changes per study",
          "accuracy_change": "Accuracy change per study", "weight_spread": "Weight spread per study",
          "not_shared": "Not shared"}
PP_COLUMNS = ("accuracy change", "difference", "gap_change", "ci_low", "ci_high", "se")


def write_comparison(paths: list[Path], out: Path, n_boot: int = 1000, seed: int = 0, say: Progress = lambda m: None) -> Path:
    """Compare the studies and write compare.html, tables/compare-*.{csv,md,tex} and figures/ into ``out``."""
    from ..atomic import write_text_atomic
    from . import build as B
    from . import figures
    from .findings import as_html

    comp = compare(paths, n_boot, seed, say)
    for name, df in comp.tables.items():
        B.write_table(df, out / "tables", f"compare-{name}")
    say("figures")
    figs = figures.study_accuracy_curves(comp.tables["accuracy_change"], out / "figures")
    forest = figures.study_gap_forest(comp.tables["gap_change"], out / "figures")
    figs = ([forest] if forest is not None else []) + figs
    caption = {f.stem: next((t for k, t in CAPTIONS.items() if f.stem.startswith(k)), f.stem) for f in figs}
    opening = B._opening(as_html(comp.findings), [])
    imgs = "".join(B._figure(f, text=caption[f.stem]) for f in figs)
    sections = [opening, f'<section id="figures"><h2>Figures</h2>{imgs}</section>']
    for name in ("accuracy_difference", "gap_difference", "accuracy_change", "gap_change", "weight_spread", "not_shared", "studies"):
        df = comp.tables[name].copy()
        if df.empty:
            continue
        for col in PP_COLUMNS:
            if col in df and name != "weight_spread":
                df[col] = (100 * df[col]).round(1)
        sections.append(B._section(TITLES[name], NOTES[name], df.round(4)))
    header = {"study": " vs ".join(s.name for s in comp.studies)} | {s.name: f"{s.dataset}, {s.path}" for s in comp.studies}
    return write_text_atomic(out / "compare.html", B._html(header, [], sections).replace("faircompress report:", "faircompress comparison:"))
