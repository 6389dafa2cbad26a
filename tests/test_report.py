"""The fairness report end to end on a tiny study: `run` writes it, every table and figure is there,
and odd study directories get a clear message or a report that lists what is missing."""
import re

import numpy as np
from pathlib import Path

from typer.testing import CliRunner

from faircompress.cli import app
from faircompress.report.build import write_report
from faircompress.store import ResultStore

from conftest import REPORT_GRID

SECTIONS = ["Accuracy per group", "What each file costs to ship", "Gaps and their change", "Power: the smallest gap change",
            "Paired tests per group", "Compression-identified exemplars", "CEV and SDE", "Mitigation: each mitigated variant beside its twin",
            "Weight spread of the baseline files",
            "Where each pruning level cuts", "Layers of each file", "The data: images per class and split",
            "The data: images per group and split", "The data: each group"]


def test_run_ends_with_a_self_contained_report(study):
    html = (study / "report.html").read_text()
    for title in SECTIONS:
        assert title in html
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]{100,})"', html)
    figs = sorted(p.stem for p in (study / "figures").glob("*.png"))
    assert sorted(a for a, _ in imgs) == figs
    assert {"levels-prune", "gap-vs-size", "sizes", "confusion-gender", "mitigation"} <= set(figs)
    assert any(f.startswith("weights-") for f in figs)
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
    assert v.significant.dtype == bool and v.p.notna().all()
    assert (v.p_holm >= v.p - 1e-12).all() and (v.significant == (v.p_holm < 0.05)).all()  # corrected across the study
    assert set(gaps.resampled) == {"subjects and models"}  # the synthetic set has several images per subject
    assert set(rep.tables["groups"].interval) == {"subject bootstrap"} and set(rep.tables["mcnemar"].test) == {"subject sign-flip permutation"}
    html = rep.html.read_text()
    assert "subject bootstrap" in html and "subject sign-flip permutation" in html and "Holm-adjusted across every gap change" in html
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


def _printed_tables(output: str) -> list[tuple[str, list[dict[str, str]]]]:
    """(title, rows as {column: cell}) of every rich table in `show`'s output."""
    tables, title, header = [], "", None
    for line in output.splitlines():
        if "┃" in line:
            header = [c.strip() for c in line.split("┃")[1:-1]]
            tables.append((title, []))
        elif "│" in line and header:
            tables[-1][1].append(dict(zip(header, (c.strip() for c in line.split("│")[1:-1]))))
        elif line.strip() and not any(ch in line for ch in "┏┡└━"):
            title, header = line.strip(), None
    return tables


def test_every_number_show_prints_equals_the_reports(study):
    from faircompress import cli

    width = cli.console.width
    cli.console.width = 600  # one line per row
    try:
        shown = CliRunner().invoke(app, ["show", str(study)])
    finally:
        cli.console.width = width
    assert shown.exit_code == 0, shown.output
    rep = write_report(study, n_boot=100)
    variants, baselines = rep.tables["variants"].set_index("variant"), rep.tables["baselines"].set_index("run")
    checked = 0
    for title, rows in _printed_tables(shown.output):
        attr = title.split(" by ")[-1] if title.startswith("accuracy (%) by") else None
        for row in rows:
            for col, cell in row.items():
                expected = _expected(col, row, attr, variants, baselines)
                if expected is None:
                    continue
                got = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell)]
                assert np.allclose(got, expected[0], atol=expected[1] * 0.5 + 1e-9), (title, row, col, cell, expected)
                checked += 1
    assert checked >= 4 * len(variants) + 2 * len(baselines)


def _expected(col: str, row: dict, attr: str | None, variants, baselines):
    """(numbers, precision) the report holds for one printed cell; None for text cells."""
    if "run" in row and row["run"] in baselines.index:  # the baselines table: percentages with 2 decimals
        b = baselines.loc[row["run"]]
        key = {"accuracy": "accuracy"}.get(col, col if col.startswith("gap ") else None)
        if key is None:
            return None
        return ([100 * b[key]] if key in b.index and np.isfinite(b[key]) else [], 0.01)  # '–' where there is no gap
    v = row.get("variant")
    if v not in variants.index:
        return None
    r = variants.loc[v]
    pair = lambda c, s=100: ([s * r[f"{c}_mean"], s * np.nan_to_num(r[f"{c}_std"])], 0.1)  # noqa: E731
    if col == "size (MB)":
        return pair("size_mb", 1)
    if col == "accuracy":
        return pair("accuracy")
    if col.startswith("gap "):
        return pair("gap:" + col[4:])
    if attr is not None and f"{attr}:{col}_mean" in r:
        return pair(f"{attr}:{col}")
    if col == "zipped MB":
        return [r["size_mb_mean"]], 0.001
    if col == "latency ms (b=1)":
        return [r["latency_ms_mean"]], 0.001
    return None


def test_overall_disparity_leaves_out_groups_too_small_for_the_gap():
    from faircompress.report.analysis import gap_table
    from faircompress.report.results import StudyResults, Variant

    # groups a and b (10 images each) recall everything; c (2 images, under the minimum) recalls nothing
    codes = np.array([0] * 10 + [1] * 10 + [2] * 2)
    y = np.zeros(22, int)
    pred = np.where(codes == 2, 1, 0)
    res = StudyResults(class_names=["x", "y"], groups={"g": ["a", "b", "c"]}, codes={"g": codes}, subjects=np.arange(22).astype(str),
                       y_true=y, runs=None, variants=[Variant("k0", "baseline (fp32)", "baseline", np.nan, True, ("r0",))],
                       preds={"r0": pred})
    row = gap_table(res, n_boot=100).iloc[0]
    assert row.groups == 2 and row.gap == 0 and row.overall_disparity == 0


def test_markdown_and_html_tables_escape_text_from_the_dataset():
    import pandas as pd

    from faircompress.report.build import _section
    from faircompress.report.tables import markdown_table

    hostile = ["a|b", "<script>alert(1)</script>", "x & y", "`code`", "two\nlines", "back\\|slash"]
    df = pd.DataFrame({"group": hostile, "accuracy": [0.5, 1.25, -3.0, 0.0, 1e-5, np.nan], "gender: <i>a|b": 7})
    lines = markdown_table(df, "accuracy by <b>group|x</b>").splitlines()
    assert lines[0] == "### accuracy by &lt;b&gt;group\\|x&lt;/b&gt;"
    assert lines[2] == "| group | accuracy | gender: &lt;i&gt;a\\|b |" and len(lines) == 4 + len(hostile)
    for line in lines[2:]:  # once escapes are dropped, every row has exactly the pipes of its 3 columns
        assert re.sub(r"\\.", "", line).count("|") == 4
    cells = [line.split(" | ")[0].removeprefix("| ") for line in lines[4:]]
    assert cells == ["a\\|b", "&lt;script&gt;alert(1)&lt;/script&gt;", "x &amp; y", "\\`code\\`", "two lines", "back\\\\\\|slash"]
    assert [line.split(" | ")[1] for line in lines[4:]] == ["0.5", "1.25", "-3.0", "0.0", "1e-05", "–"]
    html = _section("Accuracy per group", "note", df)  # the HTML report escapes through pandas
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "gender: &lt;i&gt;a|b" in html


def test_the_report_opens_with_findings_written_from_its_tables(study):
    import re

    html = (study / "report.html").read_text()
    first = html.index('id="findings"')
    assert first < html.index('<section id="figures">') < html.index('<section id="s-accuracy-per-group">')
    assert first < html.index("<details id='study'>") < html.index('<nav id="contents">') < html.index('<section id="figures">')
    items = re.findall(r"<li class=\"(\w+)\">([^<]*)</li>", html[first:html.index("</section>", first)])
    texts = [t for _, t in items]
    assert any(t.startswith("gender: ") and "could detect about" in t for t in texts), texts
    assert all(any(t.startswith(f"{attr}: ") for t in texts) for attr in ("gender", "skin_tone", "age")), texts
    assert items[0][0] == "warn" and "groups too small to judge" in texts[0]  # the tiny study's small groups come first
    assert any(t.startswith("prune: ") or t.startswith("prune + quantize: ") for t in texts)


def _gaps(rows):
    import pandas as pd

    cols = ["variant", "attribute", "gap_change", "ci_low", "ci_high", "p", "p_holm", "significant"]
    return pd.DataFrame(rows, columns=cols)


def test_gap_findings_name_significant_changes_and_otherwise_the_largest_and_the_detectable():
    import pandas as pd

    from faircompress.report.findings import gap_findings

    power = pd.DataFrame({"attribute": ["gender"], "detectable_after_correction": [0.093]})
    none = gap_findings("gender", _gaps([["prune 80%", "gender", 0.02, -0.03, 0.07, 0.4, 1.0, False],
                                         ["prune 90%", "gender", -0.05, -0.10, 0.01, 0.09, 0.18, False],
                                         ["baseline (fp32)", "gender", 0.0, 0.0, 0.0, float("nan"), float("nan"), False]]), power)
    assert [f.text for f in none] == [
        "gender: no variant changes the gap significantly after correction (2 tested); the largest non-significant change is "
        "-5.0 pp (prune 90%; 95 % interval -10.0 to +1.0); it could detect about 9.3 pp (80 % power after the correction)"]
    found = gap_findings("gender", _gaps([["prune 90%", "gender", 0.121, 0.05, 0.19, 0.001, 0.004, True]]), power)
    assert found[0].text.startswith("gender: prune 90% widens the gap by 12.1 pp (95 % interval +5.0 to +19.0; Holm-adjusted p 0.004)")
    assert found[1].text == "gender: the study could detect about 9.3 pp (80 % power after the correction)"


def test_tables_navigate_contents_show_all_and_readable_values():
    import pandas as pd

    from faircompress.report.build import LONG_TABLE, _contents, _section

    df = pd.DataFrame({"variant": [f"v{i}" for i in range(LONG_TABLE + 5)], "p_holm": [0.0004] + [0.5] * (LONG_TABLE + 4),
                       "significant": [True] + [False] * (LONG_TABLE + 4)})
    html = _section("Gaps & changes", "note", df)
    head, _, rest = html.partition("<details>")
    assert "1 significant of 25 rows" in head and head.count("<td>v") == 1 and "<summary>show all 25 rows</summary>" in rest
    assert "<td>yes</td>" in head and "<td>&lt; 0.001</td>" in head and "True" not in html and "False" not in html
    assert '<li><a href="#s-gaps---changes">Gaps &amp; changes</a></li>' in _contents([html])


def test_the_first_figure_is_the_forest_of_gap_changes_and_a_heat_map_follows(study):
    html = (study / "report.html").read_text()
    figs = html[html.index('id="findings"'):]
    names = [chunk.split('"')[0] for chunk in figs.split('<img alt="')[1:]]
    assert names[0] == "forest-gap-change" and "accuracy-change" in names, names
    opening = html[html.index('<div class="opening">'):html.index('<section id="figures">')]
    assert 'id="findings"' in opening and "<figure class='lead'><img alt=\"forest-gap-change\"" in opening  # side by side
    assert (study / "figures" / "forest-gap-change.svg").is_file() and (study / "figures" / "accuracy-change.svg").is_file()
