import importlib.util

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import runtime
from onnxpress.calibration import from_feeds
from onnxpress.context import PassContext
from onnxpress.metrics import accuracy
from onnxpress.recipe import parse_recipe

from conftest import onnx_check, ort_run

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def _fmt(array) -> str:
    return ", ".join(f"{v:.6g}" for v in np.ravel(array))


# An attention block as exporters write it: an additive mask (1 - m) * finfo(float32).min, a
# Softmax, and a decomposed LayerNorm with epsilon 1e-12 (BERT's).
MASK_LN_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
block (float[2, 4, 8] x, float[2, 4] m) => (float[2, 4, 8] y)
<float[8, 8] wq = {%s}, float[1] eps = {1e-12}, float[1] big = {-3.4028235e38}, float[1] one = {1.0},
 float[1] two = {2.0}, int64[1] last = {-1}, int64[1] ax1 = {1}, float[1] scale = {0.35}>
{
  q = MatMul(x, wq)
  kt = Transpose<perm = [0, 2, 1]>(x)
  s0 = MatMul(q, kt)
  s = Mul(s0, scale)
  inv = Sub(one, m)
  madd = Mul(inv, big)
  mu = Unsqueeze(madd, ax1)
  sm = Add(s, mu)
  p = Softmax<axis = -1>(sm)
  a = MatMul(p, x)
  mean = ReduceMean<keepdims = 1>(a, last)
  d = Sub(a, mean)
  sq = Pow(d, two)
  var = ReduceMean<keepdims = 1>(sq, last)
  ve = Add(var, eps)
  sd = Sqrt(ve)
  y = Div(d, sd)
}
"""


def _mask_ln(seed: int = 0) -> ir.Model:
    weights = np.random.default_rng(seed).standard_normal((8, 8)) * 0.3
    model = ir.from_onnx_text(MASK_LN_TEXT % _fmt(weights))
    for index, node in enumerate(model.graph):
        node.name = f"{node.op_type.lower()}_{index}"
    return model


def _mask_ln_feed(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    x[1] = 1.0  # constant rows: variance 0, where an epsilon rounded to 0 divides 0 by 0
    m = np.ones((2, 4), np.float32)
    m[0, 2:] = 0
    m[1] = 0  # a fully masked sample: -inf in its mask would make its Softmax rows NaN
    return {"x": x, "m": m}


def _types(model: ir.Model) -> dict[str, ir.DataType]:
    return {v.name: v.dtype for n in model.graph for v in n.outputs}


def test_mask_and_epsilon_are_fixed_and_outputs_match():
    model = _mask_ln()
    feed = _mask_ln_feed()
    result = ox.passes.FP16()(model.clone())
    stats = result.statistics
    assert result.modified and stats["nodes_converted"] >= 10
    assert stats["fixes"]["masks_clamped"] == {"big": "-3.4e+38 -> -10000"}
    # The variance path stays float32, each node with its reason; epsilon stays exact there.
    for node in ("pow_12", "reducemean_13", "add_14", "sqrt_15"):
        assert "variance path of a normalisation" in stats["nodes_kept"][node]
    types = _types(result.model)
    assert types["s0"] == F16 and types["p"] == F16 and types["sq"] == F32
    out = ort_run(result.model, feed)[0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ort_run(model, feed)[0], atol=5e-3)
    # keep_io_types: the graph's inputs and outputs stay float32 under their names.
    assert [v.dtype for v in result.model.graph.inputs] == [F32, F32]
    assert result.model.graph.outputs[0].name == "y" and result.model.graph.outputs[0].dtype == F32
    assert stats["bytes_after"] < stats["bytes_before"]
    onnx_check(result.model)


def test_second_run_and_float16_models_are_left_alone():
    first = ox.passes.FP16()(_mask_ln())
    second = ox.passes.FP16()(first.model)
    assert second.modified is False and "already computes in float16" in second.statistics["note"]
    native = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float16[2] x) => (float16[2] y) { y = Relu(x) }
    """)
    assert ox.passes.FP16()(native).modified is False


def test_integer_and_float64_models_are_left_alone():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (int64[2] x, double[2] d) => (int64[2] y, double[2] e) { y = Add(x, x)  e = Mul(d, d) }
    """)
    result = ox.passes.FP16()(model)
    assert result.modified is False and "no float32" in result.statistics["note"]


def test_exp_without_max_subtraction_stays_float32_and_the_stable_form_converts():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 6] x) => (float[2, 6] y, float[2, 6] z)
    <int64[1] last = {-1}>
    {
        e = Exp(x)
        total = ReduceSum<keepdims = 1>(e, last)
        y = Div(e, total)
        peak = ReduceMax<keepdims = 1>(x, last)
        shifted = Sub(x, peak)
        f = Exp(shifted)
        ftotal = ReduceSum<keepdims = 1>(f, last)
        z = Div(f, ftotal)
    }
    """)
    result = ox.passes.FP16()(model.clone())
    kept = result.statistics["nodes_kept"]
    assert kept["Exp_0"] == "Exp of an unbounded input (no max-subtraction)"
    assert "ReduceSum of an unbounded input" in kept["ReduceSum_1"]
    assert "Exp_5" not in kept and "ReduceSum_6" not in kept  # exp(x - max) is in [0, 1], six of them sum to 6
    x = np.array([[12.0, 11.5, 3, 2, 1, 0], [0.5, -1, 2, 3, 4, 5]], np.float32)  # exp(12) > 65504
    ours = ort_run(result.model, {"x": x})
    reference = ort_run(model, {"x": x})
    for got, want in zip(ours, reference):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=2e-3)


@pytest.mark.skipif(importlib.util.find_spec("onnxconverter_common") is None, reason="onnxconverter-common absent")
def test_onnxconverter_common_gives_nan_where_we_give_none():
    import warnings

    from onnx.reference import ReferenceEvaluator
    from onnxconverter_common import float16

    from onnxpress import _proto

    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 6] x) => (float[2, 6] y)
    <int64[1] last = {-1}>
    { e = Exp(x)  total = ReduceSum<keepdims = 1>(e, last)  y = Div(e, total) }
    """)
    x = np.array([[12.0, 11.5, 3, 2, 1, 0]] * 2, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = float16.convert_float_to_float16(_proto.to_proto(model), keep_io_types=True)
        # onnx.reference computes in float16 as a GPU does; ONNX Runtime's CPU provider runs
        # Exp -> ReduceSum -> Div in float32 between Casts and hides the overflow.
        assert np.isnan(ReferenceEvaluator(theirs).run(None, {"x": x})[0]).any()  # inf / inf
        ours = ox.passes.FP16()(model).model
        assert np.isfinite(ReferenceEvaluator(ir.serde.serialize_model(ours)).run(None, {"x": x})[0]).all()


def test_resize_scales_and_roi_stay_float32():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y)
    <float[0] roi = {}, float[4] scales = {1.0, 1.0, 2.0, 2.0}>
    { r = Relu(x)  y = Resize<mode = "linear">(r, roi, scales) }
    """)
    result = ox.passes.FP16()(model.clone())
    resize = result.model.graph.node(len(result.model.graph) - 1)
    while resize.op_type != "Resize":
        resize = resize.inputs[0].producer()
    assert resize.inputs[0].dtype == F16
    assert resize.inputs[1].dtype == F32 and resize.inputs[2].dtype == F32
    assert resize.inputs[2] is model.graph.initializers["scales"] or resize.inputs[2].name == "scales"
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(result.model, {"x": x})[0], ort_run(model, {"x": x})[0], atol=3e-3)
    onnx_check(result.model)


SUBGRAPH_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 3] x, bool c, int64 n) => (float[2, 3] y, float[2, 3] z)
<float[3, 3] w = {%s}, float[1] half = {0.5}>
{
    h = MatMul(x, w)
    y = If(c) <
        then_branch = then_g () => (float[2, 3] t) { t = Mul(h, half) },
        else_branch = else_g () => (float[2, 3] e) { e = Sigmoid(h) }
    >
    t0 = Constant<value = bool {1}>()
    z = Loop(n, t0, h) <
        body = loop_g (int64 i, bool cond, float[2, 3] acc) => (bool cond_out, float[2, 3] acc_out) {
            cond_out = Identity(cond)
            scaled = Mul(acc, half)
            acc_out = Add(scaled, h)
        }
    >
}
"""


def test_if_and_loop_bodies_convert_with_their_outer_values():
    weights = np.random.default_rng(1).standard_normal((3, 3))
    model = ir.from_onnx_text(SUBGRAPH_TEXT % _fmt(weights))
    result = ox.passes.FP16()(model.clone())
    assert result.modified
    inner = [n for n in ir.traversal.RecursiveGraphIterator(result.model.graph) if n.graph is not result.model.graph]
    assert {n.op_type for n in inner if n.outputs[0].dtype == F16} >= {"Mul", "Sigmoid", "Add"}
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        feed = {"x": x, "c": np.array(c), "n": np.array(3, np.int64)}
        for got, want in zip(ort_run(result.model, feed), ort_run(model, feed)):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=1e-2, rtol=2e-3)
    onnx_check(result.model)


def test_keep_io_types_false_makes_inputs_and_outputs_float16():
    result = ox.passes.FP16(keep_io_types=False)(_mask_ln())
    assert [v.dtype for v in result.model.graph.inputs] == [F16, F16]
    assert result.model.graph.outputs[0].dtype == F16
    feed = {k: v.astype(np.float16) for k, v in _mask_ln_feed().items()}
    assert np.isfinite(ort_run(result.model, feed)[0]).all()
    onnx_check(result.model)


def test_casts_are_retargeted_and_round_trips_removed():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[4] x, int64[4] k) => (float[4] y)
    {
        kf = Cast<to = 1>(k)
        s = Add(x, kf)
        same = Cast<to = 1>(s)
        y = Relu(same)
    }
    """)
    result = ox.passes.FP16()(model.clone())
    casts = [n for n in result.model.graph if n.op_type == "Cast"]
    retargeted = [n for n in casts if n.inputs[0].name == "k"]
    assert retargeted and retargeted[0].attributes.get_int("to") == F16
    assert result.statistics["fixes"]["cast_pairs_removed"] >= 1  # Cast(float16 -> float16) is gone
    assert len(casts) == 3  # x to float16, k to float16, y back to float32
    feed = {"x": np.array([1, -2, 3, -4], np.float32), "k": np.array([1, 1, 1, 1], np.int64)}
    np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(model, feed)[0])
    onnx_check(result.model)


def test_block_exclude_and_schemas_keep_nodes_with_reasons():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[4] x) => (float[4] y, float[3] r)
    <float start = {0.0}, float limit = {3.0}, float delta = {1.0}>
    { a = Relu(x)  b = Sigmoid(a)  y = Tanh(b)  r = Range(start, limit, delta) }
    """)
    for index, node in enumerate(model.graph):
        node.name = f"n{index}"
    result = ox.passes.FP16(block=["Sigmoid"], exclude=["n2"])(model.clone())
    kept = result.statistics["nodes_kept"]
    assert kept["n1"] == "blocked by the block option" and kept["n2"] == "excluded by the exclude option"
    assert "has no float16 form" in kept["n3"]  # Range: int and float32/64 only
    assert result.statistics["nodes_converted"] == 1
    onnx_check(result.model)


def test_bad_options_and_preconditions_name_what_is_wrong():
    with pytest.raises(ValueError, match="fp16: dtype must be float16 or bfloat16, got 'int8'"):
        ox.passes.FP16(dtype="int8")
    with pytest.raises(ValueError, match="fp16: tolerance must be in"):
        ox.passes.FP16(tolerance=0)
    with pytest.raises(ValueError, match="fp16: measure must be"):
        ox.passes.FP16(measure="yes")
    with pytest.raises(ValueError, match="fp16: block must be a list of strings"):
        ox.passes.FP16(block="Exp")
    old = ir.from_onnx_text("""
    <ir_version: 7, opset_import: ["" : 12]>
    g (float[2] x) => (float[2] y) { y = Relu(x) }
    """)
    with pytest.raises(ir.passes.PreconditionError, match="bfloat16 needs opset >= 13"):
        ox.passes.FP16(dtype="bfloat16")(old)
    with pytest.raises(ir.passes.PreconditionError, match="fp16: calibration data needed"):
        ox.passes.FP16(measure=True)(old)


def _context(feeds) -> PassContext:
    return PassContext.build(runner=runtime.Runner("cpu"), calibration=from_feeds(feeds))


def test_calibration_ranges_keep_nodes_near_the_float16_limit():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 4] x) => (float[1, 4] y)
    <float[4, 4] w = {300, 0, 0, 0, 0, 300, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}, float[1] k = {0.001}>
    { h = MatMul(x, w)  s = Mul(h, k)  y = Relu(s) }
    """)
    for index, node in enumerate(model.graph):
        node.name = f"n{index}"
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.standard_normal((1, 4)) * 100).astype(np.float32)} for _ in range(12)]
    result = ox.passes.FP16(measure=False).run_in(_context(feeds), model.clone())
    stats = result.statistics
    assert stats["decided_by"] == "static rules + calibration ranges"
    assert stats["nodes_kept"]["n0"].startswith("calibration range")  # |h| reaches ~9e4
    # Mul reads h: a Cast of h to float16 would be inf. Its own output (|s| < 100) fits: Relu converts.
    assert stats["nodes_kept"]["n1"].startswith("reads 'h' from 'n0', kept float32 for its range")
    assert "n2" not in stats["nodes_kept"] and stats["nodes_converted"] == 1
    got, want = ort_run(result.model, feeds[0])[0], ort_run(model, feeds[0])[0]
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-2)


def test_calibration_lifts_range_rules_and_raises_epsilon():
    feeds = [_mask_ln_feed(seed) for seed in range(12)]
    result = ox.passes.FP16().run_in(_context(feeds), _mask_ln())
    stats = result.statistics
    # The mask's -3.4e38 is clamped on purpose: neither its range nor its measured error keeps it.
    assert stats["decided_by"] == "static rules + calibration ranges + measured error" and stats["nodes_kept"] == {}
    assert {"pow_12", "reducemean_13", "add_14", "sqrt_15"} <= set(stats["lifted_by_calibration"])
    assert stats["fixes"]["epsilons_raised"] == {"eps": "1e-12 -> 5.96e-08"}
    assert all(v.dtype == F16 for v in result.model.graph.initializers.values() if v.name == "eps")
    from onnx.reference import ReferenceEvaluator  # float16 arithmetic as a GPU does it

    evaluator = ReferenceEvaluator(ir.serde.serialize_model(result.model))
    for feed in feeds[:3]:
        assert np.isfinite(evaluator.run(None, feed)[0]).all()
        out = ort_run(result.model, feed)[0]
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, ort_run(_mask_ln(), feed)[0], atol=1e-2)


def test_measured_error_keeps_nodes_over_the_tolerance():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 8] x) => (float[1, 8] y)
    <float[1] tiny = {1e-6}, float[1] undo = {1e6}>
    { a = Relu(x)  b = Mul(a, tiny)  c = Mul(b, undo)  y = Relu(c) }
    """)
    for index, node in enumerate(model.graph):
        node.name = f"n{index}"
    feeds = [{"x": np.random.default_rng(s).uniform(0.01, 0.1, (1, 8)).astype(np.float32)} for s in range(12)]
    result = ox.passes.FP16(measure=True, tolerance=0.05).run_in(_context(feeds), model.clone())
    stats = result.statistics
    assert "measured error" in stats["decided_by"]
    assert stats["nodes_kept"]["n2"].startswith("constant 'undo' holds 1e+06")
    # a * 1e-6 is a float16 subnormal (2**-24 steps): its relative error jumps
    assert stats["nodes_kept"]["n1"].startswith("measured error")
    assert stats["measured"][0]["kept"] == 1 and stats["measured"][-1]["kept"] == 0
    got, want = ort_run(result.model, feeds[0])[0], ort_run(model, feeds[0])[0]
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_bfloat16_checked_with_the_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    model = _mask_ln()
    result = ox.passes.FP16(dtype="bfloat16")(model.clone())
    stats = result.statistics
    assert "no bfloat16 kernels" in stats["runs_on"]
    assert all("bfloat16's 8-bit mantissa" in r for r in stats["nodes_kept"].values())
    assert stats["fixes"]["masks_clamped"] == {"big": "-3.4e+38 -> -1e+09"}  # finfo(float32).min is -inf in bf16
    assert _types(result.model)["s0"] == ir.DataType.BFLOAT16
    onnx_check(result.model)
    feed = _mask_ln_feed()
    got = ReferenceEvaluator(ir.serde.serialize_model(result.model)).run(None, feed)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ort_run(model, feed)[0], atol=0.08)


def test_digits_cnn_keeps_its_accuracy(digits):
    model, _, data, labels = digits
    result = ox.passes.FP16()(model.clone())
    assert result.statistics["nodes_kept"] == {}
    assert result.statistics["bytes_after"] < 0.51 * result.statistics["bytes_before"]
    before = accuracy(runtime.run_model(model, data), labels)
    assert accuracy(runtime.run_model(result.model, data), labels) >= before - 0.005
    onnx_check(result.model)


def test_a_recipe_runs_fp16_under_the_accuracy_floor(digits):
    model, calib, _, _ = digits
    recipe = parse_recipe("""
    target = "cpu"
    [pipeline]
    accuracy_floor = 0.999
    [[passes]]
    name = "fp16"
    tolerance = 0.02
    """)
    result = ox.Pipeline.from_recipe(recipe).run(model, calibration=calib)
    record = result.records[0]
    assert record.name == "fp16" and record.modified and record.floor["met"]
    assert record.statistics["decided_by"] == "static rules + calibration ranges + measured error"
    assert record.bytes_after < 0.51 * record.bytes_before


@pytest.mark.slow
def test_minilm_in_float16_keeps_its_embeddings():
    from onnxpress.samples import minilm

    model = minilm.export()
    calibration = minilm.feeds(minilm.CALIBRATION_SENTENCES[:24])
    held_out = minilm.feeds(minilm.CALIBRATION_SENTENCES[24:30])
    result = ox.Pipeline([ox.passes.FP16()], accuracy_floor=0.999).run(model, calibration=calibration)
    stats = result.records[0].statistics
    assert result.records[0].floor["met"] and stats["nodes_converted"] > 200
    assert all(reason for reason in stats["nodes_kept"].values())
    for want, got in zip(runtime.run_model(model, held_out), runtime.run_model(result.model, held_out)):
        for name in want:
            assert np.isfinite(got[name]).all()
            cosine = float((want[name] * got[name]).sum() / np.linalg.norm(want[name]) / np.linalg.norm(got[name]))
            assert cosine > 0.9995
