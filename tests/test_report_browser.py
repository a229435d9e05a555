"""The HTML report, looked at: laid out and screenshotted by a real headless Chromium at 1280 px.

One report from ``onnxpress run --layerwise --report`` on the digits CNN (simplify, then int8
with one layer kept float) has a verdict, the summary table, the model before and after, the
per-pass plots, the per-layer table and the layer-wise plot. Chromium then looks at it twice:

1. layout: a copy of the page with a probe script appended records, for the verdict, every
   table box and every plot, its rectangle, computed display/visibility/opacity (ancestors
   included), whether ``elementFromPoint`` at its centre (scrolled into view) hits it or
   something inside it, and the page's ``scrollWidth``; ``--dump-dom`` brings that back. Every
   element must be shown, non-empty, inside 1280 px and on top; the page must not scroll
   sideways; no two labels of a plot may overlap and none may spill out of its plot.
2. pixels: a screenshot of the whole page (the height found in 1.) opened with Pillow. Each
   plot's rectangle must hold drawn pixels (the data colour, several colours, a share of
   non-white), the verdict badge its PASSED colour, the summary table dark text.

Chromium comes from the system (Debian's ``chromium``, which ``.ci/run`` installs); nothing is
downloaded. Without a Chromium binary the tests skip and say why.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from onnxpress import samples
from onnxpress.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine (.ci/run installs "
                                                         "Debian's chromium)")

WIDTH = 1280
PASSED_COLOUR = (0x1F, 0x8A, 0x4C)  # .passed in report.py's CSS
DATA_COLOUR = (0x3B, 0x6F, 0xB6)  # report._DATA: bars, points and lines of every plot

# After load and fonts, measure what the tests look at and write it into the page as JSON.
PROBE = """
<pre id="layout-probe" hidden></pre>
<script>
window.addEventListener("load", () => document.fonts.ready.then(() => {
  const shown = (el) => {
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const style = getComputedStyle(node);
      if (style.display === "none" || style.visibility !== "visible" || Number(style.opacity) === 0) return false;
    }
    return true;
  };
  const rect = (r) => ({left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width,
                        height: r.height});
  const targets = [document.getElementById("verdict"), document.getElementById("summary-table"),
                   ...document.querySelectorAll("div.scroll"), ...document.querySelectorAll("svg.plot")];
  const elements = targets.map((el) => {
    const style = getComputedStyle(el);
    scrollTo(0, 0);
    const page = rect(el.getBoundingClientRect());  // at scroll 0: page coordinates, as in the screenshot
    el.scrollIntoView({block: "center", inline: "nearest"});
    const r = el.getBoundingClientRect();
    const x = r.left + r.width / 2, y = Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1);
    const hit = document.elementFromPoint(x, y);
    const texts = [...el.querySelectorAll("text")].map((t) => ({
      text: t.textContent, rotated: t.hasAttribute("transform"), ...rect(t.getBoundingClientRect())}));
    return {id: el.id || `box of ${el.firstElementChild?.id}`, tag: el.tagName.toLowerCase(), page,
            display: style.display, visibility: style.visibility, opacity: style.opacity, shown: shown(el),
            on_top: hit !== null && (hit === el || el.contains(hit)), hit: hit ? hit.tagName : null,
            frame: rect(r), texts};
  });
  scrollTo(0, 0);
  document.getElementById("layout-probe").textContent = JSON.stringify({
    inner_width: innerWidth, scroll_width: document.documentElement.scrollWidth,
    scroll_height: document.documentElement.scrollHeight, elements});
}));
</script>
"""


def _chromium(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, no network helpers and a time limit.

    ``--no-sandbox``: Chromium refuses to start as root with its sandbox, and containers
    without user namespaces cannot give it one; the pages are our own local files.
    """
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-component-update", "--disable-quic",
                   "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory) -> Path:
    """A real report: simplify then int8 on the digits CNN, one layer kept float, layer-wise on."""
    folder = tmp_path_factory.mktemp("browser-report")
    recipe = folder / "recipe.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n\n[[passes]]\nname = "quantize"\nexclude = ["node_linear_1"]\n')
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(folder / "int8.onnx"),
                 "--target", "cpu", "--layerwise", "--calibration", str(samples.DIGITS_CALIB),
                 "--report", str(folder / "report")])
    assert code == 0
    return folder / "report"


@pytest.fixture(scope="module")
def layout(report_folder, tmp_path_factory) -> dict:
    """What the probe measured in a 1280 px wide window."""
    page = report_folder / "report.html"
    probed = tmp_path_factory.mktemp("probe") / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text  # the report itself runs nothing
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(f"--window-size={WIDTH},1000", "--virtual-time-budget=10000", "--dump-dom",
                    probed.as_uri()).stdout
    found = re.search(r'<pre id="layout-probe" hidden="">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), "the probe wrote nothing: scripts did not run"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def test_the_report_has_everything_to_look_at(report_folder):
    data = json.loads((report_folder / "report.json").read_text())
    assert data["passed"] is True
    assert data["models"]["reference"]["ops"].get("QuantizeLinear") is None
    assert data["models"]["candidate"]["ops"]["QuantizeLinear"] > 0
    layers = data["models"]["candidate"]["layers"]
    assert layers["node_linear_1"]["weights"] == "float" and layers["node_Conv_25"]["weights"] == "int8"
    html = (report_folder / "report.html").read_text()
    for plot in ("plot-validate-size", "plot-validate-latency", "plot-ops", "plot-dtype-bytes", "plot-size",
                 "plot-nodes", "plot-time", "plot-accuracy", "plot-layers"):
        assert f'<svg id="{plot}"' in html, plot
    assert "kept float (excluded by the exclude option)" in html


def test_every_part_is_visible_at_1280_px(layout):
    assert layout["inner_width"] == WIDTH
    assert layout["scroll_width"] <= WIDTH, "the page scrolls sideways"
    ids = [e["id"] for e in layout["elements"]]
    assert ids[:2] == ["verdict", "summary-table"] and sum(e["tag"] == "svg" for e in layout["elements"]) >= 9
    for element in layout["elements"]:
        name, page = element["id"], element["page"]
        assert element["shown"] and element["display"] != "none" and element["visibility"] == "visible" \
            and float(element["opacity"]) > 0, name
        assert page["width"] > 0 and page["height"] > 0, name
        assert page["left"] >= 0 and page["right"] <= WIDTH, f"{name} leaves the 1280 px page: {page}"
        assert element["on_top"], f"{name} is covered at its centre by a {element['hit']}"


def test_plot_labels_neither_overlap_nor_spill(layout):
    for element in (e for e in layout["elements"] if e["tag"] == "svg"):
        frame, texts = element["frame"], element["texts"]
        for t in texts:  # 1 px of slack for anti-aliasing
            assert t["left"] >= frame["left"] - 1 and t["right"] <= frame["right"] + 1 \
                and t["top"] >= frame["top"] - 1 and t["bottom"] <= frame["bottom"] + 1, \
                f"{element['id']}: label {t['text']!r} spills out of the plot"
        upright = [t for t in texts if not t["rotated"] and t["width"] > 0]
        for i, a in enumerate(upright):
            for b in upright[i + 1:]:
                overlap_x = min(a["right"], b["right"]) - max(a["left"], b["left"])
                overlap_y = min(a["bottom"], b["bottom"]) - max(a["top"], b["top"])
                assert overlap_x <= 1 or overlap_y <= 1, \
                    f"{element['id']}: labels {a['text']!r} and {b['text']!r} overlap"


def test_the_screenshot_shows_the_verdict_table_and_plots(report_folder, layout, tmp_path):
    from PIL import Image

    height = int(layout["scroll_height"]) + 10
    assert height < 16000, "the page is too long for one screenshot"
    shot = tmp_path / "report.png"
    _chromium(f"--window-size={WIDTH},{height}", f"--screenshot={shot}", (report_folder / "report.html").as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.width == WIDTH and image.height >= layout["scroll_height"]

    def region(element: dict) -> list[tuple[int, int, int]]:
        page = element["page"]
        crop = image.crop((int(page["left"]), int(page["top"]), int(page["right"]), int(page["bottom"])))
        return list(crop.getdata())

    def near(pixel: tuple[int, int, int], colour: tuple[int, int, int], tolerance: int = 16) -> bool:
        return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))

    elements = {e["id"]: e for e in layout["elements"]}
    badge = region(elements["verdict"])
    assert sum(near(p, PASSED_COLOUR) for p in badge) > 0.4 * len(badge), "the PASSED badge is not green"
    table = region(elements["summary-table"])
    assert sum(max(p) < 100 for p in table) > 0.005 * len(table), "the summary table shows no text"
    for element in (e for e in layout["elements"] if e["tag"] == "svg"):
        pixels = region(element)
        drawn = [p for p in pixels if min(p) < 235]
        colours = {(r // 32, g // 32, b // 32) for r, g, b in drawn}
        name = element["id"]
        assert len(drawn) > 0.01 * len(pixels), f"{name}: almost nothing drawn"
        assert len(colours) >= 3, f"{name}: fewer than three colours drawn"
        assert sum(near(p, DATA_COLOUR) for p in pixels) >= 4, f"{name}: no data drawn in the data colour"
