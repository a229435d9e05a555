import json
import subprocess
import sys

import numpy as np
import pytest

import onnxpress as ox
from onnxpress import samples
from onnxpress.cli import main

from conftest import ort_run

RECIPE = '[[passes]]\nname = "simplify"\n'


@pytest.fixture
def model_file(tmp_path, small_model):
    return ox.save(small_model, tmp_path / "in.onnx")


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    return path


def _one_error_line(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("onnxpress: error: ")
    for part in parts:
        assert part in err[0]
    return err[0]


def test_run_writes_the_simplified_model(tmp_path, model_file, recipe_file, capsys, small_model):
    before = model_file.read_bytes()
    out = tmp_path / "out.onnx"
    assert main(["run", str(model_file), "--recipe", str(recipe_file), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "simplify" in captured.out and f"saved {out}" in captured.out
    assert "[1/1] simplify ..." in captured.err and "[1/1] simplify done" in captured.err
    assert model_file.read_bytes() == before
    feed = {"x": np.ones((2, 4), np.float32)}
    np.testing.assert_allclose(ort_run(ox.load(out), feed)[0], ort_run(small_model, feed)[0], rtol=1e-6)
    assert len(list(ox.load(out).graph)) == 3


def test_run_then_validate_on_a_target(tmp_path, model_file, recipe_file, capsys):
    out = tmp_path / "out.onnx"
    code = main(["run", str(model_file), "--recipe", str(recipe_file), "-o", str(out), "--target", "cpu"])
    text = capsys.readouterr().out
    assert code == 0 and "verdict on target 'cpu': PASSED" in text


@pytest.mark.parametrize("argv, parts", [
    (["inspect", "missing.onnx"], ["missing.onnx: no such file"]),
    (["run", "{model}", "--recipe", "nope.toml", "-o", "{tmp}/o.onnx"], ["nope.toml: no such recipe file"]),
    (["run", "{model}", "--recipe", "{bad_recipe}", "-o", "{tmp}/o.onnx"], ["unknown pass 'shrink'"]),
    (["run", "{model}", "--recipe", "{recipe}", "-o", "{model}"], ["would overwrite the input model"]),
    (["run", "{notonnx}", "--recipe", "{recipe}", "-o", "{tmp}/o.onnx"], ["not an ONNX model"]),
    (["validate", "{model}", "--target", "mars"], ["unknown target 'mars'"]),
    (["validate", "{model}", "--data", "{tmp}/none.npz"], ["none.npz: no such file"]),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, model_file, recipe_file, capsys, argv, parts):
    (tmp_path / "bad.toml").write_text('[[passes]]\nname = "shrink"\n')
    (tmp_path / "text.onnx").write_text("hello")
    values = dict(model=model_file, tmp=tmp_path, recipe=recipe_file, bad_recipe=tmp_path / "bad.toml",
                  notonnx=tmp_path / "text.onnx")
    argv = [a.format(**values) for a in argv]
    assert main(argv) == 2
    _one_error_line(capsys, *parts)
    assert not (tmp_path / "o.onnx").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    _one_error_line(capsys, "invalid choice: 'frobnicate'")


def test_no_traceback_unless_debug(tmp_path):
    command = [sys.executable, "-m", "onnxpress.cli", "inspect", str(tmp_path / "x.onnx")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"onnxpress: error: {tmp_path / 'x.onnx'}: no such file"]
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_inspect_passes_and_targets(model_file, capsys):
    assert main(["inspect", str(model_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ops"]["MatMul"] == 1
    assert main(["passes", "--options"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("simplify") and "fold_limit_bytes (int) = 16777216" in out
    assert main(["targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["cpu", "cuda", "edge", "mcu"]


def test_validate_exit_code_follows_the_verdict(tmp_path, capsys):
    import onnx_ir as ir

    model = ox.load(samples.DIGITS_MODEL)
    broken = model.clone()
    weight = broken.graph.initializers["classifier.3.weight"]
    weight.const_value = ir.tensor(-weight.const_value.numpy(), name=weight.name)
    ox.save(broken, tmp_path / "broken.onnx")
    code = main(["validate", str(tmp_path / "broken.onnx"), "--reference", str(samples.DIGITS_MODEL),
                 "--data", str(samples.DIGITS_CALIB)])
    out = capsys.readouterr().out
    assert code == 1 and "verdict on target 'cpu': FAILED" in out and "cosine" in out
    code = main(["validate", str(samples.DIGITS_MODEL), "--reference", str(samples.DIGITS_MODEL), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["passed"] is True


def test_validate_judges_accuracy_from_labels_in_the_data_file(capsys):
    """The bundled eval file holds the input and the labels: the labels are left out of the
    feeds and, with --labels, give top-1 accuracy for both models and its drop."""
    data = str(samples.DIGITS_MODEL.parent / "digits_eval.npz")
    code = main(["validate", str(samples.DIGITS_MODEL), "--reference", str(samples.DIGITS_MODEL),
                 "--data", data, "--labels", "label", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["samples"] == 397
    assert report["task_metric"]["name"] == "accuracy"
    assert report["task_metric"]["candidate"] == pytest.approx(395 / 397)  # held-out accuracy of the sample
    assert report["task_metric"]["drop"] == 0.0
    assert main(["validate", str(samples.DIGITS_MODEL), "--labels", "label"]) == 2
    assert "--labels needs --data" in capsys.readouterr().err


def test_a_reader_that_goes_away_gets_no_traceback(monkeypatch, capsys):
    """`onnxpress inspect model.onnx | head -1`: stdout's reader has gone when we print."""
    import io
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    gone = io.TextIOWrapper(os.fdopen(write_end, "wb", buffering=0), write_through=True)
    with capsys.disabled():
        monkeypatch.setattr(sys, "stdout", gone)
        assert main(["inspect", str(samples.DIGITS_MODEL)]) == 1


def _report(folder) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_run_validate_judges_on_the_recipes_evaluation_data(tmp_path, capsys):
    """The bundled recipe names digits_eval.npz as [evaluation]: the verdict is judged there."""
    out = tmp_path / "out.onnx"
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(samples.RECIPE), "-o", str(out),
                 "--validate", "--report", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr()
    report = _report(tmp_path / "report")
    assert "evaluation data" in report["data_source"] and "digits_eval.npz" in report["data_source"]
    assert report["samples"] == 397  # the held-out digits (their labels are not fed)


def test_run_validate_holds_out_a_fifth_of_the_calibration_data(tmp_path, capsys, monkeypatch):
    """Without evaluation data the verdict comes from calibration samples the passes never got."""
    feeds = samples.digits_calibration().take(50)
    np.savez(tmp_path / "calib.npz", input=np.concatenate([f["input"] for f in feeds]))
    recipe = tmp_path / "r.toml"
    recipe.write_text('target = "cpu"\n[calibration]\nsource = "calib.npz"\n'
                      '[[passes]]\nname = "simplify"\n[[passes]]\nname = "quantize"\n')
    from onnxpress.pipeline import Pipeline

    seen = []
    run = Pipeline.run

    def spy(self, model, calibration=None, **kwargs):
        seen.append(len(calibration))
        return run(self, model, calibration, **kwargs)

    monkeypatch.setattr(Pipeline, "run", spy)
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(tmp_path / "o.onnx"),
                 "--validate", "--report", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr()
    report = _report(tmp_path / "report")
    assert seen == [40] and report["samples"] == 10
    assert "held-out split of the calibration data: 10 of 50 samples the passes never received" \
        in report["data_source"]


# Reflect padding by 8 needs more than 8 samples.
REFLECT_TEXT = """
<ir_version: 8, opset_import: ["" : 13]>
vad (float[N, T] audio) => (float[N, L] y) <int64[4] pads = {0, 8, 0, 8}> {
    y = Pad <mode = "reflect"> (audio, pads)
}
"""


@pytest.mark.parametrize("shape, part", [
    ("1x3x320x320", "argument --input-shape: '1x3x320x320' is not NAME=DIMS"),
    ("x=1xax3", "argument --input-shape: 'x=1xax3': the dims must be positive integers"),
    ("x=1x0", "argument --input-shape: 'x=1x0': every dim must be at least 1"),
])
def test_input_shape_mistakes_are_one_line_and_exit_2(model_file, capsys, shape, part):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(model_file), "--input-shape", shape])
    assert info.value.code == 2
    _one_error_line(capsys, part)


def test_input_shape_given_twice_or_not_fitting_is_named(model_file, capsys):
    assert main(["validate", str(model_file), "--input-shape", "x=1x4", "--input-shape", "x=2x4"]) == 2
    _one_error_line(capsys, "--input-shape: 'x' is given twice")
    assert main(["validate", str(model_file), "--input-shape", "x=1x5"]) == 2
    _one_error_line(capsys, "input shape x=1x5 has 5 on axis 1, the model wants 4")


def test_validate_and_run_take_input_shapes(tmp_path, recipe_file, capsys):
    """Generated inputs follow --input-shape, in validate and in run's verdict; without it the
    sizes found by trial are named in the report."""
    import onnx_ir as ir

    model = ox.save(ir.from_onnx_text(REFLECT_TEXT), tmp_path / "vad.onnx")
    assert main(["validate", str(model), "--reference", str(model), "--json", "--input-shape", "audio=2x100"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "inputs generated with the given shapes: audio=2x100" in report["notes"]
    assert main(["validate", str(model), "--reference", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert any(n.startswith("inputs generated with sequence length 16 (") for n in report["notes"])
    out = tmp_path / "out.onnx"
    assert main(["run", str(model), "--recipe", str(recipe_file), "-o", str(out), "--target", "cpu",
                 "--input-shape", "audio=1x50", "--report", str(tmp_path / "rep")]) == 0
    assert "note: inputs generated with the given shapes: audio=1x50" in capsys.readouterr().out


@pytest.mark.parametrize("target, passes, scale", [("mcu", ["simplify", "quantize"], "pow2"),
                                                   ("cpu", ["simplify", "quantize"], "free")])
def test_run_without_a_recipe_uses_the_targets_own(tmp_path, capsys, target, passes, scale):
    output = tmp_path / "out.onnx"
    code = main(["run", str(samples.DIGITS_MODEL), "--target", target, "-o", str(output),
                 "--calibration", str(samples.DIGITS_CALIB), "--report", str(tmp_path / "report")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"recipe: target '{target}' default recipe" in captured.err and " -> ".join(passes) in captured.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["passed"] and report["target"] == target
    assert [r["name"] for r in report["pipeline"]["records"]] == passes
    assert report["pipeline"]["records"][-1]["statistics"]["scale"] == scale


def test_run_needs_a_recipe_or_a_target(tmp_path, capsys):
    code = main(["run", str(samples.DIGITS_MODEL), "-o", str(tmp_path / "out.onnx")])
    assert code == 2
    assert "give --recipe, or --target" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_python_dash_m_runs_the_command_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "onnxpress", "inspect", "--bad-option", "x.onnx"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "onnxpress: error: unrecognized arguments: --bad-option"
    done = subprocess.run([sys.executable, "-m", "onnxpress", "targets"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "edge" in done.stdout


def test_run_judges_top1_accuracy_with_labels(tmp_path, capsys):
    from onnxpress import samples

    out = tmp_path / "q.onnx"
    code = main(["run", str(samples.DIGITS_MODEL), "--target", "cpu", "--calibration", str(samples.DIGITS_CALIB),
                 "--data", str(samples.DIGITS_EVAL), "--labels", "label", "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == 0
    row = next(line for line in printed.splitlines() if line.startswith("accuracy"))
    reference, candidate = (float(v) for v in row.split()[1:])
    assert reference > 0.95 and reference - candidate <= 0.01  # the cpu profile's metric_drop
    missing = main(["run", str(samples.DIGITS_MODEL), "--target", "cpu", "--calibration", str(samples.DIGITS_CALIB),
                    "--labels", "label", "-o", str(tmp_path / "never.onnx")])
    assert missing == 2 and not (tmp_path / "never.onnx").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "onnxpress: error: --labels needs --data to be one .npz file holding the labels")
