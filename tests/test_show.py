"""`faircompress show` at 80 columns in a terminal and piped: no value or label wraps."""
import pandas as pd
from rich.console import Console
from typer.testing import CliRunner

from faircompress import cli
from faircompress.cli import app


def _show(study) -> str:
    shown = CliRunner().invoke(app, ["show", str(study)])
    assert shown.exit_code == 0, shown.output
    return shown.output


def _labels(study) -> list[str]:
    """Every variant's label and baseline run's label the study holds."""
    variants = pd.read_csv(study / "tables" / "results.csv").variant.tolist()
    return variants + ["baseline seed=0", "baseline seed=1"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]


def test_show_fits_80_columns_in_a_terminal(study, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=80, force_terminal=True, color_system=None))
    lines = _show(study).splitlines()
    assert max(len(line) for line in lines) <= 80
    split = [line for line in lines for c in _cells(line) if c.startswith("±") or c.endswith("±")]
    assert not split, split  # a 'mean ± std' cut in two
    for label in _labels(study):
        assert any(label in line or cli.short_label(label) in line for line in lines), label


def test_show_piped_keeps_each_row_on_one_line(study):
    out = _show(study)  # CliRunner's output is not a terminal
    lines = out.splitlines()
    rows = [line for line in lines if "│" in line]
    assert rows and all(_cells(row)[0] for row in rows), rows  # a wrapped row goes on with an empty label
    assert sum("┃" in line for line in lines) == sum("┏" in line for line in lines)  # headers on one line
    for label in _labels(study):
        assert any(f"│ {label} " in line for line in rows), label
