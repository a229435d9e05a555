import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import registry
from onnxpress.errors import PassError, PipelineError
from onnxpress.pipeline import ProgressEvent

from conftest import ort_run


class _ScaleWeights(ox.Pass, ir.passes.InPlacePass):
    """Multiplies every float initializer by ``factor`` (a lossy edit for tests)."""

    def __init__(self, *, factor: float = 1.01, lossless: bool = False) -> None:
        super().__init__()
        self.factor = factor
        self.lossless = lossless

    def call(self, model):
        count = 0
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype == np.float32:
                value.const_value = ir.tensor(array * np.float32(self.factor), name=value.name)
                count += 1
        return ox.PassResult(model, modified=count > 0, statistics={"scaled": count})


class _Breaker(ir.passes.InPlacePass):
    """Rewires the first node to read a value no one produces: the checker must catch it."""

    def call(self, model):
        node = next(iter(model.graph))
        node.replace_input_with(0, ir.Value(name="ghost"))
        return ir.passes.PassResult(model, modified=True)


class _Refuses(ir.passes.InPlacePass):
    def requires(self, model):
        raise ir.passes.PreconditionError("refuses: needs a Conv")

    def call(self, model):
        return ir.passes.PassResult(model, modified=False)


class _Fails(ir.passes.InPlacePass):
    def call(self, model):
        raise PassError("fails: node 'h' cannot be handled")


def test_records_describe_each_pass(small_model):
    result = ox.Pipeline([ox.passes.Simplify(), _ScaleWeights(factor=2.0)]).run(small_model)
    simplify, scale = result.records
    assert simplify.name == "simplify" and simplify.modified and simplify.checked
    assert simplify.nodes_before == 6 and simplify.nodes_after < 6
    assert simplify.statistics["engine"] == "onnxsim"
    assert simplify.accuracy["y"].max_abs <= 1e-6
    assert scale.name == "_ScaleWeights" and scale.statistics == {"scaled": scale.statistics["scaled"]}
    assert scale.params_before == scale.params_after and scale.bytes_before == scale.bytes_after
    assert scale.cosine is not None and scale.max_abs > 0.1  # doubled weights move the output
    assert result.golden_source == "generated"
    table = result.table()
    assert "simplify" in table and "_ScaleWeights" in table


def test_the_input_model_is_left_unchanged(small_model):
    feed = {"x": np.ones((1, 4), np.float32)}
    before = ort_run(small_model, feed)[0]
    nodes = [n.op_type for n in small_model.graph]
    ox.Pipeline([ox.passes.Simplify(), _ScaleWeights(factor=3.0)]).run(small_model)
    assert [n.op_type for n in small_model.graph] == nodes
    np.testing.assert_array_equal(ort_run(small_model, feed)[0], before)


def test_golden_outputs_come_from_calibration_when_given(small_model, rng):
    calib = [{"x": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(5)]
    result = ox.Pipeline([ox.passes.Simplify()], golden_samples=2).run(small_model, calibration=calib)
    assert result.golden_source == "calibration"
    assert result.records[0].accuracy["y"].elements == 2 * 3 * 3


def test_a_lossless_pass_that_changes_outputs_fails_the_run(small_model):
    with pytest.raises(PipelineError, match=r"pass '_ScaleWeights' is lossless but changed output 'y'"):
        ox.Pipeline([_ScaleWeights(factor=1.01, lossless=True)]).run(small_model)
    # Within tolerance it passes: a change of 1e-7 is float rounding.
    ox.Pipeline([_ScaleWeights(factor=1.0 + 1e-7, lossless=True)]).run(small_model)


def test_the_checker_names_the_pass_that_broke_the_model(small_model):
    with pytest.raises(PipelineError, match=r"pass '_Breaker' fails the ONNX checker"):
        ox.Pipeline([ox.passes.Simplify(), _Breaker()]).run(small_model)


def test_pass_failures_are_reported_with_the_pass(small_model):
    with pytest.raises(PipelineError, match=r"pass '_Refuses' cannot run on this model: .*needs a Conv"):
        ox.Pipeline([_Refuses()]).run(small_model)
    with pytest.raises(PassError, match="node 'h'"):
        ox.Pipeline([_Fails()]).run(small_model)


def test_checks_can_be_disabled(small_model):
    result = ox.Pipeline([_Breaker()], check=False, golden_samples=0).run(small_model)
    assert result.records[0].checked is False and result.records[0].accuracy is None
    assert result.golden_source is None


def test_progress_reports_start_and_end_of_every_pass(small_model):
    events: list[ProgressEvent] = []
    ox.Pipeline([ox.passes.Simplify(), _ScaleWeights()]).run(small_model, progress=events.append)
    assert [(e.index, e.total, e.name, e.record is None) for e in events] == [
        (0, 2, "simplify", True), (0, 2, "simplify", False),
        (1, 2, "_ScaleWeights", True), (1, 2, "_ScaleWeights", False)]


def test_bad_calibration_is_named(small_model):
    with pytest.raises(ox.DataError, match=r"sample 0: missing input\(s\) \['x'\]"):
        ox.Pipeline([ox.passes.Simplify()]).run(small_model, calibration=[{"y": np.zeros((1, 4), np.float32)}])
    with pytest.raises(ox.DataError, match=r"input 'x' wants float32 \[N,4\], the data gives float64 \[1,4\]"):
        ox.Pipeline([ox.passes.Simplify()]).run(small_model, calibration=[{"x": np.zeros((1, 4))}])
    with pytest.raises(ox.DataError, match=r"the data gives \[4\]"):
        ox.Pipeline([ox.passes.Simplify()]).run(small_model, calibration=[{"x": np.zeros(4, np.float32)}])


class _NamedScale(_ScaleWeights):
    name = "scale_weights"


def test_declared_names_key_the_registry_and_the_records(small_model):
    registry.register(_NamedScale)
    try:
        assert registry.get("scale_weights") is _NamedScale
        result = ox.Pipeline([registry.create("scale_weights", {"factor": 2.0})]).run(small_model)
        assert result.records[0].name == "scale_weights"
        assert result.records[0].statistics == {"scaled": 3}  # three float initializers
    finally:
        registry._extra.pop("scale_weights")


def test_non_passes_are_refused():
    with pytest.raises(TypeError, match="not an onnx_ir pass"):
        ox.Pipeline([lambda model: model])


def test_a_target_this_machine_lacks_is_checked_on_the_cpu(small_model, caplog):
    """Compressing for CUDA on a machine without it works; the result says where it was checked."""
    from onnxpress import runtime

    if "CUDAExecutionProvider" in runtime.available_providers():
        pytest.skip("this machine has CUDA")
    result = ox.Pipeline([ox.passes.Simplify()], target="cuda").run(small_model)
    assert result.checked_on == "cpu" and result.records[0].checked
    assert "the pipeline checks and measures on the CPU" in caplog.text


def test_an_input_declared_without_a_shape_gets_the_rank_of_the_data(tmp_path, small_model, rng):
    """ONNX Runtime runs an input declared without a shape, the ONNX checker refuses it: the
    pipeline checks, and returns, the model with the data's rank and every dim unknown."""
    import onnx

    small_model.graph.inputs[0].shape = None
    path = ox.save(small_model, tmp_path / "no_shape.onnx")
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(str(path), full_check=True)
    model = ox.load(path)
    calib = [{"x": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(5)]
    result = ox.Pipeline([ox.passes.Simplify()], target="cpu").run(model, calibration=calib)
    assert model.graph.inputs[0].shape is None  # the caller's model is left as it was
    shape = result.model.graph.inputs[0].shape
    assert shape is not None and len(shape) == 2 and not any(isinstance(d, int) for d in shape)
    assert result.records[0].checked and result.golden_source == "calibration"
    out = ox.save(result.model, tmp_path / "out.onnx")
    onnx.checker.check_model(str(out), full_check=True)
    feed = {"x": np.ones((7, 4), np.float32)}  # any size still runs
    np.testing.assert_allclose(ort_run(ox.load(out), feed)[0], ort_run(small_model, feed)[0], rtol=1e-6)
    # a given shape gives the rank too; without either there is none to give
    given = ox.Pipeline([ox.passes.Simplify()], input_shapes={"x": (2, 4)}).run(model)
    assert len(given.model.graph.inputs[0].shape) == 2
    with pytest.raises(ox.DataError, match=r"input 'x' declares no shape, which the ONNX checker refuses: give "
                                           r"calibration data"):
        ox.Pipeline([ox.passes.Simplify()]).run(model)
    unchecked = ox.Pipeline([ox.passes.Simplify()], check=False, golden_samples=0).run(model)
    assert unchecked.model.graph.inputs[0].shape is None  # nothing to read a rank from, nothing checked


class _Noted(_ScaleWeights):
    name = "noted"

    def call(self, model):
        result = super().call(model)
        result.statistics["note"] = "a size method on this target"
        return result


def test_a_pass_note_reaches_the_table_and_the_notes(small_model):
    result = ox.Pipeline([_Noted(factor=1.0001), _ScaleWeights(factor=1.0001)]).run(small_model)
    assert result.notes() == ["noted: a size method on this target"]
    assert result.table().splitlines()[-1] == "note: noted: a size method on this target"


def test_a_bfloat16_model_is_checked_with_onnx_reference_on_the_cpu():
    """ONNX Runtime's CPU provider has no bfloat16 Gemm: the pipeline's checks run onnx.reference,
    and the outputs still agree with the float32 model's."""
    from onnxpress import samples

    model = ox.load(samples.DIGITS_MODEL)
    result = ox.Pipeline([ox.passes.FP16(dtype="bfloat16")], latency_runs=5).run(
        model, calibration=samples.digits_calibration())
    record = result.records[0]
    assert any(n.outputs[0].dtype == ir.DataType.BFLOAT16 for n in result.model.graph)
    assert record.cosine > 0.999 and record.latency_ms is None  # no timing without a session
    with pytest.raises(ox.runtime.RunFailed, match="no bfloat16 kernels: latency"):
        ox.runtime.Runner("cpu").latency(result.model, samples.digits_calibration().take(1)[0])
