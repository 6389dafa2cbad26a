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
    shot = study / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1400,2000", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
