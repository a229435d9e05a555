import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import _proto
from onnxpress.errors import PassError
from onnxpress.passes import simplify as simplify_module

from conftest import onnx_check, ort_run

BN_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
convbn (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y)
<float[3, 2, 3, 3] w = {%s}, float[3] scale = {1.5, 0.5, 2.0}, float[3] bias = {0.1, -0.2, 0.3},
 float[3] mean = {0.05, -0.1, 0.2}, float[3] var = {0.9, 1.1, 1.3}>
{
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    y = BatchNormalization (c, scale, bias, mean, var)
}
""" % ", ".join(f"{v:.3f}" for v in np.linspace(-1, 1, 54))


def _ops(model):
    return [n.op_type for n in model.graph]


def test_folds_constants_and_removes_dead_nodes(small_model, rng):
    simplify = ox.passes.Simplify()
    result = simplify(small_model.clone())
    assert result.modified
    assert _ops(result.model) == ["MatMul", "Add", "Relu"]
    assert result.statistics["engine"] == "onnxsim" and result.statistics["nodes_removed"] == 3
    assert not hasattr(simplify, "statistics")  # the result carries them; the pass keeps no state
    feed = {"x": rng.standard_normal((5, 4)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(small_model, feed)[0], rtol=1e-6, atol=1e-6)
    onnx_check(result.model)


@pytest.mark.parametrize("engine", ["auto", "onnx-ir"])
def test_fuses_batch_norm_into_conv(rng, engine):
    model = ir.from_onnx_text(BN_TEXT)
    result = ox.passes.Simplify(engine=engine)(model.clone())
    assert _ops(result.model) == ["Conv"]
    assert result.statistics["ops_removed"] == {"BatchNormalization": 1}
    feed = {"x": rng.standard_normal((2, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)
    kept = ox.passes.Simplify(fold_batchnorm=False, engine=engine)(model.clone())
    assert "BatchNormalization" in _ops(kept.model)  # the fallback honours the option too


def test_leaves_a_graph_with_nothing_to_do_untouched(minimal_model):
    result = ox.passes.Simplify()(minimal_model)
    assert result.modified is False
    assert _ops(result.model) == ["Mul"]


def test_a_second_run_changes_nothing(small_model):
    first = ox.passes.Simplify()(small_model.clone())
    second = ox.passes.Simplify()(first.model)
    assert second.modified is False
    for engine in ("onnx-ir",):
        first = ox.passes.Simplify(engine=engine)(small_model.clone())
        assert first.modified
        assert ox.passes.Simplify(engine=engine)(first.model).modified is False


def test_falls_back_to_onnx_ir_when_onnxsim_fails(small_model, monkeypatch, rng):
    import onnxsim

    def crash(*args, **kwargs):
        raise RuntimeError("Unsupported op in constant folding")

    monkeypatch.setattr(onnxsim, "simplify", crash)
    result = ox.passes.Simplify()(small_model.clone())
    assert result.statistics["engine"] == "onnx-ir"
    assert "onnxsim failed: RuntimeError: Unsupported op" in result.statistics["fallback_reason"]
    assert _ops(result.model) == ["MatMul", "Add", "Relu"]
    feed = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(small_model, feed)[0], rtol=1e-6)
    with pytest.raises(PassError, match="simplify: onnxsim failed"):
        ox.passes.Simplify(engine="onnxsim")(small_model.clone())


def test_large_models_use_the_fallback(small_model, monkeypatch):
    monkeypatch.setattr(simplify_module._weights, "LARGE_BYTES", 16)
    result = ox.passes.Simplify()(small_model.clone())
    assert result.statistics["engine"] == "onnx-ir"
    assert "the model is large" in result.statistics["fallback_reason"]


def test_large_constants_are_not_materialised():
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 256] x) => (float[N, 256] y)
    <int64[2] shape = {256, 256}>
    {
        w = ConstantOfShape <value = float[1] {0.5}> (shape)
        y = MatMul(x, w)
    }
    """
    model = ir.from_onnx_text(text)
    small = ox.passes.Simplify(fold_limit_bytes=1024)(model.clone()).model
    assert "ConstantOfShape" in _ops(small)
    big = ox.passes.Simplify(fold_limit_bytes=2**20)(model.clone()).model
    assert _ops(big) == ["MatMul"]
    assert _proto.weight_bytes(big) == 256 * 256 * 4


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="simplify: fold_limit_bytes"):
        ox.passes.Simplify(fold_limit_bytes=-1)
    with pytest.raises(ValueError, match="simplify: engine"):
        ox.passes.Simplify(engine="fast")


def test_the_fallback_keeps_two_outputs_of_one_value_apart(rng):
    # optimize_ir removes Identity nodes but keeps the one that gives an output its own name; an
    # identity-elimination pass after it used to merge the two outputs into one.
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 4] y, float[N, 4] z)
    {
        a = Identity(x)
        r = Relu(a)
        y = Identity(r)
        z = Identity(r)
    }
    """)
    result = ox.passes.Simplify(engine="onnx-ir")(model.clone())
    assert [o.name for o in result.model.graph.outputs] == ["y", "z"]
    assert result.model.graph.outputs[0] is not result.model.graph.outputs[1]
    feed = {"x": rng.standard_normal((2, 4)).astype(np.float32)}
    for got, want in zip(ort_run(result.model, feed), ort_run(model, feed)):
        np.testing.assert_array_equal(got, want)
    onnx_check(result.model)
