"""The fairness report end to end on a tiny study: `run` writes it, every table and figure is there,
and odd study directories get a clear message or a report that lists what is missing."""
import re
from pathlib import Path

from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.report.build import write_report
from faircompress.store import ResultStore

from conftest import REPORT_GRID

SECTIONS = ["Accuracy per group", "Gaps and their change", "McNemar tests", "Compression-identified exemplars", "CEV and SDE"]


def test_run_ends_with_a_self_contained_report(study):
    html = (study / "report.html").read_text()
    for title in SECTIONS:
        assert title in html
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]{100,})"', html)
    figs = sorted(p.stem for p in (study / "figures").glob("*.png"))
    assert sorted(a for a, _ in imgs) == figs
    assert {"levels-prune", "gap-vs-size", "weights", "confusion-gender"} <= set(figs)
    assert all((study / "figures" / f"{f}.svg").exists() for f in figs)
    assert "http://" not in html and "https://" not in html  # opens offline
    assert "subject-disjoint validation split" in html and "baseline 2" in html  # two baseline seeds


def test_report_tables_in_three_formats(study):
    rep = write_report(study, n_boot=200)
    assert not rep.missing
    for name in ("paper", "gaps", "mcnemar", "exemplars", "error_change", "class_rates", "class_group_recall"):
        for ext in ("csv", "md", "tex"):
            assert (study / "tables" / f"report-{name}.{ext}").stat().st_size > 0
    assert "\\toprule" in (study / "tables" / "report-paper.tex").read_text()
    gaps = rep.tables["gaps"]
    assert "gender" in set(gaps.attribute) and any(" × " in a for a in gaps.attribute)  # intersections too
    v = gaps[gaps.variant != "baseline (fp32)"]
    assert ((v.ci_low <= v.gap_change + 1e-12) & (v.gap_change <= v.ci_high + 1e-12)).all()
    assert v.significant.dtype == bool
    mcn = rep.tables["mcnemar"]
    assert (mcn.p_holm.dropna() >= mcn.p.dropna()).all()
    cie = rep.tables["exemplars"]
    assert (cie.baseline_models == 2).all() and set(cie.variant_models) == {2, 4}  # int8 once per seed, prune 2 repeats x 2 seeds


def test_report_on_odd_directories(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "results.sqlite" in res.output and "Traceback" not in res.output
    ResultStore(tmp_path / "empty").close()
    rep = write_report(tmp_path / "empty")
    assert rep.html.exists() and any("no test samples" in m for m in rep.missing)
    assert "Missing or failed" in rep.html.read_text()


def test_report_lists_failed_variants(study, tmp_path):
    import shutil
    import sqlite3

    copy = tmp_path / "copy"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("*.onnx", "*.safetensors"))
    with sqlite3.connect(copy / "results.sqlite") as c:
        c.execute("UPDATE runs SET status='failed', error='quantiser exploded' WHERE label LIKE 'int8-weights%'")
    rep = write_report(copy, n_boot=100)
    assert any("quantiser exploded" in m for m in rep.missing)
    assert "int8-weights" not in set(rep.tables["gaps"].variant)
    assert Path(rep.html).exists()


def test_report_on_a_dataset_without_attributes(study, tmp_path):
    import shutil
    import sqlite3

    copy = tmp_path / "noattr"
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("*.onnx", "*.safetensors"))
    with sqlite3.connect(copy / "results.sqlite") as c:
        c.execute("UPDATE datasets SET attribute_groups_json='{}'")
        c.execute("UPDATE samples SET attributes_json='{}'")
    rep = write_report(copy, n_boot=100)
    assert not rep.missing and rep.tables["gaps"].empty and len(rep.tables["exemplars"]) == len(REPORT_GRID)
    assert "Accuracy per group" in rep.html.read_text()
