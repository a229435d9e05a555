"""Sweeps and the trial executor: three models x three recipes give the same table in-process and
on a local Ray with two workers; ``run_trials`` keeps order, names a failing item, and never
imports Ray for serial work."""
from __future__ import annotations

import math
import operator
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpress import sandbox, samples, trials
from onnxpress.cli import EXIT_BAD_INPUT, main
from onnxpress.errors import OnnxpressError
from onnxpress.sweep import TIMING_KEYS, sweep

SAMPLES = 40
RECIPES = {
    "simplify": '[[passes]]\nname = "simplify"\n',
    "dynamic": '[[passes]]\nname = "simplify"\n\n[[passes]]\nname = "quantize"\nmode = "dynamic"\n',
    "static": ('[[passes]]\nname = "simplify"\n\n[[passes]]\nname = "quantize"\nmode = "static"\n'
               'method = "minmax"\ncalibration_samples = 16\n'),
}
# Latency as the cpu profile measures it, with fewer runs: the suite's time is tight.
QUICK_TARGET = """name = "quick"
[runtime]
providers = ["CPUExecutionProvider"]
[latency]
warmup = 1
min_runs = 3
max_runs = 3
min_seconds = 0.0
"""


def _mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """features[N, 16] -> MatMul -> Add -> Relu -> MatMul -> Add -> y[N, 4]."""
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 4)), ("b2", (4,)))]
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _convnet(rng: np.random.Generator) -> onnx.ModelProto:
    """image[N, 3, 8, 8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[N, 5]."""
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("k", (8, 3, 3, 3)), ("kb", (8,)), ("g", (5, 8)), ("gb", (5,)))]
    nodes = [helper.make_node("Conv", ["image", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "g", "gb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "convnet",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """(models, recipes, data, target): three models, three recipes, one .npz feeding every model."""
    folder = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(7)
    models = [str(samples.DIGITS_MODEL)]
    for name, build in (("mlp", _mlp), ("convnet", _convnet)):
        onnx.save(build(rng), folder / f"{name}.onnx")
        models.append(str(folder / f"{name}.onnx"))
    digits = np.load(samples.DIGITS_CALIB)["input"][:SAMPLES]
    np.savez(folder / "data.npz", input=digits, features=rng.standard_normal((SAMPLES, 16)).astype(np.float32),
             image=rng.random((SAMPLES, 3, 8, 8), dtype=np.float32))
    recipes = []
    for name, text in RECIPES.items():
        (folder / f"{name}.toml").write_text(text, encoding="utf-8")
        recipes.append(str(folder / f"{name}.toml"))
    (folder / "quick.toml").write_text(QUICK_TARGET, encoding="utf-8")
    return models, recipes, str(folder / "data.npz"), str(folder / "quick.toml")


def _sweep(grid, out, workers: int):
    models, recipes, data, target = grid
    with sandbox.limited(sandbox.Limits(seconds=300)):  # as the CLI runs it
        return sweep(models, recipes, target=target, data=data, workers=workers, out=str(out))


@pytest.fixture(scope="module")
def serial(grid, tmp_path_factory):
    return _sweep(grid, tmp_path_factory.mktemp("serial"), workers=1)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray with two workers for the module, stopped at its end."""
    pytest.importorskip("ray", reason="Ray is not installed (the optional extra onnxpress[ray])")
    with trials.session(workers=2):
        yield


def test_every_cell_runs_in_process(serial):
    assert [(r["model"], r["recipe"]) for r in serial.rows] == [
        (m, r) for m in ("digits_cnn", "mlp", "convnet") for r in ("simplify", "dynamic", "static")]
    assert all(r["status"] in ("ok", "floor") for r in serial.rows), serial.table()
    for row in serial.rows:
        assert len(row["digest"]) == 64 and row["output_nodes"] > 0 and row["cosine"] is not None
        if row["status"] == "ok":
            assert (serial.out_folder and row["output"]) and row["latency_ms"] > 0 and row["speedup"] > 0
    assert {r["digest"] for r in serial.rows if r["recipe"] == "simplify"}.isdisjoint(
        r["digest"] for r in serial.rows if r["recipe"] == "static")
    table = serial.table()
    assert table.splitlines()[0].split()[:3] == ["model", "recipe", "size"] and "mlp" in table


def test_two_workers_on_a_local_ray_give_the_same_table(grid, serial, ray_session, tmp_path):
    parallel = _sweep(grid, tmp_path, workers=2)
    assert parallel.workers == 2
    assert parallel.deterministic_rows() == serial.deterministic_rows()
    assert [r["digest"] for r in parallel.rows] == [r["digest"] for r in serial.rows]
    assert all(not set(TIMING_KEYS) & set(row) for row in parallel.deterministic_rows())
    for row in parallel.rows:
        if row["status"] == "ok":
            assert (tmp_path / row["output"]).is_file()


def test_a_missing_recipe_is_one_line_and_exit_2(grid, tmp_path, capsys):
    models, recipes, _, _ = grid
    missing = tmp_path / "missing.toml"
    assert main(["sweep", models[0], "--recipes", recipes[0], str(missing), "--no-cache"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.toml" in err[0]


def test_serial_trials_keep_order_and_never_import_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails
    told = []
    assert trials.run_trials(math.sqrt, [16, 1, 9], progress=told.append) == [4.0, 1.0, 3.0]
    assert told == ["1/3 trials done: 16", "2/3 trials done: 1", "3/3 trials done: 9"]
    with pytest.raises(OnnxpressError, match=r"--workers 2 needs Ray: pip install 'onnxpress\[ray\]'"):
        trials.run_trials(math.sqrt, [1, 4], workers=2)


def test_a_failing_trial_names_its_item():
    with pytest.raises(trials.TrialError, match=r"trial -1 failed: ValueError: math domain error") as caught:
        trials.run_trials(math.sqrt, [4, -1, 9])
    assert caught.value.item == -1 and caught.value.kind == "ValueError"


def test_ray_trials_keep_order_and_name_a_failing_item(ray_session):
    items = list(range(20, 0, -1))
    assert trials.run_trials(math.factorial, items, workers=2) == [math.factorial(i) for i in items]
    with pytest.raises(trials.TrialError, match=r"candidate -1 failed: ValueError: math domain error"):
        trials.run_trials(math.sqrt, [4, -1, 9], workers=2, what="candidate")


def test_trials_run_inside_the_callers_limits(ray_session):
    assert trials.run_trials(operator.call, [trials.in_trial]) == [True] and not trials.in_trial()
    limits = sandbox.Limits(seconds=77)
    with sandbox.limited(limits):  # a Ray worker re-enters them around each trial
        assert trials.run_trials(operator.call, [sandbox.current, trials.in_trial], workers=2) == [limits, True]


def test_data_without_code_feeds_each_model_its_own_way(grid, tmp_path, capsys):
    """One folder of images, sized and coloured for each model: the digits CNN reads them grey at
    8x8, the convnet as RGB; the options reach the sweep as they reach `run`."""
    from PIL import Image

    models, recipes, _, target = grid
    images = tmp_path / "images"
    images.mkdir()
    digits = np.load(samples.DIGITS_CALIB)["input"][:12, 0]
    for index, pixels in enumerate(digits):  # 16x16 files: the sweep resizes them for each model
        Image.fromarray((pixels * 255).astype(np.uint8)).resize((16, 16)).save(images / f"{index:02}.png")
    code = main(["sweep", models[0], models[2], "--recipes", recipes[2], "--data", str(images), "--scale",
                 str(1 / 255), "--target", target, "--no-cache", "--json", "-q"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    import json

    rows = json.loads(printed.out)["rows"]
    assert [(r["model"], r["status"]) for r in rows] == [("digits_cnn", "ok"), ("convnet", "ok")]
    assert all(str(images) in r["cosine_on"] for r in rows), [r["cosine_on"] for r in rows]


def test_sweep_data_that_fits_no_model_input_is_one_line(grid, tmp_path, capsys):
    models, recipes, _, target = grid
    assert main(["sweep", models[0], "--recipes", recipes[0], "--data", str(tmp_path / "nothing.npz"),
                 "--no-cache"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines() == [
        f"onnxpress: error: {tmp_path / 'nothing.npz'}: no such data file or folder"]
