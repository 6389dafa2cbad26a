"""The `faircompress` command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .atomic import EnvironmentFault
from .config import ConfigError, load_config
from .plan import Hooks
from .store import ResultStore, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="What does model compression do to the fairness of a FER model?")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate, check.")
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)

EXIT_USAGE = 2        # bad input: the config, the data, the store
EXIT_ENVIRONMENT = 1  # the machine: a full disk, a read-only or unwritable folder
NO_FACES_HELP = "leave the grid of face images out of the report (for a report that will be shared)"


def _fail(msg: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _fail_on(e: Exception) -> None:
    _fail(str(e), EXIT_ENVIRONMENT if isinstance(e, EnvironmentFault) else EXIT_USAGE)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="study config (YAML); default: the built-in synthetic study"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (overrides output_dir)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (overrides train.device)"),
    data: Optional[Path] = typer.Option(None, "--data", help="your copy of the dataset (sets dataset.params.root)"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the prepared dataset cache (--no-cache reads the files)"),
    no_faces: bool = typer.Option(False, "--no-faces", help=NO_FACES_HELP),
    no_report: bool = typer.Option(False, "--no-report", help="run and show only; write the report later with "
                                   "`faircompress report STUDY` (e.g. on a machine that runs many studies)"),
    executor: Optional[str] = typer.Option(None, "--executor", help="local or ray (overrides execution.executor)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: the cluster's address (overrides execution.address)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="local: runs at once, each in its own process "
                                          "(overrides execution.workers)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="PyTorch threads per run (overrides execution.threads)"),
) -> None:
    """Run a study; finished runs already in the study directory are skipped, and runs whose file
    is missing or altered are rebuilt. A config with `models:` runs one study per model, in
    output_dir/<label>/, then compares them side by side (output_dir/compare.html)."""
    overrides: dict = {} if cache else {"dataset.cache": False}
    given = {"executor": executor, "address": address, "workers": workers, "threads": threads}
    overrides |= {f"execution.{k}": v for k, v in given.items() if v is not None}
    if out is not None:
        overrides["output_dir"] = str(out)
    if data is not None:
        overrides["dataset.params.root"] = str(data)
    if device is not None:
        overrides["train.device"] = device
    cfg = _load(config, overrides)
    from .train import DeviceError, require_device

    try:
        require_device(cfg.train.device)
    except DeviceError as e:
        _fail(str(e))
    studies = cfg.studies()
    failed = sum(_run_one(study, no_faces, no_report) for study in studies)
    if len(studies) > 1:
        _compare_grid(cfg, studies)
    if failed:
        raise typer.Exit(1)


def _run_one(cfg, no_faces: bool, no_report: bool) -> int:
    """Run one study, show and report it; the number of runs that failed."""
    from .binding import BindingError
    from .data.problems import DatasetError
    from .study import plan, run_study

    console.print(f"[bold]study[/] {cfg.name} → {cfg.output_dir}  ({len(plan(cfg))} runs)")
    try:
        with _RichHooks(cfg.train.epochs) as hooks:
            report = run_study(cfg, hooks)
        console.print(f"ran {len(report.ran)}, skipped {len(report.skipped)} finished, failed {len(report.failed)}")
        _show(Path(cfg.output_dir))
    except (StoreError, DatasetError, BindingError, ConfigError, EnvironmentFault) as e:
        _fail_on(e)
    if not no_report:
        _report(Path(cfg.output_dir), n_boot=1000, faces=not no_faces)
    return len(report.failed)


def _compare_grid(cfg, studies) -> None:
    """A models grid: its config in output_dir/grid.yaml, and its studies side by side in output_dir/compare.html."""
    from .atomic import write_text_atomic
    from .config import dump_config

    out = Path(cfg.output_dir)
    write_text_atomic(out / "grid.yaml", dump_config(cfg))
    page = _write_comparison([Path(s.output_dir) for s in studies], out, 1000)
    console.print(f"models side by side: {page}  (the first, {studies[0].name}, is the one the others are compared with)",
                  highlight=False, soft_wrap=True)


@app.command()
def report(
    study_dir: Path = typer.Argument(..., help="a study directory (holds results.sqlite)"),
    bootstrap: int = typer.Option(1000, min=100, help="bootstrap resamples for the gap-change intervals"),
    layer: list[str] = typer.Option([], "--layer", help="also plot this weight before and after pruning (repeatable; "
                                    "names as in the report's 'Layers of each file')"),
    no_faces: bool = typer.Option(False, "--no-faces", help=NO_FACES_HELP),
) -> None:
    """Write report.html (figures embedded, opens offline) and tables/ in Markdown, CSV and LaTeX."""
    _report(study_dir, bootstrap, faces=not no_faces, layers=tuple(layer))


def _report(study_dir: Path, n_boot: int, faces: bool = True, layers: tuple[str, ...] = ()) -> None:
    from .report.build import write_report
    from .report.weights import UnknownLayer

    try:
        with console.status("report ...") as status:
            rep = write_report(study_dir, n_boot=n_boot, progress=lambda msg: status.update(f"report: {msg} ..."), faces=faces,
                               layers=layers)
    except (StoreError, EnvironmentFault, UnknownLayer) as e:
        _fail_on(e)
    for line in rep.missing:
        err.print(f"[yellow]missing:[/] {line}", highlight=False, soft_wrap=True)
    console.print(f"report: {rep.html}  ({len(rep.figures)} figures; tables in {rep.html.parent / 'tables'})")


@app.command()
def show(study_dir: Path = typer.Argument(..., help="a study directory (holds results.sqlite)")) -> None:
    """Print a study's results tables."""
    try:
        _show(study_dir)
    except (StoreError, EnvironmentFault) as e:
        _fail_on(e)


@app.command()
def compare(
    study_dirs: list[Path] = typer.Argument(..., help="two or more study directories; the first is the one the others are compared with"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for compare.html, tables/ and figures/"),
    bootstrap: int = typer.Option(1000, min=100, help="bootstrap resamples for the intervals"),
) -> None:
    """Compare studies (e.g. one per dataset) on the variants and attributes they share: robustness,
    gap changes, weight spread; what one study lacks is listed, not compared."""
    page = _write_comparison(study_dirs, out, bootstrap)
    console.print(f"comparison: {page}  (tables in {out / 'tables'})", highlight=False, soft_wrap=True)


def _write_comparison(study_dirs: list[Path], out: Path, n_boot: int) -> Path:
    """compare.html of the studies, with progress; a study that cannot be compared ends the command."""
    from .report.compare import CompareError, write_comparison
    from .report.results import NothingToAnalyse

    try:
        with console.status("compare ...") as status:
            return write_comparison(study_dirs, out, n_boot=n_boot, say=lambda msg: status.update(f"compare: {msg} ..."))
    except (StoreError, EnvironmentFault, CompareError, NothingToAnalyse) as e:
        _fail_on(e)
        raise  # _fail_on exits


@app.command()
def export(
    study_dir: Path = typer.Argument(..., help="a study directory (holds results.sqlite)"),
    format: str = typer.Option(..., "--format", "-f", help="the layout to write (see `faircompress plugins`), e.g. stoychev"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write into (default: STUDY_DIR/export/FORMAT)"),
) -> None:
    """Write a study's results in another tool's layout; `stoychev`: one pickled metric dict per
    model, as the paper's authors' evaluation scripts wrote them (logs/ or logs_rafdb/)."""
    from .export import EXPORT_FORMATS
    from .export.stoychev import ExportError
    from .report.results import NothingToAnalyse

    if format not in EXPORT_FORMATS:
        _fail(f"--format: export format {format!r} is unknown (known: {', '.join(EXPORT_FORMATS.names())})")
    try:
        done = EXPORT_FORMATS.get(format)(study_dir, out if out is not None else study_dir / "export" / format)
    except (StoreError, EnvironmentFault, ExportError, NothingToAnalyse) as e:
        _fail_on(e)
    for line in done.skipped:
        err.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)
    console.print(f"wrote {len(done.files)} metric files and index.csv to {done.folder}", highlight=False, soft_wrap=True)


@app.command()
def verify(study_dir: Path = typer.Argument(..., help="a study directory (holds results.sqlite)")) -> None:
    """Check every finished run's file against the SHA-256 recorded with its results. Exits 1 if
    one is missing or altered (`faircompress run` rebuilds those)."""
    from .artefacts import check_artefacts

    try:
        store = ResultStore.open_existing(study_dir)
    except StoreError as e:
        _fail_on(e)
    try:
        checks = check_artefacts(store, study_dir)
    finally:
        store.close()
    for check in checks:
        if check.state != "ok":
            style = "red" if check.damaged else "yellow"
            console.print(f"[{style}]{check.state}[/] {check.describe()}", highlight=False, soft_wrap=True)
    damaged = sum(c.damaged for c in checks)
    ok = sum(c.state == "ok" for c in checks)
    console.print(f"{len(checks)} finished runs: {ok} files match their checksum, {damaged} missing or altered, "
                  f"{len(checks) - ok - damaged} without a recorded checksum")
    if damaged:
        raise typer.Exit(1)


def _pct(x: object) -> str:
    return "–" if x is None or x != x else f"{100 * float(x):.2f}%"


def _show(study_dir: Path) -> None:
    from .plan import stale_protocol
    from .report.results import NothingToAnalyse, load_results
    from .report.tables import (DEPLOYMENT_TITLE, LEAK_NOTE, baseline_table, deployment_table, failed_runs, paper_table,
                                variant_stats, write_tables)

    store = ResultStore.open_existing(study_dir)
    try:
        stale = stale_protocol(store.protocol())
        res = load_results(store, intersections=False)
    except NothingToAnalyse:
        console.print(f"{study_dir}: no runs yet")
        return
    finally:
        store.close()
    if stale:
        console.print(f"[yellow]warning: these runs were {stale}.[/]", soft_wrap=True)
    stats = variant_stats(res)
    baselines = baseline_table(res)
    _print_baselines(study_dir, baselines, res.attributes)
    if (baselines["selection"] == LEAK_NOTE).any():
        console.print(
            "[yellow]warning: runs marked 'selected on test' chose their checkpoint on the test set (the authors' "
            "protocol): their test accuracies are optimistic because selection leaks test data.[/]", soft_wrap=True)
    if stats.empty:
        _print_baseline_groups(baselines, res)
    else:
        _print_frame(paper_table(stats, digits=1, gaps=True),
                     "variants in ONNX Runtime: zipped size, accuracy (%) and gap between groups (pp), mean ± std over baselines and repeats")
        for attr in res.attributes:
            _print_frame(paper_table(stats, digits=1, attribute=attr), f"accuracy (%) by {attr}")
        _print_frame(deployment_table(stats), "variants: " + DEPLOYMENT_TITLE[0].lower() + DEPLOYMENT_TITLE[1:])
    fails = failed_runs(res)
    if not fails.empty:
        _print_frame(fails, "[red]failed runs[/]", wrap=("error",))
    for f in write_tables(res, study_dir, stats):
        console.print(f"wrote {f}")


def _print_baselines(study_dir: Path, baselines, attrs: list[str]) -> None:
    import pandas as pd

    from .report.tables import LEAK_NOTE

    rows = []
    for _, r in baselines.iterrows():
        sel = Text(r["selection"], style="yellow") if r["selection"] == LEAK_NOTE else str(r["selection"] or "")
        status = r["status"] if r["status"] != "failed" else Text.assemble(("failed", "red"), f": {str(r['error']).splitlines()[0]}")
        rows.append([r["run"], status, sel, _pct(r.get("accuracy")), *[_pct(r.get(f"gap {a}")) for a in attrs]])
    frame = pd.DataFrame(rows, columns=["run", "status", "selection", "accuracy", *[f"gap {a}" for a in attrs]])
    given = (baselines["selection"] == "given").any() if "selection" in baselines else False
    what = "the trained model, or the given one (selection: given)" if given else "the trained PyTorch model"
    _print_frame(frame, f"{escape(str(study_dir))}: baselines ({what}, test split)", wrap=("status", "selection"))


def _print_baseline_groups(baselines, res) -> None:
    """Accuracy per group of each finished baseline, one table per attribute (a study with no variants)."""
    done = baselines[baselines.status == "finished"]
    for attr in res.attributes:
        counts = np.bincount(res.codes[attr][res.codes[attr] >= 0], minlength=len(res.groups[attr]))
        shown = done[["run"]].copy()
        for g, n in zip(res.groups[attr], counts):
            if f"{attr}: {g}" in done:
                shown[f"{g} (n={n})"] = done[f"{attr}: {g}"].map(_pct)
        _print_frame(shown, f"accuracy by {attr}")


WRAP_WIDTH = 20  # text columns (a status, an error) wrap at this width in a terminal
_SHORT = {" + ": "+", "int8-weights": "int8w", "int8-dynamic": "int8d", "int8-static": "int8s", "epochs=": "ep="}


def short_label(label: str) -> str:
    """The form of a variant label `show` uses when a terminal is too narrow for the full one."""
    for long, short in _SHORT.items():
        label = label.replace(long, short)
    return label


def _print_frame(df, title: str, wrap: tuple[str, ...] = ()) -> None:
    """A frame as a table under its title (markup). Piped, each row stays on one line. In a terminal,
    only the `wrap` columns wrap: a long label (first column) takes its short form, and a table too
    wide is split into several that repeat the label."""
    console.print(title, highlight=False)
    header = [str(c) for c in df.columns]
    rows = [[c if isinstance(c, Text) else Text(str(c)) for c in row]
            for row in df.astype(object).where(df.notna(), "–").itertuples(index=False)]
    if not console.is_terminal:
        _print_wide(_table(header, rows, None, wrap))
        return
    cap = console.width // 3  # the same labels are shortened in every table: they stay recognisable
    rows = [[Text(short_label(r[0].plain), style=r[0].style) if r[0].cell_len > cap else r[0], *r[1:]] for r in rows]
    full, compact = _column_widths(header, rows, wrap)
    room = console.width - 1 - (compact[0] + 3)
    for chunk in _chunks(compact[1:], full[1:], room):
        cols = [0, *(i + 1 for i in chunk)]
        widths = [compact[0], *(chunk[i] for i in chunk)]
        console.print(_table([header[i] for i in cols], [[r[i] for i in cols] for r in rows], widths, wrap))


def _column_widths(header: list[str], rows: list[list[Text]], wrap: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """(full, compact) width of each column: full keeps the header on one line; compact wraps it
    at its spaces (and a `wrap` column's text at WRAP_WIDTH). Neither wraps a value."""
    full, compact = [], []
    for i, h in enumerate(header):
        cell = max((r[i].cell_len for r in rows), default=1)
        cell = min(cell, WRAP_WIDTH) if h in wrap else cell
        full.append(max(cell, len(h)))
        compact.append(max(cell, *(len(word) for word in h.split())))
    return full, compact


def _chunks(compact: list[int], full: list[int], room: int) -> list[dict[int, int]]:
    """Columns packed into tables of at most `room` characters, as {column: width}: compact widths,
    widened to full where the table still has room."""
    chunks: list[dict[int, int]] = [{}]
    for i, w in enumerate(compact):
        if chunks[-1] and sum(v + 3 for v in chunks[-1].values()) + w + 3 > room:
            chunks.append({})
        chunks[-1][i] = w
    for chunk in chunks:
        for i in chunk:
            if sum(v + 3 for v in chunk.values()) + full[i] - chunk[i] <= room:
                chunk[i] = full[i]
    return chunks


def _table(header: list[str], rows: list[list[Text]], widths: list[int] | None, wrap: tuple[str, ...]) -> Table:
    t = Table()
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 or h in wrap else "right", width=widths[i] if widths else None)
    for row in rows:
        t.add_row(*row)
    return t


def _print_wide(t: Table) -> None:
    """As wide as the table needs (whatever the console's width), so that grep finds whole rows."""
    width = Measurement.get(console, console.options.update_width(10_000), t).maximum
    Console(file=console.file, width=max(width, console.width), color_system=console.color_system).print(t)


class _RichHooks(Hooks):
    """Rich progress for a study: a bar for the study's runs and one for the current epoch, one line
    per finished epoch/run (runs side by side: each epoch line names its run)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.task = None
        self.study = None

    def __enter__(self) -> "_RichHooks":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_started(self, run, index: int, total: int) -> None:
        if self.study is None:
            self.study = self.progress.add_task("study", total=total)
        console.print(f"[bold cyan]▶ {escape(run.label)}[/]  ({index + 1}/{total} to run, id {run.run_id})")

    def run_skipped(self, run) -> None:
        console.print(f"[dim]✓ {escape(run.label)}: finished earlier, skipped[/]")

    def run_finished(self, run, result) -> None:
        self._drop_task()
        console.print(f"[green]✓ {escape(run.label)}[/]: test accuracy {_pct(result.scalar('accuracy'))}")

    def run_failed(self, run, error: str) -> None:
        self._drop_task()
        console.print(f"[red]✗ {escape(run.label)}[/]: {escape(error)}")

    def note(self, text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True, markup=False)  # e.g. a label's "[epochs=1]" is text

    def batch(self, epoch: int, done: int, total: int) -> None:
        desc = f"epoch {epoch}"
        if self.task is None:
            self.task = self.progress.add_task(desc, total=total)
        self.progress.update(self.task, completed=done, total=total, description=desc)

    def epoch(self, log) -> None:
        console.print("  " + _epoch_line(log), highlight=False)

    def run_epoch(self, run, log) -> None:
        console.print(f"  {escape(run.label)}: {_epoch_line(log)}", highlight=False)

    def _drop_task(self) -> None:
        if self.study is not None:
            self.progress.advance(self.study)
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


def _epoch_line(log) -> str:
    return (f"epoch {log.epoch:>3}  loss {log.train_loss:.3f} acc {_pct(log.train_acc)} | "
            f"select loss {log.sel_loss:.3f} acc {_pct(log.sel_acc)} | lr {log.lr:.0e} {log.seconds:.1f}s")


def _load_config_or_study(config_or_study: Optional[Path], cache: bool, options: dict):
    """A config file, or a study directory's config.yaml (the study there), with the command's options."""
    overrides: dict = {} if cache else {"dataset.cache": False}
    if config_or_study is not None and config_or_study.is_dir():
        if not (config_or_study / "config.yaml").is_file():
            _fail(f"{config_or_study}: a study directory holds config.yaml (written by `faircompress run`); give the config instead")
        overrides["output_dir"] = str(config_or_study)
        config_or_study = config_or_study / "config.yaml"
    overrides |= {key: str(value) for key, value in options.items() if value is not None}
    return _load(config_or_study, overrides)


@app.command()
def sensitivity(
    config_or_study: Optional[Path] = typer.Argument(None, help="study config (YAML) or a study directory (its config.yaml); "
                                                   "default: the built-in synthetic study"),
    levels: str = typer.Option("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="sparsities each layer is pruned to, alone"),
    split: str = typer.Option("val", help="split evaluated: val (what from_sensitivity reads), train or test"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (overrides output_dir)"),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (overrides train.device)"),
    data: Optional[Path] = typer.Option(None, "--data", help="your copy of the dataset (sets dataset.params.root)"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the prepared dataset cache"),
) -> None:
    """Layer-wise sensitivity of the study's first baseline (trained first if the study has none): each
    prunable layer compressed alone (pruned at each level; int8), no fine-tuning, evaluated in PyTorch;
    the change of accuracy and of each attribute's gap, stored in the study, tables/sensitivity.csv
    and figures. `prune: {from_sensitivity: {tolerance: 0.01}}` recipes choose their sparsities from it."""
    from .binding import BindingError
    from .data.problems import DatasetError
    from .report.sensitivity import pivot, write_outputs
    from .sensitivity import SensitivityError, parse_levels, run_sensitivity
    from .train import DeviceError

    cfg = _load_config_or_study(config_or_study, cache, {"output_dir": out, "dataset.params.root": data, "train.device": device})
    try:
        chosen = parse_levels(levels)
    except SensitivityError as e:
        _fail(str(e))
    for study in cfg.studies():
        console.print(f"[bold]sensitivity[/] {study.name} → {study.output_dir}", highlight=False)
        try:
            with _RichHooks(study.train.epochs) as hooks:
                task = None

                def progress(done: int, total: int, what: str) -> None:  # one bar over layers x levels, on the hooks' display
                    nonlocal task
                    if task is None:
                        task = hooks.progress.add_task("scan", total=total)
                    hooks.progress.update(task, completed=done, total=total, description=f"scan: {what}")

                scan = run_sensitivity(study, chosen, split, hooks, progress)
            store = ResultStore.open_existing(Path(study.output_dir))
            try:
                csv, figs = write_outputs(store, Path(study.output_dir))
            finally:
                store.close()
        except (SensitivityError, StoreError, DatasetError, BindingError, ConfigError, DeviceError, EnvironmentFault) as e:
            _fail_on(e)
        for note in scan.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        table = pivot(scan.rows)
        _print_frame(table[table.measure.str.contains("accuracy")].drop(columns="measure"),
                     f"Δ accuracy (pp) on the {split} split, one layer compressed alone, baseline run {scan.baseline_id} "
                     f"({scan.images} images, {scan.seconds:.0f} s)")
        console.print(f"wrote {csv}" + "".join(f"\nwrote {f}" for f in figs), highlight=False, soft_wrap=True)


@app.command()
def power(
    config: Optional[Path] = typer.Argument(None, help="study config (YAML); default: the built-in synthetic study"),
    data: Optional[Path] = typer.Option(None, "--data", help="your copy of the dataset (sets dataset.params.root)"),
    repeat_sd: float = typer.Option(2.0, help="assumed spread (pp) of one model's gap between repeats or seeds"),
    target: float = typer.Option(5.0, help="the gap change (pp) you want to be able to detect"),
    accuracy: float = typer.Option(0.8, min=0.01, max=0.99, help="assumed test accuracy"),
    subject_sd: float = typer.Option(0.1, min=0, help="assumed spread of accuracy between subjects"),
    flip_rate: float = typer.Option(0.05, min=0.001, max=0.5, help="assumed share of test images whose correctness compression changes"),
) -> None:
    """Before training: the smallest gap change the planned study could detect (80 % power, α 0.05)
    for each attribute, from its test split and a stated repeat spread, and the repeats a target needs."""
    from .data.registry import DATASETS, default_cache_dir, load_dataset
    from .evaluate.fairness import MIN_GROUP
    from .evaluate.power import Scenario, planned_power
    from .plan import plan

    cfg = _load(config, {"dataset.params.root": str(data)} if data is not None else {})
    runs = plan(cfg)
    variants = len({r.recipe.key() for r in runs if r.recipe is not None and not r.recipe.is_reference})
    ds_params = DATASETS.get(cfg.dataset.name).params.model_validate(cfg.dataset.params)
    try:
        with console.status("loading the dataset ..."):
            ds = load_dataset(cfg.dataset.name, ds_params, default_cache_dir() if cfg.dataset.cache else None)
    except EnvironmentFault as e:
        _fail_on(e)
    test = ds.indices("test")
    attrs = {a: (codes[test], len(ds.attribute_groups[a])) for a, codes in ds.attributes.items()}
    tests = max(variants * len(attrs), 1)
    with console.status("simulating the test split ..."):
        rows = planned_power(attrs, ds.subjects[test], Scenario(accuracy, subject_sd, flip_rate), repeat_sd / 100, cfg.repeats,
                             len(cfg.seeds), tests, target / 100, MIN_GROUP)
    t = Table(title=f"{cfg.name}: detectable gap change (pp), {cfg.repeats} repeats x {len(cfg.seeds)} seed(s), "
                    f"{variants} variants, {tests} gap tests", title_justify="left")
    for col in ["attribute", "groups", "subjects", "images", "detectable", "after correction", f"repeats for {target:g} pp (corrected)"]:
        t.add_column(col, justify="left" if col == "attribute" else "right")
    for r in rows:
        if r["note"]:
            t.add_row(r["attribute"], str(r["groups"]), "", "", r["note"], "", "")
            continue
        need = r["repeats_for_target"]
        t.add_row(r["attribute"], str(r["groups"]), str(r["subjects"]), str(r["images"]), f"{100 * r['detectable']:.1f}",
                  f"{100 * r['detectable_corrected']:.1f}", str(need) if need else "none: more seeds or test subjects")
    console.print(t)


def _load(config: Optional[Path], overrides: dict):
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        _fail(str(e))


@app.command()
def plugins() -> None:
    """List every registered dataset, model, compression step and group metric, with their parameters."""
    from .plugins import describe_plugins

    for kind, rows in describe_plugins().items():
        t = Table(title=kind, title_justify="left")
        t.add_column("name")
        t.add_column("parameters (default)")
        t.add_column("about")
        for row in rows:
            t.add_row(row.name, row.parameters, row.about)
        console.print(t)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", "-o", help="folder for PNG files and labels.csv"),
    params: Optional[Path] = typer.Option(None, "--params", help="YAML of synthetic dataset parameters"),
    seed: Optional[int] = typer.Option(None, help="generator seed"),
    image_size: Optional[int] = typer.Option(None, help="side in pixels (default 48)"),
    rgb: Optional[bool] = typer.Option(None, "--rgb/--gray", help="colour or grayscale"),
    classes: Optional[str] = typer.Option(None, help="ckplus (8 classes) or rafdb (7)"),
) -> None:
    """Write the synthetic FER benchmark as PNG files plus a CSV of labels and attributes."""
    import yaml
    from pydantic import ValidationError

    from .config import format_errors
    from .data.export import write_image_folder
    from .data.synthetic import SyntheticParams, generate

    raw: dict = {}
    if params is not None:
        try:
            raw = yaml.safe_load(params.read_text(encoding="utf-8-sig")) or {}
        except (OSError, yaml.YAMLError) as e:
            _fail(f"{params}: cannot read parameters ({e})")
    for key, val in {"seed": seed, "image_size": image_size, "rgb": rgb, "classes": classes}.items():
        if val is not None:
            raw[key] = val
    try:
        p = SyntheticParams.model_validate(raw)
    except ValidationError as e:
        _fail(f"{params or 'options'}: invalid synthetic parameters: {format_errors(e)}")
    ds = generate(p)
    try:
        n = write_image_folder(ds, out)
    except EnvironmentFault as e:
        _fail_on(e)
    except OSError as e:  # e.g. a file where a folder of the output should be
        _fail(f"{out}: cannot write ({e.strerror or e})", EXIT_ENVIRONMENT)
    console.print(f"wrote {n} images and labels.csv to {out}")


@data_app.command("check")
def data_check(
    name: str = typer.Argument(..., help="a registered dataset (`faircompress plugins` lists them)"),
    path: Optional[Path] = typer.Argument(None, help="your copy of the dataset (its root folder or file)"),
    param: list[str] = typer.Option([], "--param", "-p", help="loader parameter as key=value (YAML value), repeatable"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first unreadable file instead of skipping it"),
    cache: bool = typer.Option(False, "--cache/--no-cache", help="use the prepared cache instead of reading every file (off: the check reads the files)"),
    show_all: bool = typer.Option(False, "--all", help="list every problem, not the first 10 of each kind"),
) -> None:
    """Load a dataset and print counts per split, class and group, and every problem found.
    Exits 1 if the dataset is unusable for a study."""
    import yaml
    from pydantic import ValidationError

    from .config import format_errors
    from .data.common import report_of
    from .data.problems import DatasetError
    from .data.registry import DATASETS, default_cache_dir, load_dataset

    if name not in DATASETS:
        _fail(f"unknown dataset {name!r} (known: {', '.join(DATASETS.names())})")
    source = DATASETS.get(name)
    raw: dict = {}
    if path is not None:
        raw["root"] = str(path)
    elif "root" in source.params.model_fields:
        _fail(f"{name}: give the path of your copy, e.g. faircompress data check {name} /data/{name}")
    for item in param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--param {item!r}: expected key=value")
        raw[key.strip()] = yaml.safe_load(value)
    try:
        params = source.params.model_validate(raw)
    except ValidationError as e:
        _fail(f"{name}: invalid parameters: {format_errors(e)}")
    try:
        with console.status(f"loading {name} ..."):
            ds = load_dataset(name, params, default_cache_dir() if cache else None, strict=strict)
    except DatasetError as e:
        _fail(str(e), 1)  # an unusable dataset: see the docstring
    except EnvironmentFault as e:
        _fail_on(e)
    _print_check(ds, report_of(ds), show_all)
    unusable = _unusable(ds)
    for reason in unusable:
        err.print(f"[bold red]unusable:[/] {reason}", highlight=False)
    if unusable:
        raise typer.Exit(1)


def _print_check(ds, report, show_all: bool) -> None:
    from .data.composition import composition
    from .data.dataset import SPLITS
    from .report.data_summary import class_counts, class_shares, group_counts, shares_in_percent

    what = f"{ds.channels} features each" if ds.is_features else f"{ds.channels} channel(s), {ds.image_size[0]}x{ds.image_size[1]}"
    console.print(f"[bold]{ds.name}[/]: {len(ds)} images, {what}" + (f"  (source {ds.meta['source']})" if "source" in ds.meta else ""))
    comp = composition(ds)
    _print_counts(class_counts(comp, ds.class_names, SPLITS), "images per class and split", total_row=True)
    groups = group_counts(comp, ds.attribute_groups, SPLITS)
    shares = shares_in_percent(class_shares(comp, ds.class_names, ds.attribute_groups, SPLITS), ds.class_names)
    for attr in ds.attribute_groups:
        _print_counts(groups[groups.attribute == attr].drop(columns="attribute").rename(columns={"group": attr}),
                      f"images per {attr} group and split")
        mine = shares[shares.attribute == attr].rename(columns={"group": attr})
        _print_frame(mine[[attr, "split", "images", *ds.class_names]], f"share (%) of each class within each {attr} group, per split")
    _print_problems(report, show_all)


def _print_counts(counts, title: str, total_row: bool = False) -> None:
    """Image counts (a label column, then one per split) with a total per row, and with ``total_row`` per split."""
    table = Table(title=title)
    splits = list(counts.columns[1:])
    for col in [counts.columns[0], *splits, "all"]:
        table.add_column(str(col), justify="left" if col == counts.columns[0] else "right")
    for row in counts.itertuples(index=False):
        table.add_row(str(row[0]), *map(str, row[1:]), str(sum(row[1:])))
    if total_row:
        table.add_row("all", *(str(int(counts[s].sum())) for s in splits), str(int(counts[splits].to_numpy().sum())), style="bold")
    console.print(table)


def _print_problems(report, show_all: bool) -> None:
    for text in report.notes:
        console.print(f"note: {text}", highlight=False)
    kinds = report.kinds()
    if not kinds:
        console.print("[green]no problems found[/]")
    for kind, n in kinds.items():
        console.print(f"[yellow]{kind}: {n}[/]")
        items = [(path, detail) for k, path, detail in report.problems if k == kind]
        for path, detail in items if show_all else items[:10]:
            console.print(f"  {path}: {detail}", highlight=False, soft_wrap=True)
        if not show_all and len(items) > 10:
            console.print(f"  ... and {len(items) - 10} more (--all lists them)")


def _unusable(ds) -> list[str]:
    reasons = []
    if len(ds) == 0:
        return ["no images could be loaded"]
    for split in ("train", "test"):
        if len(ds.indices(split)) == 0:
            reasons.append(f"the {split} split is empty")
    train_classes = {int(c) for c in ds.labels[ds.indices("train")]}
    if len(train_classes) < 2:
        reasons.append(f"the training split holds {len(train_classes)} class(es); a classifier needs at least 2")
    return reasons


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
