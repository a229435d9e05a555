"""The report files the CLI writes, and what the report shows of the model before and after.

The page in a real browser (layout at 1280 px, the screenshot) is ``test_report_browser.py``.
"""
import json
import re

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress import samples
from onnxpress.cli import main
from onnxpress.validate import validate

# y = (x @ W1) @ W2 in float, and a candidate that stores W1 in int8 behind DequantizeLinear (its
# input quantized to uint8) and W2 in float16 behind a Cast; `scale` is an activation x activation
# MatMul, which has no stored weight.
REFERENCE_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
reference (float[N, 4] x) => (float[N, 3] y, float[N, N] gram)
<float[4, 4] w1 = {0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 1.0, 2.0, 0.1, -0.3, 0.6, 0.2, 0.4, -0.8, 1.2},
 float[4, 3] w2 = {1.0, 0.5, -0.5, 0.25, -1.0, 0.75, 0.5, 0.5, 0.5, -0.25, 1.5, 1.0}>
{
    [first] h = MatMul(x, w1)
    [second] y = MatMul(h, w2)
    xt = Transpose<perm = [1, 0]>(x)
    [scale] gram = MatMul(x, xt)
}
"""
CANDIDATE_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
candidate (float[N, 4] x) => (float[N, 3] y, float[N, N] gram)
<int8[4, 4] w1_q = {{50, -100, 25, 127, 75, -50, -25, 100, 127, 10, -30, 60, 20, 40, -80, 120}},
 float w1_s = {{0.015}}, int8 w1_z = {{0}}, float x_s = {{0.05}}, uint8 x_z = {{128}},
 float16[4, 3] w2_h = {{{w2_bits}}}>
{{
    xq = QuantizeLinear(x, x_s, x_z)
    xd = DequantizeLinear(xq, x_s, x_z)
    w1 = DequantizeLinear(w1_q, w1_s, w1_z)
    [first] h = MatMul(xd, w1)
    w2 = Cast<to = 1>(w2_h)
    [second] y = MatMul(h, w2)
    xt = Transpose<perm = [1, 0]>(x)
    [scale] gram = MatMul(x, xt)
}}
""".format(w2_bits=", ".join(str(b) for b in np.array([1.0, 0.5, -0.5, 0.25, -1.0, 0.75, 0.5, 0.5, 0.5, -0.25, 1.5, 1.0],
                                                      np.float16).view(np.uint16)))  # float16 data is written as its bits


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out)]) == 0
    return out


def test_demo_writes_all_three_reports(demo_report):
    data = json.loads((demo_report / "report.json").read_text())
    assert data["passed"] is True and data["target"] == "cpu"
    assert [r["name"] for r in data["pipeline"]["records"]] == ["simplify", "quantize"]
    layers = data["models"]["candidate"]["layers"]
    assert layers and all(layer["weights"] == "int8" for layer in layers.values())
    assert data["pipeline"]["records"][1]["kernels"]["int8"] == len(layers)  # every layer runs an int8 kernel
    assert all(layer["weights"] == "float" for layer in data["models"]["reference"]["layers"].values())
    assert data["task_metric"]["name"] == "accuracy" and data["layerwise"]["shared"] >= 3
    markdown = (demo_report / "report.md").read_text()
    assert markdown.startswith("# Validation on `cpu`: PASSED") and "| simplify |" in markdown
    assert "## Model before and after" in markdown and re.search(r"^\| QuantizeLinear \| 0 \| \d+ \| new \|$",
                                                                 markdown, re.M)


def test_the_demo_page_has_its_tables_and_plots(demo_report):
    page = (demo_report / "report.html").read_text()
    assert re.search(r'<span id="verdict" class="verdict passed">PASSED</span>', page)
    rows = re.search(r'<table id="pipeline-table">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    assert rows.count("<tr>") == 2 and "<td>simplify</td>" in rows and "<td>quantize</td>" in rows
    data = json.loads((demo_report / "report.json").read_text())
    layers = len(data["models"]["candidate"]["layers"])
    assert f'<td class="num">{layers} / 0</td>' in rows  # the quantize pass's int8 / float kernels
    # input + two passes; two passes; input + judged passes; every shared layer; two models; op types
    marks = {"plot-size": 3, "plot-nodes": 3, "plot-time": 2, "plot-latency": 3, "plot-accuracy": 3,
             "plot-layers": data["layerwise"]["shared"], "plot-validate-latency": 2,
             "plot-ops": 2 * len(data["models"]["candidate"]["ops"]), "plot-dtype-bytes": 4}
    for plot, count in marks.items():
        svg = re.search(rf'<svg id="{plot}".*?</svg>', page, re.S)
        assert svg, plot
        assert svg.group(0).count('class="bar"') + svg.group(0).count('class="point"') >= count, plot
    assert ">QuantizeLinear (new)<" in page  # the op the candidate added, tagged in the op histogram
    table = re.search(r'<table id="precision-table">.*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    assert table.count("<tr>") == layers and table.count("<td>int8 / uint8</td>") == layers
    assert "GPTQ-fitted weights" in table or "quantize:" not in table
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_the_report_shows_each_layers_precision(tmp_path):
    """Weights behind DequantizeLinear and Cast are read at their stored dtype; a MatMul of two
    activations has no stored weight and is no layer; the op histogram marks what appeared."""
    reference, candidate = ir.from_onnx_text(REFERENCE_TEXT), ir.from_onnx_text(CANDIDATE_TEXT)
    data = [{"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}]
    report = validate(candidate, reference, data=data, measure_latency=False, measure_memory=False)
    models = report.models
    assert models["reference"]["layers"] == {"first": {"op": "MatMul", "weights": "float", "activations": "float"},
                                             "second": {"op": "MatMul", "weights": "float", "activations": "float"}}
    assert models["candidate"]["layers"] == {"first": {"op": "MatMul", "weights": "int8", "activations": "uint8"},
                                             "second": {"op": "MatMul", "weights": "float16", "activations": "float"}}
    assert models["candidate"]["ops"]["DequantizeLinear"] == 2 and "Cast" not in models["reference"]["ops"]
    assert models["candidate"]["bytes_by_dtype"]["int8"] == 16 + 1
    assert models["candidate"]["bytes_by_dtype"]["float16"] == 24
    assert json.loads(report.to_json())["models"]["candidate"]["nodes"] == 8
    page = report.to_html()
    for op in ("QuantizeLinear", "DequantizeLinear", "Cast"):
        assert f">{op} (new)<" in page, op
    assert "<td>float / float</td><td>int8 / uint8</td>" in page
    assert "<td>float / float</td><td>float16 / float</td>" in page and ">scale<" not in page
    markdown = report.to_markdown()
    assert "| first | MatMul | float / float | int8 / uint8 | - |" in markdown
    assert "| float16 | 0B | 24B |" in markdown


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
