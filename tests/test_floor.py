"""The accuracy floor acts: a lossy pass below it gets its remedy, else the run fails naming the
pass and nothing is saved; accuracy is judged per channel group where an output mixes scales."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress.cli import main
from onnxpress.errors import AccuracyFloorError
from onnxpress.metrics import compare

# A detector head: boxes (in hundreds) and class scores (in [0, 1]) concatenated in one output,
# as YOLO exports do. One int8 scale for the Concat zeroes every score.
DETECTOR = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 16, 16] x) => (float[1, 12, 256] out) {
    boxes = Conv <pads = [1, 1, 1, 1]> (x, wb, bb)
    logits = Conv <pads = [1, 1, 1, 1]> (x, ws, bs)
    scores = Sigmoid(logits)
    both = Concat <axis = 1> (boxes, scores)
    out = Reshape(both, shape)
}
"""


def _detector() -> ir.Model:
    model = ir.from_onnx_text(DETECTOR)
    rng = np.random.default_rng(0)
    arrays = {"wb": rng.standard_normal((4, 3, 3, 3)) * 40, "bb": np.full(4, 300.0),
              "ws": rng.standard_normal((8, 3, 3, 3)) * 0.5, "bs": np.full(8, -2.0)}
    values = {v.name: v for node in model.graph for v in node.inputs if v is not None}
    for name, array in arrays.items():
        values[name].const_value = ir.tensor(array.astype(np.float32), name=name)
        model.graph.register_initializer(values[name])
    values["shape"].const_value = ir.tensor(np.array([1, 12, 256], np.int64), name="shape")
    model.graph.register_initializer(values["shape"])
    return model


def _feeds(count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


class _Noise(ox.Pass, ir.passes.InPlacePass):
    """Adds large noise to every float weight (a lossy pass with no remedy)."""

    name = "noise"

    def call(self, model):
        rng = np.random.default_rng(0)
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype == np.float32:
                noisy = array + rng.standard_normal(array.shape).astype(np.float32) * 50
                value.const_value = ir.tensor(noisy, name=value.name)
        return ox.PassResult(model, modified=True, statistics={})


def test_a_score_head_destroyed_behind_a_high_overall_cosine_is_seen():
    model, broken = _detector(), _detector()
    for value, array in ((broken.graph.initializers["ws"], np.zeros((8, 3, 3, 3))),
                         (broken.graph.initializers["bs"], np.full(8, -30.0))):
        value.const_value = ir.tensor(array.astype(np.float32), name=value.name)  # every score ~0
    feeds = _feeds(8)
    stats = compare(ox.runtime.run_model(model, feeds), ox.runtime.run_model(broken, feeds))["out"]
    assert stats.cosine > 0.999  # what an overall cosine says
    assert stats.group_cosine < 0.2 and stats.worst_group == "axis 1 [4:12]"  # the scores are gone
    report = ox.validate(broken, reference=model, data=feeds, measure_latency=False, measure_memory=False)
    assert not report.passed
    assert any("output 'out' axis 1 [4:12]: cosine" in f for f in report.failures), report.failures


def test_quantize_keeps_a_concat_of_boxes_and_scores_float():
    """One int8 scale for boxes in hundreds and scores in [0, 1] zeroes the scores (ONNX
    Runtime's own quantizer does that); the Concat stays float and says why."""
    model = _detector()
    feeds = _feeds(40)
    result = ox.Pipeline([ox.passes.Quantize()], accuracy_floor=0).run(model, feeds[:32])
    floating = result.records[0].statistics["float_nodes"]
    assert any("Concat of inputs whose ranges differ" in why for why in floating.values()), floating
    stats = compare(ox.runtime.run_model(model, feeds[32:]), ox.runtime.run_model(result.model, feeds[32:]))["out"]
    assert stats.group_cosine > 0.999 and stats.cosine > 0.999
    assert result.records[0].statistics["quantized_nodes"] >= 3  # the convolutions are int8


def test_quantize_below_the_floor_is_remedied():
    model = _detector()
    result = ox.Pipeline([ox.passes.Quantize()], accuracy_floor=0.99999).run(model, _feeds(32))
    record = result.records[0]
    assert record.floor["met"] and record.floor["cosine"] >= 0.99999
    assert "held-out data" in record.floor["data"]
    assert record.statistics["remedy"]["before"]["cosine"] < 0.99999
    assert record.statistics["fallback"]["target_met"]


def test_a_pass_with_no_remedy_below_the_floor_fails_naming_it(small_model):
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)} for i in range(12)]
    with pytest.raises(AccuracyFloorError, match="pass 'noise' breaks the accuracy floor: output 'y' cosine") as err:
        ox.Pipeline([ox.passes.Simplify(), _Noise()], target="cpu").run(small_model, feeds)
    assert "the pass has no remedy" in str(err.value)
    assert [r.name for r in err.value.result.records] == ["simplify", "noise"]
    # without a target there is no floor unless one is set
    assert ox.Pipeline([_Noise()]).run(small_model, feeds).records[0].floor is None


def test_the_cli_writes_nothing_below_the_floor_unless_asked(tmp_path, capsys, monkeypatch, small_model):
    from onnxpress import registry

    monkeypatch.setitem(registry._extra, "noise", _Noise)
    model = ox.save(small_model, tmp_path / "in.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((24, 4)).astype(np.float32))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[calibration]\nsource = "calib.npz"\n[[passes]]\nname = "noise"\n')
    out = tmp_path / "out.onnx"
    assert main(["run", str(model), "--recipe", str(recipe), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("onnxpress: error: pass 'noise' breaks the accuracy floor"), err
    assert not out.exists()
    assert main(["run", str(model), "--recipe", str(recipe), "-o", str(out), "--keep-failed"]) == 1
    assert out.exists() and "--keep-failed" in capsys.readouterr().err
    recipe.write_text('[pipeline]\naccuracy_floor = 0.0\n[calibration]\nsource = "calib.npz"\n'
                      '[[passes]]\nname = "noise"\n')
    assert main(["run", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "off.onnx")]) == 0


class _ScaleRegression(ox.Pass, ir.passes.InPlacePass):
    """Scales the regression weights ``w`` (a lossy pass with no remedy)."""

    name = "scale_regression"

    def __init__(self, *, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def call(self, model):
        value = model.graph.initializers["w"]
        value.const_value = ir.tensor(value.const_value.numpy() * np.float32(self.factor), name="w")
        return ox.PassResult(model, modified=True, statistics={})


def test_one_value_per_row_is_held_to_a_relative_error_of_one_minus_the_floor():
    """Predictions moved by 40 % keep a cosine of 1 per sample; the floor holds them to a
    relative error of 1 - 0.99, and passes' searches see the same figure."""
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    regressor (float[N, 4] x) => (float[N, 1] y) <float[4, 1] w = {0.3, 0.2, 0.5, 0.1}> { y = MatMul(x, w) }
    """)
    rng = np.random.default_rng(0)
    feeds = [{"x": np.abs(rng.standard_normal((1, 4))).astype(np.float32)} for _ in range(12)]
    with pytest.raises(AccuracyFloorError, match=r"output 'y' relative error 0.4 > 0.01 \(1 - floor 0.99") as err:
        ox.Pipeline([_ScaleRegression(factor=0.6)], target="cpu").run(model, feeds)
    floor = err.value.result.records[0].floor
    assert floor["measure"] == "relative error" and floor["cosine"] == pytest.approx(0.6, abs=1e-4)
    assert err.value.result.records[0].accuracy["y"].cosine == pytest.approx(1.0)  # blind
    kept = ox.Pipeline([_ScaleRegression(factor=1.0 + 1e-6)], target="cpu").run(model, feeds)
    assert kept.records[0].floor["met"] and kept.records[0].floor["cosine"] > 0.9999
    context = ox.PassContext(runner=ox.runtime.Runner("cpu"), evaluation=ox.calibration.from_feeds(feeds))
    moved = _ScaleRegression(factor=0.6)(model.clone()).model
    assert context.score(context.outputs(model), moved)["cosine"] == pytest.approx(0.6, abs=1e-4)


class _Restore(ox.Pass, ir.passes.FunctionalPass):
    """A pass that recovers all the accuracy lost before it (gives back the teacher's weights)."""

    name = "restore"
    recovers = True

    def call(self, model):
        teacher = self.context.teacher
        restored = model.clone()
        for name, value in restored.graph.initializers.items():
            value.const_value = teacher.graph.initializers[name].const_value
        return ox.PassResult(restored, modified=True, statistics={})


def test_a_lossy_pass_followed_by_a_recovering_one_is_judged_after_the_recovery():
    model, feeds = _detector(), _feeds(8)
    result = ox.Pipeline([_Noise(), _Restore()], accuracy_floor=0.999).run(model, feeds)
    noise, restore = result.records
    assert "judged after 'restore'" in noise.floor["deferred"] and noise.floor["cosine"] < 0.999
    assert restore.floor["met"] and restore.floor["cosine"] > 0.99999
    with pytest.raises(AccuracyFloorError, match="pass 'noise' breaks the accuracy floor"):
        ox.Pipeline([_Noise()], accuracy_floor=0.999).run(model, feeds)
