"""`faircompress report STUDY_DIR`: the analysis, the figures, one self-contained report.html and
tables/ in Markdown, CSV and LaTeX."""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from ..compress.recipes import REFERENCE_LABEL
from ..plan import stale_protocol
from ..store import ResultStore, StoreError
from . import analysis as A
from . import figures
from . import tables as T
from .data_summary import DATA_SECTIONS, NOT_RECORDED, data_tables, shares_in_percent
from .faces import face_grid
from .lottery import distinct_curves, lottery_tables, ticket_curves, ticket_sparsity_curves
from .mitigation import mitigation_figure, mitigation_table
from .findings import as_html, findings
from . import paper as P
from . import sensitivity as S
from . import weights as W
from .results import NothingToAnalyse, StudyResults, Variant, dataset_name, load_results
from .tables import markdown_table
from .training import fine_tuning_curves, training_curves, training_table

Progress = Callable[[str], None]


@dataclass
class Report:
    html: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said under the figures, e.g. why there is no face grid


def write_report(study_dir: str | Path, n_boot: int = 1000, seed: int = 0, progress: Progress | None = None,
                 layers: tuple[str, ...] = (), faces: bool = True) -> Report:
    """Analyse a study and write ``report.html``, ``tables/`` and ``figures/`` into its directory.
    A study with nothing to analyse still gets a report that says what is missing. ``layers``: weights
    to plot before and after pruning besides the paper's two (`weights.UnknownLayer` if one is not there);
    ``faces=False`` leaves the grid of face images out (for a report that will be shared)."""
    study_dir = Path(study_dir)
    say = progress or (lambda msg: None)
    store = ResultStore.open_existing(study_dir)  # StoreError if this is not a study
    try:
        return _write(store, study_dir, n_boot, seed, say, list(layers), faces)
    finally:
        store.close()


def _write(store: ResultStore, study_dir: Path, n_boot: int, seed: int, say: Progress, layers: list[str], faces: bool) -> Report:
    out_tables, out_figs = study_dir / "tables", study_dir / "figures"
    report = Report(html=study_dir / "report.html")
    runs = store.runs()
    report.missing += [f"failed: {r.label}: {str(r.error).splitlines()[-1] if r.error else '?'}" for r in runs[runs.status == "failed"].itertuples()]
    stale = stale_protocol(store.protocol())
    if stale:
        report.missing.append(f"stale results: these runs were {stale}")
    res = _loaded(store, report.missing)
    sections: list[str] = []
    if res is not None:
        report.tables = _tables(res, n_boot, seed, say, dataset_name(runs)) | _weight_tables(res, study_dir)
        scan = S.scans(store)  # the layer-wise sensitivity scan, when `faircompress sensitivity` made one
        report.tables |= {f"sensitivity{_split_suffix(split)}": S.pivot(rows) for split, rows in scan.items()}
        for name, df in report.tables.items():
            write_table(df, out_tables, f"report-{name}")
        say("figures")
        report.figures = _figures(res, report.tables, out_figs, study_dir, faces, report.notes, layers)
        report.figures += S.write_outputs(store, study_dir)[1]
        found = findings(res, report.tables["gaps"], report.tables["power"], T.variant_stats(res), report.tables["groups"],
                         report.missing)
        sections = [_opening(as_html(found), report.figures[:1]), _figure_section(report.figures[1:], report.notes),
                    *_sections(res, report.tables), *_sensitivity_sections(store, report.tables)]
    write_text_atomic(report.html, _html(_header(runs, res), report.missing, sections))
    return report


def _split_suffix(split: str) -> str:
    return "" if split == "val" else f"-{split}"


def _sensitivity_sections(store: ResultStore, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The layer-wise sensitivity scan per split, as `report/sensitivity.py` lays it out."""
    meta = store.sensitivity_scans()
    out = []
    for split in S.scans(store):
        newest = meta[meta.split == split].sort_values("created_at").iloc[-1]
        note = S.NOTE.format(split="validation" if split == "val" else split, images=int(newest.images))
        out.append(_section("Layer-wise sensitivity" + ("" if split == "val" else f" ({split} split)"), note,
                            tables[f"sensitivity{_split_suffix(split)}"]))
    return out


def _loaded(store: ResultStore, missing: list[str]) -> StudyResults | None:
    """The study's results, or None with the reason added to ``missing``."""
    try:
        res = load_results(store)
    except NothingToAnalyse as e:
        missing.append(str(e))
        return None
    if res.reference is None:
        missing.append(f"no finished '{REFERENCE_LABEL}' variant: every comparison needs the baseline's exported file")
        return None
    return res


def _tables(res: StudyResults, n_boot: int, seed: int, say: Progress, dataset: str = "") -> dict[str, pd.DataFrame]:
    say("group accuracies and intervals")
    groups = A.group_table(res, n_boot, seed)
    say(f"paired bootstrap of gap changes ({n_boot} resamples)")
    gaps = A.gap_table(res, n_boot, seed)
    say("paired tests, CEV/SDE, exemplars")
    recall = pd.concat([A.class_group_recall(res, v).assign(variant=v.label) for v in res.variants])
    stats = T.variant_stats(res)
    tables = {"paper": paper_with_intervals(res, groups, n_boot, seed), "gaps": gaps, "power": A.power_table(res, gaps),
              "mcnemar": A.mcnemar_table(res, seed), "error_change": A.error_change_table(res), "exemplars": A.exemplar_table(res),
              "groups": groups, "class_group_recall": recall, "class_rates": A.class_rate_table(res), "variants": T.variant_table(stats),
              "deployment": T.deployment_table(stats),
              "baselines": T.baseline_table(res).drop(columns=["run_id"])} | _paper_tables(res, dataset)
    mitigation = mitigation_table(res, n_boot, seed)
    return (tables | data_tables(res) | {"training": training_table(res)} | lottery_tables(res)
            | ({"mitigation": mitigation} if not mitigation.empty else {}))


def _paper_tables(res: StudyResults, dataset: str) -> dict[str, pd.DataFrame]:
    """Our numbers beside the paper's table, for a study on one of the paper's datasets."""
    if P.paper_table(dataset) is None:
        return {}
    return {"paper_comparison": P.comparison(res, dataset).assign(table=P.TABLE_NAMES[dataset])}


def paper_with_intervals(res: StudyResults, groups: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The paper's table: size, accuracy and each group's accuracy as 'mean ± std [95 % interval]'
    (the groups' intervals are `group_table`'s; overall accuracy's the same method's)."""
    size = res.run_table().groupby("key", sort=False).size_mb.agg(["mean", "std"])
    rows = []
    for variant in res.variants:
        pop = res.population(variant)
        acc = (pop == res.y_true).mean(1)
        lo, hi = A.overall_interval(res, variant, n_boot, seed)
        row = {"variant": variant.label, "models": len(pop),
               "size (MB)": f"{size.loc[variant.key, 'mean']:.2f} ± {np.nan_to_num(size.loc[variant.key, 'std']):.2f}",
               "accuracy": _cell(acc.mean(), acc.std(ddof=1) if len(acc) > 1 else 0.0, lo, hi, False)}
        for r in groups[(groups.variant == variant.label) & groups.attribute.isin(res.attributes)].itertuples():
            row[f"{r.attribute}: {r.group}"] = _cell(r.accuracy, r.std, r.ci_low, r.ci_high, r.too_few, r.n)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(mean, std, lo, hi, too_few: bool, n: int | None = None) -> str:
    if too_few:
        return f"too few (n={n})"
    return f"{100 * mean:.1f} ± {100 * std:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _weight_tables(res: StudyResults, study_dir: Path) -> dict[str, pd.DataFrame]:
    """The weights of the baseline files against the paper's explanation, and every file's kernels."""
    spread = W.spread_table(res, study_dir)
    accuracy = T.scalar_means(T.variant_stats(res)).get("accuracy", pd.Series(dtype=float))
    return {"weight_spread": W.spread_summary(spread), "pruning_cut": W.cut_table(res, spread, accuracy),
            "kernels": W.kernel_table(res)}


def _figures(res: StudyResults, tables: dict[str, pd.DataFrame], out: Path, study_dir: Path, faces: bool,
             notes: list[str], layers: list[str] = ()) -> list[Path]:
    """The figures, the forest plot first; why one is missing goes to ``notes``."""
    groups, gaps = tables["groups"], tables["gaps"]
    paths = [figures.forest(res, gaps, out)] if gaps.p.notna().any() else []
    paths += figures.level_curves(res, groups, out)
    if not gaps.empty:
        paths.append(figures.gap_vs_size(res, gaps, out))
    change_map = figures.accuracy_change_map(res, groups, out)
    paths += [change_map] if change_map is not None else []
    sizes = figures.sizes(res, out)
    paths += [sizes] if sizes is not None else []
    variant, pairs = W.weight_pairs(res, study_dir, list(layers))
    paths += [figures.weight_histograms(before, after, name, variant.label, out, variant.level) for name, (before, after) in pairs.items()]
    if res.attributes:
        ref, chosen = A.reference(res), _most_changed(res, gaps)
        paths.append(figures.confusion_by_group(res, [ref, chosen] if chosen is not ref else [ref], res.attributes[0], out))
    grid, why = face_grid(res, out, faces)
    curves = [grid, training_curves(tables["training"], out), fine_tuning_curves(tables["training"], out), ticket_curves(res, out),
              ticket_sparsity_curves(res, out), distinct_curves(res, out),
              mitigation_figure(tables["mitigation"], out) if "mitigation" in tables else None]
    notes.extend([why] if why else [])
    return paths + [p for p in curves if p is not None]


def _most_changed(res: StudyResults, gaps: pd.DataFrame) -> Variant:
    """The variant whose first-attribute gap changed most (significant changes first)."""
    ref = A.reference(res)
    g = gaps[(gaps.attribute == res.attributes[0]) & (gaps.variant != ref.label)] if not gaps.empty else gaps
    if g.empty:
        return ref
    g = g.assign(key=g.gap_change.abs() + g.significant.astype(float))
    label = str(g.sort_values("key").variant.iloc[-1])
    return next(v for v in res.variants if v.label == label)


# ----------------------------------------------------------------------------- files
def write_table(df: pd.DataFrame, out: Path, name: str) -> None:
    write_text_atomic(out / f"{name}.csv", df.to_csv(index=False))
    write_text_atomic(out / f"{name}.md", markdown_table(df, name) if not df.empty else f"### {name}\n\n(empty)\n")
    write_text_atomic(out / f"{name}.tex", to_booktabs(df))


def to_booktabs(df: pd.DataFrame, digits: int = 3) -> str:
    """A LaTeX booktabs tabular (needs \\usepackage{booktabs})."""
    def esc(x) -> str:
        if isinstance(x, float):
            x = "--" if np.isnan(x) else f"{x:.{digits}g}"
        s = str(x)
        for a, b in [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("±", r"$\pm$"), ("×", r"$\times$")]:
            s = s.replace(a, b)
        return s

    lines = [r"\begin{tabular}{" + "l" * len(df.columns) + "}", r"\toprule", " & ".join(esc(c) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML
_SELECTION = {"test": "test set (LEAKS TEST DATA: checkpoints chosen on the data they are scored on)",
              "given": "none for the baselines: given (your weights or ONNX file), not trained"}


def _model_line(cfg: dict) -> str:
    """The model as the config named it; your own files with the start of their SHA-256."""
    model, given = cfg.get("model", {}), cfg.get("baseline", {})
    if given.get("onnx"):
        return f"your ONNX file {given['onnx']} (SHA-256 {str(given.get('onnx_sha256'))[:12]})"
    name = model.get("name") or f"{model.get('function')}() in {model.get('file')}"
    line = name + (f" (file SHA-256 {model['sha256'][:12]})" if model.get("sha256") else "")
    line += f" {json.dumps(model['params'])}" if model.get("params") else ""
    return line + (f"; baselines from your weights {given['weights']}" if given.get("weights") else "")


def _split_note(ds: dict) -> str | None:
    """How the dataset's parameters drew the test split, where a reader must know (e.g. not subject-disjoint)."""
    from ..data.registry import split_note

    try:
        return split_note(str(ds.get("name")), ds.get("params", {}))
    except (KeyError, ValueError, ImportError) as e:  # a loader gone or changed since the runs: said, not hidden
        return f"unknown: the {ds.get('name')} loader cannot read the study's dataset parameters here ({type(e).__name__})"


def _header(runs: pd.DataFrame, res: StudyResults | None) -> dict[str, str]:
    info: dict[str, str] = {}
    if runs.empty:
        return {"study": "no runs recorded"}
    info["study"] = str(runs.study.iloc[0])
    cfg = json.loads(runs.config_json.iloc[0])
    ds = cfg.get("dataset", {})
    info["dataset"] = f"{ds.get('name')} {json.dumps(ds.get('params', {}))[:300]}"
    note = _split_note(ds)
    if note:
        info["test split"] = note
    if ds.get("augment"):
        aug = ds["augment"]
        info["augmentation"] = (f"offline: {aug.get('copies')} augmented copies of every training image (horizontal flip, "
                                f"shift-scale-rotate, blur, brightness-contrast; seed {aug.get('seed')}), counted in the "
                                "train columns of the data tables; val and test not augmented")
    info["model"] = _model_line(cfg)
    selection = set(runs.selection.dropna())
    info["selection"] = "; ".join(_SELECTION.get(s, "subject-disjoint validation split") for s in sorted(selection)) or "?"
    if res is not None:
        info["test set"] = f"{len(res.y_true)} images, {len(np.unique(res.subjects))} subjects"
        runs_ = res.run_table()
        base = runs_[runs_.key == A.reference(res).key]
        info["baseline seeds"] = ", ".join(map(str, sorted(base.seed.unique())))
        info["repeats"] = str(int(runs_["repeat"].max()) + 1)
        info["models per population"] = f"baseline {len(base)}; each variant up to {max(len(v.run_ids) for v in res.variants)}"
    versions = runs.versions_json.dropna()
    if len(versions):
        info["packages"] = ", ".join(f"{k} {v}" for k, v in json.loads(versions.iloc[-1]).items())
    info["git commit"] = str(runs.git_commit.dropna().iloc[-1]) if runs.git_commit.notna().any() else "unknown"
    return info


def _sections(res: StudyResults, tables: dict[str, pd.DataFrame]) -> list[str]:
    gaps, mcn, cie, errs = tables["gaps"], tables["mcnemar"], tables["exemplars"], tables["error_change"]
    method = A.interval_method(res)
    out = [_section("Accuracy per group", f"mean ± std over each population's models, [95 % interval of the population mean: "
                    f"{method}]; groups with fewer than 5 test images are marked as too few.", tables["paper"])]
    if "paper_comparison" in tables:
        out.append(_paper_section(res, tables["paper_comparison"]))
    if "deployment" in tables and not tables["deployment"].empty:
        out.append(_section("What each file costs to ship", "Means over each variant's files: zipped and raw size, non-zero "
                            "weights, ONNX Runtime latency at batch 1 and throughput at the throughput batch, and the peak "
                            "resident memory of loading the file and running it, measured in a fresh process over one with "
                            "ONNX Runtime imported (— where not measured).", tables["deployment"]))
    g = gaps.copy()
    for col in ("gap", "gap_std", "gap_change", "ci_low", "ci_high", "se", "detectable"):
        if col in g:
            g[col] = (100 * g[col]).round(1)
    out.append(_section("Gaps and their change", "gap = max − min group accuracy (pp), over groups of at least 5 test images; "
                        "change of the population-mean gap vs the baseline with a paired bootstrap 95 % interval "
                        f"({gaps.resampled.iloc[0] if len(gaps) else 'subjects'} resampled); p from the bootstrap standard error, "
                        "Holm-adjusted across every gap change of the study (p_holm); significant when p_holm < 0.05.", g.round(4)))
    power = tables["power"].copy()
    if not power.empty:
        for col in ("median_se", "detectable", "detectable_after_correction", "largest_change"):
            power[col] = (100 * power[col]).round(1)
        out.append(_section("Power: the smallest gap change this study could detect", "pp, with 80 % power at two-sided α 0.05 "
                            "from the gap changes' bootstrap standard errors (test subjects and the spread between repeats); "
                            "'after correction' over every gap change of the study. A change smaller than this that is "
                            "not significant is not evidence of no change.", power))
    if not mcn.empty:
        sig = mcn[mcn.significant.fillna(False)]
        out.append(_section("Paired tests per group (Holm-corrected across the study)", f"{mcn.test.iloc[0]} of the baseline's "
                            f"against the variant's modal correctness; {len(sig)} of {mcn.p.notna().sum()} group-level tests "
                            "significant at 0.05 after Holm.", mcn.round(4)))
    if not cie.empty:
        out.append(_section("Compression-identified exemplars", "images whose modal prediction over a variant's models differs "
                            "from the baseline population's (Hooker et al. 2020); each group's share among them vs its test share.",
                            cie.round(3)))
    if not errs.empty:
        out.append(_section("CEV and SDE against the baseline", "Blakeney et al. (2021); classes with a zero baseline rate are left out.",
                            errs.round(4)))
    return out + _mitigation_sections(tables) + _lottery_sections(tables) + _weight_sections(tables) + _data_sections(res, tables)


def _mitigation_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Each mitigated variant beside its unmitigated twin, where the study ran both."""
    if "mitigation" not in tables:
        return []
    m = tables["mitigation"].copy()
    for col in ("accuracy", "accuracy_twin", "accuracy_change", "accuracy_ci_low", "accuracy_ci_high", "gap", "gap_twin", "gap_change",
                "ci_low", "ci_high"):
        m[col] = (100 * m[col]).round(1)
    helped = m[m.significant & (m.gap_change < 0)]
    return [_section("Mitigation: each mitigated variant beside its twin", "The same recipe fine-tuned with an objective "
                     "(distillation, group constraints: the step's fine_tune option) and without it, on the same test images: "
                     "accuracy and each gap (pp), and their change, mitigated minus twin, with a paired bootstrap 95 % interval "
                     "(subjects, or images, and both populations' models resampled); p from the bootstrap standard error, "
                     "Holm-adjusted across this table's gap changes. A negative, significant gap change is a gap the "
                     f"mitigation narrowed: {len(helped)} of {len(m)} here. The figure 'mitigation' draws them.", m.round(4))]


def _lottery_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Dixit et al.'s SFEW comparisons, where the study ran them: tickets and distinctiveness."""
    out = []
    if "tickets" in tables:
        out.append(_section("Lottery tickets", "Each ticket pruned by percentile on the trained weights, its survivors reset to "
                            "the weights training started from and retrained with the mask fixed (Dixit et al. 3.4; the "
                            "random-mask control keeps each kernel's count; the random-init control keeps the mask and draws "
                            "new weights). Test accuracy of the pruned, reset network before retraining (start), the best "
                            "over the retraining epochs (mean and std over runs) and its epoch, the epoch selected on the "
                            "selection split, and how many runs reached the unpruned model's test accuracy (first epoch: "
                            "median over those that did). The figure 'tickets' plots it per epoch. Iterative tickets (Frankle & "
                            "Carbin): round k prunes the round-k-1 ticket again ('rounds'; 'pruned_share' is the overall "
                            "sparsity) and resets to the initial weights or, with 'rewind_epoch', the baseline's after "
                            "that epoch; 'ticket-sparsity' plots them against the weights remaining.", tables["tickets"].round(4)))
    if "distinct_match" in tables:
        out.append(_section("Distinctiveness beside percentile pruning", "Dixit et al.'s matching (their Fig. 1): distinctiveness "
                            "removes units (filters) up to the largest share a layer lost; percentile pruning of weights at "
                            "that share, in every layer, retrained as long, is its control. Match 'exact': the distinct step's "
                            "own control (control: percentile, the same analysis and retraining); 'nearest': no control was run, "
                            "so the study's percentile variant nearest the share stands in (compare the levels). Accuracy: test "
                            "accuracy of the variants' files, mean and std over runs; best test accuracy over the retraining "
                            "epochs, and how many runs reached the unpruned model's. The figure 'distinct_match' plots it per "
                            "epoch.", tables["distinct_match"].round(4)))
    return out


def _weight_sections(tables: dict[str, pd.DataFrame]) -> list[str]:
    out = []
    spread, cut, kernels = (tables.get(k, pd.DataFrame()) for k in ("weight_spread", "pruning_cut", "kernels"))
    if not spread.empty:
        out.append(_section("Weight spread of the baseline files", f"The paper's explanation of fragility (Discussion, Figs. "
                            f"15-16) as numbers, per layer, mean over the baseline models: the std of the weights, excess "
                            f"kurtosis (peakedness), the share within ±{W.BAND:g} sd of zero, where 60 % magnitude pruning cuts "
                            "(in sds) and the share of the squared weight it removes. A narrow, peaked layer loses little "
                            "when cut; a wide one loses weights far from zero.", spread.round(4)))
    if not cut.empty:
        out.append(_section("Where each pruning level cuts, beside what it cost", "Per sparsity: the cut in sds and the "
                            "energy removed, weighted over layers by their size, beside the accuracy the study's pruning at "
                            "that level changed (pp against the baseline, after fine-tuning; — where the study did not prune "
                            "at that level). If the paper's argument holds, the accuracy falls where the cut and the energy "
                            "removed climb.", cut.round(4)))
    if not kernels.empty:
        out.append(_section("Layers of each file", "What each run recorded of its file, per kernel (mean over the variant's "
                            "runs): elements, the share of zeros, the number of distinct values (clustering leaves as many "
                            "as clusters) and the storage type.", kernels.round(4)))
    return out


def _data_sections(res: StudyResults, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The data: class and group counts per split and each group's class shares (test split only,
    and said so, where the store has no train and val counts)."""
    shown = {**tables, "data_class_shares": shares_in_percent(tables["data_class_shares"], res.class_names)}
    unrecorded = [f" {NOT_RECORDED}", " Test split only."] if res.other_splits is None else ["", ""]
    return [_section(s.title, s.note + unrecorded[min(i, 1)], shown[s.table]) for i, s in enumerate(DATA_SECTIONS)]


def _paper_section(res: StudyResults, long: pd.DataFrame) -> str:
    title = "Beside the paper"
    if long.empty:
        return (f'<section id="{_anchor(title)}"><h2>{title}</h2><p>None of the study\'s variants is one of the paper\'s '
                "(the baseline, int8-weights quantisation, pruning in whole percent, clustering, each alone or followed by "
                "int8-weights).</p></section>")
    table = str(long.table.iloc[0])
    dataset = next(k for k, v in P.TABLE_NAMES.items() if v == table)
    missing = P.unmatched_rows(res, dataset)
    note = (f"Stoychev & Gunes (2022), {table}: each cell is ours (the paper's). Ours: the mean over the variant's "
            f"{int(long.models.max())} models or fewer (tables/report-paper_comparison.csv has the std and the difference); "
            "the paper's: one model per variant. Sizes in MB of 10^6 bytes: our zipped ONNX file beside their zipped Keras or "
            "TFLite file." + (f" Not in this study: {len(missing)} of the paper's {len(P.paper_table(dataset))} rows "
                              f"({', '.join(missing)})." if missing else ""))
    return _section(title, note, P.side_by_side(long))


# How to read each figure, by the start of its file name.
CAPTIONS = {
    "forest-": "Each variant's change of each attribute's gap (pp) with its 95 % interval; red: significant after the "
               "study-wide correction. Right of zero: compression widens the gap.",
    "accuracy-change": "Change of each group's accuracy against the baseline (pp), per variant: a column redder than the "
                       "others is a group that compression costs more.",
    "levels-": "Accuracy of each group (and file size) against the compression level of one technique, mean ± std over "
               "its models: lines that drift apart as the level rises are a gap that compression widens.",
    "gap-vs-size": "Change of each attribute's gap against the file's size: points above zero widen the gap; the further "
                   "left, the smaller the file.",
    "sizes": "Zipped size of every variant by technique, each level before (blue) and after (orange) quantisation "
             "(green: quantisation-aware training); "
             "above each bar its compression ratio against the baseline.",
    "weights-": "One layer's weights in the baseline's file and pruned at 60 % (or the nearest level; log counts): the "
                "dashed lines mark where the cut falls. The paper reads a wide gap in the middle as fragility.",
    "confusion-": "Confusion matrices per group, the baseline beside the variant whose gap changed most: where the "
                  "groups' errors differ.",
    "faces": "A few training images of each class after preprocessing, in the pixels the model is given (one per "
             "subject where there are enough).",
    "training-curves": "The baselines' accuracy and loss per epoch on the training and the selection split, mean ± std over "
                       "seeds; a star marks the epoch each seed kept: a selection curve falling while the training one "
                       "rises is overfitting.",
    "tickets": "Lottery tickets (Dixit et al.'s Figs. 2-3): test accuracy per retraining epoch (0: pruned and reset, "
               "before retraining), mean ± std over runs, the ticket beside its controls; dashed: the unpruned model's "
               "test accuracy. A ticket that wins reaches the line within the epochs, sooner than its random-mask control.",
    "ticket-sparsity": "Iterative lottery tickets (Frankle & Carbin's view): against the weights remaining, the best test "
                       "accuracy over the retraining epochs (mean ± std over runs; dashed: the unpruned model) and the first "
                       "epoch reaching the unpruned accuracy (open markers: never reached, the best epoch instead), the "
                       "ticket beside its controls. A winning ticket stays at the line to lower sparsity than its controls, "
                       "and reaches it sooner.",
    "mitigation": "Mitigation: each mitigated variant's gap change against its unmitigated twin (same recipe without the "
                  "fine-tuning objective), per attribute, with the paired bootstrap 95 % interval (filled: significant after "
                  "Holm across the section; left of the dashed line: a narrower gap), and the accuracy change it cost.",
    "fine-tuning-curves": "Each compressed variant's accuracy and loss per fine-tuning epoch (solid: selection split, dashed: "
                          "training), mean ± std over its models: how much of the baseline's accuracy fine-tuning restores.",
}
CAPTIONS["sensitivity-curves"] = ("Layer-wise sensitivity: each prunable layer of the first baseline pruned alone (no "
                                  "fine-tuning), the change of accuracy and of each attribute's gap (scanned split) against "
                                  "the layer's sparsity, one line per layer: a steep line is a layer to prune less.")
CAPTIONS["sensitivity-heatmap"] = ("Layer-wise sensitivity as a layer x level map (pp against the baseline on the "
                                   "scanned split); the last column is the layer alone rounded to int8 ('float': a kernel "
                                   "int8-weights leaves float). Red: accuracy lost or a gap widened.")
COLLAPSED = {"fine-tuning-curves": "Fine-tuning curves of the compressed variants"}  # figures shown under a summary line


def caption(stem: str) -> str:
    """How to read a figure, in one line."""
    return next((text for prefix, text in CAPTIONS.items() if stem.startswith(prefix)), stem)


def _figure(path: Path, css: str = "", text: str | None = None) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure{f" class={css!r}" if css else ""}><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{html.escape(path.stem)}</b>: {html.escape(text or caption(path.stem))}</figcaption></figure>")


def _opening(findings_html: str, lead: list[Path]) -> str:
    """The first screen: the findings beside the first figure (below it on a narrow screen)."""
    return f'<div class="opening">{findings_html}{"".join(_figure(p, "lead") for p in lead)}</div>'


def _figure_section(figs: list[Path], notes: list[str]) -> str:
    """The figures after the first; those in `COLLAPSED` under a summary line, then the notes."""
    shown = "".join(_figure(p) if p.stem not in COLLAPSED else
                    f'<details class="figures"><summary>{html.escape(COLLAPSED[p.stem])}</summary>{_figure(p)}</details>' for p in figs)
    said = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return f'<section id="figures"><h2>Figures</h2>{shown}{said}</section>'


LONG_TABLE = 20  # rows shown before "show all"


def _section(title: str, note: str, df: pd.DataFrame) -> str:
    """A titled table; a long one shows its significant rows (or its first ones) and the rest under
    "show all"."""
    shown = readable(df)
    table = shown.to_html(index=False, na_rep="—", classes="data", border=0)
    if len(df) > LONG_TABLE:
        key = df["significant"].fillna(False).astype(bool) if "significant" in df else pd.Series(False, index=df.index)
        head = shown[key.to_numpy()] if key.any() else shown.head(LONG_TABLE)
        what = f"{len(head)} significant" if key.any() else f"the first {len(head)}"
        table = (f"<p>{what} of {len(df)} rows:</p>" + head.to_html(index=False, na_rep="—", classes="data", border=0)
                 + f"<details><summary>show all {len(df)} rows</summary>{table}</details>")
    return f'<section id="{_anchor(title)}"><h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>{table}</section>'


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """For reading, not for the CSV: yes/— for flags, p-values to 3 significant digits."""
    out = df.copy()
    for col in out.columns:
        values = out[col].dropna()
        if len(values) and values.map(lambda v: isinstance(v, (bool, np.bool_))).all():
            out[col] = out[col].map(lambda v: "yes" if isinstance(v, (bool, np.bool_)) and v else "—")
        elif col in ("p", "p_holm"):
            out[col] = out[col].map(lambda v: "—" if pd.isna(v) else "< 0.001" if v < 0.001 else f"{v:.3g}")
    return out


def _anchor(title: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")[:40]


def _contents(sections: list[str]) -> str:
    """A table of contents of the sections that follow the findings."""
    import re

    items = re.findall(r'<section id="([^"]+)"><h2>([^<]+)</h2>', "".join(sections))
    links = "".join(f'<li><a href="#{a}">{t}</a></li>' for a, t in items)
    return f'<nav id="contents"><h2>Contents</h2><ol>{links}</ol></nav>' if links else ""


def _html(header: dict[str, str], missing: list[str], sections: list[str]) -> str:
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in header.items())
    miss = ("<section><h2>Missing or failed</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in missing) + "</ul></section>"
            if missing else "")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table.data{border-collapse:collapse;font-size:12px}"
             "table.data td,table.data th{border-bottom:1px solid #ddd;padding:2px 6px;text-align:right}"
             "figure{display:inline-block;margin:8px;max-width:680px;vertical-align:top}img{max-width:100%}th{text-align:left}"
             "ul.findings li{margin:3px 0}li.warn{color:#a40}details{margin:1em 0}table.data th{cursor:pointer}"
             "input.filter{display:block;margin:4px 0;font-size:12px}section{overflow-x:auto}"
             ".opening{display:flex;flex-wrap:wrap;gap:0 24px;align-items:flex-start}.opening>section{flex:1 1 540px;min-width:0}"
             ".opening>figure{flex:1 1 540px;max-width:none;margin:12px 0}ul.findings{font-size:14px;padding-left:1.2em}"
             "p.note{font-size:13px;color:#555}nav#contents ol{columns:2;margin-top:0}"
             "@media print{input.filter{display:none}.opening{display:block}}")
    details = f"<details id='study'><summary>The study: data, protocol, versions</summary><table>{head}</table></details>"
    title = html.escape(header.get("study", ""))
    first, rest = (sections[0], sections[1:]) if sections else ("", [])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>faircompress report: {title}</title><style>{style}</style>"
            f"</head><body><h1>faircompress report: {title}</h1>{first}{miss}{details}{_contents(rest)}" + "".join(rest)
            + _TABLES_JS + _CONTROLS_CHECK + _SELF_CHECK + "</body></html>")


# Sortable and filterable tables (plain inline JavaScript, no network): a click on a header sorts by
# that column (numbers by value, the rest as text; again: the other way); each table gets a filter box.
_TABLES_JS = """<script>
function fcSort(th){var t=th.closest('table'),i=[].indexOf.call(th.parentNode.children,th),b=t.tBodies[0];
var rows=[].slice.call(b.rows),asc=th.getAttribute('data-dir')!=='asc';
rows.sort(function(x,y){var a=x.cells[i].textContent.trim(),c=y.cells[i].textContent.trim(),na=parseFloat(a),nc=parseFloat(c);
var d=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?d:-d;});
rows.forEach(function(r){b.appendChild(r);});th.setAttribute('data-dir',asc?'asc':'desc');}
function fcFilter(t,q){q=q.toLowerCase();[].forEach.call(t.tBodies[0].rows,function(r){
r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});}
document.querySelectorAll('table.data').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th){th.title='sort';th.addEventListener('click',function(){fcSort(th);});});
var f=document.createElement('input');f.className='filter';f.placeholder='filter rows';
f.addEventListener('input',function(){fcFilter(t,f.value);});t.parentNode.insertBefore(f,t);});
</script>"""
# With '#check' in the address, the page exercises its own controls once loaded and records the
# outcome on <body>, so a headless browser (the test) can see that the findings and the first figure
# fit the window, and that sorting, filtering and "show all" work, without a driver.
_CONTROLS_CHECK = """<script>window.addEventListener('load',function(){if(location.hash!=='#check'){return;}
var b=document.body,f=document.getElementById('findings'),l=document.querySelector('figure.lead img');
b.setAttribute('data-first-screen',(f&&l&&f.getBoundingClientRect().top<innerHeight&&l.getBoundingClientRect().bottom<=innerHeight)?'ok':'failed');
var t=document.querySelector('table.data');if(!t){return;}
var th=t.querySelector('thead th'),cells=function(){return [].map.call(t.tBodies[0].rows,function(r){return r.cells[0].textContent.trim();});};
th.click();var up=cells();th.click();var down=cells();
b.setAttribute('data-sort-check',(down.join('|')===up.slice().reverse().join('|'))?'ok':'failed');
fcFilter(t,'\u0000no row has this\u0000');var hidden=[].every.call(t.tBodies[0].rows,function(r){return r.style.display==='none';});
fcFilter(t,'');b.setAttribute('data-filter-check',hidden?'ok':'failed');
var d=document.querySelector('details:not(#study):not(.figures)');if(d){d.open=true;}
b.setAttribute('data-show-all-check',d?(d.open&&d.querySelector('table').offsetHeight>0?'ok':'failed'):'none');});</script>"""


# Marks the page once loaded with how many figures decoded, so a headless browser can check it.
_SELF_CHECK = ("<script>window.addEventListener('load',function(){var i=document.images,ok=0;"
               "for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0){ok++;}}"
               "document.body.setAttribute('data-images-loaded',ok+'/'+i.length);});</script>")


__all__ = ["Report", "write_report", "write_table", "to_booktabs", "StoreError"]
