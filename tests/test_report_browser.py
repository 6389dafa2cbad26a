"""Open report.html in headless Chromium (Debian's package; `make test` installs it where missing)
and check that every figure decoded and every table rendered."""
import re
import shutil
import subprocess

import pytest

from test_report import SECTIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
def test_report_opens_in_a_browser_with_every_image_and_table(study, tmp_path):
    url = (study / "report.html").resolve().as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, dom[-2000:]
    ok, total = map(int, loaded.groups())
    assert total == len(list((study / "figures").glob("*.png"))) and ok == total
    # the study's details, one table per section, and for a long section its significant rows and all of them
    assert dom.count("<table") == 1 + len(SECTIONS) + dom.count("<summary>show all")
    shot = study / "report-first-screen.png"  # the first screen, for review
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1400,900", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")
def test_report_controls_work_in_a_browser_without_console_errors(study, tmp_path):
    """With '#check' the page measures its first screen, clicks a header twice, filters, and opens
    'show all', and records each outcome on <body>; Chromium's log carries any script error."""
    url = (study / "report.html").resolve().as_uri() + "#check"
    run = subprocess.run([CHROMIUM, *FLAGS, "--user-data-dir=" + str(tmp_path / "profile"), "--enable-logging=stderr", "--v=0",
                          "--window-size=1400,900", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", run.stdout).group(0)
    assert 'data-sort-check="ok"' in body and 'data-filter-check="ok"' in body, body
    assert 'data-first-screen="ok"' in body, body  # the findings and the first figure fit a 1400x900 window
    assert re.search(r'data-show-all-check="(ok|none)"', body), body
    assert "Uncaught" not in run.stderr and "SyntaxError" not in run.stderr, run.stderr[-2000:]
    dom = run.stdout
    assert dom.index('id="findings"') < dom.index('id="figures"')  # the findings open the page
