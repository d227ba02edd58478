"""The report renders in a real browser: headless Chromium takes a screenshot (not blank) and every image of the
page loads (``naturalWidth`` > 0 for each ``<img>``, read from the DOM after load). Skips without Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser")
                             or "", shutil.which("google-chrome") or "") if p and Path(p).is_file()), None)
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium): the report's "
                                                          "browser test needs a headless browser")]
#: Appended to a *copy* of the report (the report itself has no script): lists each image's naturalWidth.
PROBE = ('<script>window.addEventListener("load",function(){var r=[];for(const i of document.images)'
         '{r.push(i.complete?i.naturalWidth:-1)}var p=document.createElement("pre");p.id="fs-imgcheck";'
         'p.textContent=JSON.stringify(r);document.body.appendChild(p)});</script>')


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    from PIL import Image
    from report_fixtures import tiny_run

    from focusseg.reporting import write_report

    run = tiny_run(tmp_path)
    report = write_report(run)
    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shot.is_file(), f"no screenshot: {res.stderr[-2000:]}"
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"), dtype=float)
    assert arr.shape == (2000, 1200)
    assert arr.std() > 10, "the screenshot is blank"
    assert (arr < 128).mean() > 0.01, "the screenshot has almost no dark pixel (no text, no figure)"
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium(tmp_path / "profile2", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="fs-imgcheck">([^<]*)</pre>', res.stdout)
    assert m, f"the DOM probe did not run: {res.stderr[-2000:]}"
    widths = json.loads(m.group(1))
    n_img = report.read_text().count("<img")
    assert len(widths) == n_img >= 5
    assert all(w > 0 for w in widths), f"broken image(s) in the page: naturalWidth {widths}"
