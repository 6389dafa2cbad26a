"""What a study found, in sentences written from its tables (templates, never hand-written): per
attribute, the gap changes that survive the study-wide correction, the largest that does not and
the smallest the study could have detected; per technique, the size and accuracy it buys; and the
warnings a reader must see first."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .results import INTERSECTION, StudyResults
from .tables import LEAK_NOTE, scalar_means

NOT_EVIDENCE = ("A change that is not significant and smaller than what the study could detect is not evidence of no "
                "change.")
TOLERANCE_PP = 1.0  # "buys" = the smallest file within this accuracy of the baseline's


@dataclass(frozen=True)
class Finding:
    kind: str   # 'gap', 'technique' or 'warning'
    text: str


def findings(res: StudyResults, gaps: pd.DataFrame, power: pd.DataFrame, stats: pd.DataFrame, groups: pd.DataFrame,
             missing: list[str]) -> list[Finding]:
    """Every finding, warnings first."""
    out = warnings(res, groups, missing)
    for attr in res.attributes:
        out += gap_findings(attr, gaps, power)
    out += intersection_findings(gaps)
    out += technique_findings(res, stats)
    return out


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _interval(lo: float, hi: float) -> str:
    return f"95 % interval {100 * lo:+.1f} to {100 * hi:+.1f}"


def gap_findings(attr: str, gaps: pd.DataFrame, power: pd.DataFrame) -> list[Finding]:
    tested = gaps[(gaps.attribute == attr) & gaps.p.notna()]
    if tested.empty:
        return [Finding("gap", f"{attr}: no gap change could be tested (fewer than two groups large enough to judge)")]
    out = []
    for r in tested[tested.significant].sort_values("gap_change", key=abs, ascending=False).itertuples():
        verb = "widens" if r.gap_change > 0 else "narrows"
        out.append(Finding("gap", f"{attr}: {r.variant} {verb} the gap by {abs(100 * r.gap_change):.1f} pp "
                                  f"({_interval(r.ci_low, r.ci_high)}; Holm-adjusted p {r.p_holm:.3g}), significant after correction"))
    rest = tested[~tested.significant]
    row = power[power.attribute == attr]
    detectable = (f"; it could detect about {100 * float(row.detectable_after_correction.iloc[0]):.1f} pp "
                  "(80 % power after the correction)") if not row.empty else ""
    if not rest.empty:
        top = rest.loc[rest.gap_change.abs().idxmax()]
        lead = ("no variant changes the gap significantly after correction" if len(out) == 0
                else f"{len(rest)} other change(s) are not significant")
        out.append(Finding("gap", f"{attr}: {lead} ({len(tested)} tested); the largest non-significant change is "
                                  f"{_pp(top.gap_change)} ({top.variant}; {_interval(top.ci_low, top.ci_high)}){detectable}"))
    elif detectable:
        out.append(Finding("gap", f"{attr}: the study{detectable.removeprefix('; it')}"))
    return out


def intersection_findings(gaps: pd.DataFrame) -> list[Finding]:
    inter = gaps[gaps.attribute.str.contains(INTERSECTION, regex=False) & gaps.p.notna()]
    if inter.empty:
        return []
    sig = inter[inter.significant]
    names = ", ".join(f"{r.attribute}: {r.variant} {_pp(r.gap_change)}" for r in sig.itertuples())
    return [Finding("gap", f"intersections: {len(sig)} of {len(inter)} gap changes significant after correction"
                           + (f" ({names})" if names else ""))]


def technique_findings(res: StudyResults, stats: pd.DataFrame) -> list[Finding]:
    """Per technique: the smallest file within TOLERANCE_PP of the baseline's accuracy, and what its
    strongest variant costs."""
    table = _variant_means(res, stats)
    if table.empty or not table.is_reference.any():
        return []
    ref = table[table.is_reference].iloc[0]
    out = []
    for technique, rows in table[~table.is_reference].groupby("technique", sort=False):
        rows = rows.assign(drop=100 * (rows.accuracy - ref.accuracy))
        ok = rows[rows["drop"] >= -TOLERANCE_PP]
        strongest = rows.loc[rows.size_mb.idxmin()]
        text = f"{technique}: "
        if ok.empty:
            text += f"every variant loses more than {TOLERANCE_PP:.0f} pp of accuracy; "
        else:
            best = ok.loc[ok.size_mb.idxmin()]
            text += (f"{best.variant} gives a {best.size_mb:.2f} MB file ({ref.size_mb / best.size_mb:.1f}× smaller than the "
                     f"baseline's {ref.size_mb:.2f} MB) for {best['drop']:+.1f} pp accuracy; ")
        text += f"its smallest, {strongest.variant} ({strongest.size_mb:.2f} MB), changes accuracy by {strongest['drop']:+.1f} pp"
        out.append(Finding("technique", text))
    return out


def _variant_means(res: StudyResults, stats: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: label, technique, reference flag, mean size (MB) and mean accuracy."""
    means = scalar_means(stats)
    if means.empty or not {"size_mb", "accuracy"} <= set(means.columns):
        return pd.DataFrame()
    by_key = {v.key: v for v in res.variants}
    return pd.DataFrame({"variant": [by_key[k].label for k in means.index], "size_mb": means.size_mb.to_numpy(),
                         "accuracy": means.accuracy.to_numpy(), "technique": [by_key[k].technique for k in means.index],
                         "is_reference": [bool(by_key[k].is_reference) for k in means.index]})


def warnings(res: StudyResults, groups: pd.DataFrame, missing: list[str]) -> list[Finding]:
    out = []
    baselines = res.baselines()
    if (baselines.selection == "test").any() or (baselines.selection == LEAK_NOTE).any():
        out.append(Finding("warning", "checkpoints were selected on the test set (the authors' protocol): every accuracy is "
                                      "optimistic, because selection leaks test data"))
    small = groups[groups.too_few.astype(bool) & ~groups.attribute.str.contains(INTERSECTION, regex=False)]
    small = small.drop_duplicates(["attribute", "group"])
    if not small.empty:
        names = ", ".join(f"{r.attribute} {r.group} (n={int(r.n)})" for r in small.itertuples())
        out.append(Finding("warning", f"groups too small to judge, left out of every gap: {names}"))
    failed = [m for m in missing if m.startswith("failed:")]
    if failed:
        out.append(Finding("warning", f"{len(failed)} run(s) failed and are missing from every table: "
                                      + "; ".join(m.removeprefix("failed: ") for m in failed[:3]) + (" …" if len(failed) > 3 else "")))
    out += [Finding("warning", m) for m in missing if not m.startswith("failed:")]
    return out


def as_html(items: list[Finding]) -> str:
    """The findings as the report's first section."""
    import html

    if not items:
        return ""
    css = {"warning": "warn", "gap": "gap", "technique": "tech"}
    lis = "".join(f'<li class="{css[f.kind]}">{html.escape(f.text)}</li>' for f in items)
    note = (f"<p class='note'>{html.escape(NOT_EVIDENCE)}</p>" if any(f.kind == "gap" for f in items) else "")
    return f'<section id="findings"><h2>Findings</h2><ul class="findings">{lis}</ul>{note}</section>'


__all__ = ["Finding", "findings", "as_html"]
