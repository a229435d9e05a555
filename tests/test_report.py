"""The HTML report in a real headless browser, and the report files the CLI writes."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxpress import samples
from onnxpress.cli import main

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it)")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out)]) == 0
    return out


def test_demo_writes_all_three_reports(demo_report):
    data = json.loads((demo_report / "report.json").read_text())
    assert data["passed"] is True and data["target"] == "cpu"
    assert [r["name"] for r in data["pipeline"]["records"]] == ["simplify", "quantize"]
    assert data["pipeline"]["records"][1]["kernels"]["int8"] == 5
    assert data["task_metric"]["name"] == "accuracy" and data["layerwise"]["shared"] > 5
    markdown = (demo_report / "report.md").read_text()
    assert markdown.startswith("# Validation on `cpu`: PASSED") and "| simplify |" in markdown


@needs_browser
def test_the_html_report_renders_its_table_and_plots(demo_report, tmp_path):
    page = (demo_report / "report.html").resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'<span id="verdict" class="verdict passed">PASSED</span>', html)
    rows = re.search(r'<table id="pipeline-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    assert rows.count("<tr>") == 2 and "<td>simplify</td>" in rows and "<td>quantize</td>" in rows
    assert "<td>5 / 0</td>" in rows  # the quantize pass's int8 / float kernels
    # input + two passes; two passes; every shared layer; reference + candidate
    marks = {"plot-size": 3, "plot-latency": 3, "plot-accuracy": 2, "plot-layers": 5, "plot-validate-latency": 2}
    for plot, count in marks.items():
        svg = re.search(rf'<svg id="{plot}".*?</svg>', html, re.S)
        assert svg, plot
        assert svg.group(0).count('class="bar"') + svg.group(0).count('class="point"') >= count, plot
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # self-contained
    shot = tmp_path / "report.png"
    result = _chromium(tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", page)
    assert result.returncode == 0 and shot.stat().st_size > 20_000


def test_run_with_a_target_writes_the_report(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n')
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(tmp_path / "o.onnx"),
                 "--target", "cpu", "--report", str(tmp_path / "rep"), "--calibration", str(samples.DIGITS_CALIB)])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["report.html", "report.json", "report.md"]
    assert "report.html" in capsys.readouterr().err


def test_run_on_the_edge_target_writes_the_bundle(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n')
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(tmp_path / "o.onnx"),
                 "--target", "edge"])
    assert code == 0
    assert (tmp_path / "o_bundle" / "model.ort").exists()
    assert "edge bundle:" in capsys.readouterr().err


def test_validate_cli_saves_and_checks_golden_outputs(tmp_path, capsys):
    golden = tmp_path / "g.npz"
    assert main(["validate", str(samples.DIGITS_MODEL), "--save-golden", str(golden),
                 "--data", str(samples.DIGITS_CALIB)]) == 0
    assert main(["validate", str(samples.DIGITS_MODEL), "--golden", str(golden), "--layerwise"]) == 0
    assert "verdict on target 'cpu': PASSED" in capsys.readouterr().out
