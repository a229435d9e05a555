"""``onnxpress demo``: the win it shows, the second example, and the README's copy of its output."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import onnxpress as ox
from onnxpress import samples

README = Path(__file__).resolve().parent.parent / "README.md"


def _demo(folder: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "onnxpress.cli", "demo", "--out", str(folder), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def _row(text: str, name: str) -> tuple[str, str]:
    found = re.search(rf"^{name}\s+(\S+(?: MB| ms)?)\s+(\S+(?: MB| ms)?)\s*$", text, re.M)
    assert found, name
    return found.group(1), found.group(2)


def _pass_row(text: str, name: str) -> list[str]:
    found = re.search(rf"^{name}\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s*$", text, re.M)
    assert found, name
    return list(found.groups())  # nodes, weights, params, int8/float, max-abs, cosine


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    return folder, _demo(folder)


def test_demo_shows_the_win(demo):
    folder, result = demo
    out = result.stdout
    assert "verdict on target 'cpu': PASSED" in out
    size = [float(v.split()[0]) for v in _row(out, "size")]
    assert size[1] <= 0.3 * size[0]
    accuracy = [float(v) for v in _row(out, "accuracy")]
    assert accuracy[0] > 0.98 and accuracy[0] - accuracy[1] <= 0.005
    assert re.search(r"^compressed: 0\.\d\dx the size, \d\.\d\dx the latency \([\d.]+x as fast\), accuracy "
                     r"[\d.]+ -> [\d.]+ \([+-]\d\.\d\d points\)$", out, re.M)
    assert f"report: {folder / 'report.html'}" in result.stderr
    saved = ox.inspect(folder / "digits_mlp.onnx")
    assert saved.ops.get("QuantizeLinear", 0) >= 3 and saved.ops.get("DequantizeLinear", 0) >= 6  # 3 Gemm in int8
    assert (folder / "digits_mlp.onnx").stat().st_size < 0.3 * samples.DIGITS_MLP.stat().st_size


def test_readme_shows_what_the_demo_prints(demo):
    """Every figure of the README's demo section that does not depend on the machine is this
    run's (latency, wall time and the allocator's peak memory are one run's; they vary)."""
    _, result = demo
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    shown = section.split("```\n", 2)[2].split("```", 1)[0]  # the block after the commands' block
    out = result.stdout
    for name in ("size", "accuracy"):
        assert _row(shown, name) == _row(out, name), name
    for name in ("simplify", "quantize"):
        ours, theirs = _pass_row(out, name), _pass_row(shown, name)
        assert theirs[:4] == ours[:4], name  # nodes, weights, params, int8/float
        assert float(theirs[5]) == pytest.approx(float(ours[5]), abs=2e-6), name
    for line in ("top-1 agreement", "judged on", "verdict on target"):
        assert re.search(rf"^{line}.*$", shown, re.M).group(0) == re.search(rf"^{line}.*$", out, re.M).group(0)
    ratio = re.search(r"^compressed: (\S+)x the size", shown, re.M).group(1)
    assert ratio == re.search(r"^compressed: (\S+)x the size", out, re.M).group(1)


def test_demo_runs_the_tiny_cnn_as_a_second_example(tmp_path):
    result = _demo(tmp_path, "--model", "cnn")
    assert "verdict on target 'cpu': PASSED" in result.stdout
    accuracy = [float(v) for v in _row(result.stdout, "accuracy")]
    assert accuracy[0] > 0.95 and accuracy[0] - accuracy[1] <= 0.005
    assert ox.inspect(tmp_path / "digits_cnn.onnx").ops["Conv"] == 3
