"""The report in a real browser: headless Chromium loads it from disk, with no console errors, and every figure
renders at a non-zero size. Skipped where Chromium is absent (`.ci/run` installs Debian's `chromium`)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.report.test_report import report  # noqa: F401  (the module-scoped report fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent.parent.parent / "test-artifacts"
# Injected into a copy of the page: measures every figure once laid out and writes the sizes into the DOM,
# which --dump-dom prints. The report itself carries no script.
PROBE = """<script>
window.addEventListener("load", () => {
  const sizes = [...document.querySelectorAll("svg.report-figure")].map(svg => {
    const box = svg.getBoundingClientRect();
    return {id: svg.id, width: box.width, height: box.height};
  });
  const out = document.createElement("pre");
  out.id = "figure-sizes";
  out.textContent = JSON.stringify(sizes);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(report, tmp_path):  # noqa: F811
    index = report[0]
    probe = index.parent / "probe.html"
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dumped = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    # The page has no script of its own and the probe logs nothing, so any console message is an error.
    messages = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    assert not messages, messages
    found = re.search(r'<pre id="figure-sizes">(.*?)</pre>', dumped.stdout, re.S)
    assert found, "the page did not finish loading"
    sizes = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(sizes) >= 3
    assert all(s["width"] > 100 and s["height"] > 100 for s in sizes), sizes
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    taken = chromium("--window-size=1280,2400", f"--screenshot={shot}", index.as_uri())
    assert taken.returncode == 0 and shot.stat().st_size > 10_000
