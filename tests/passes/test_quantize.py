import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import runtime, samples
from onnxpress.errors import PipelineError
from onnxpress.metrics import accuracy, compare
from onnxpress.passes._common import fold_batchnorm

from conftest import onnx_check, ort_run

# A tiny transformer block: LayerNorm -> two projections sharing their input -> Softmax, with an
# outlier channel in the LayerNorm's gain (the case SmoothQuant is for).
TRANSFORMER_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
block (float[1, S, 16] x) => (float[1, S, 16] y)
<float[16] gamma = {%s}, float[16] beta = {%s}, float[16, 16] wq = {%s}, float[16, 16] wv = {%s}>
{
    n = LayerNormalization <axis = -1> (x, gamma, beta)
    q = MatMul(n, wq)
    v = MatMul(n, wv)
    s = Softmax <axis = -1> (q)
    y = Mul(s, v)
}
"""


def _transformer(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    gamma = np.ones(16)
    gamma[3] = 40.0  # an outlier channel
    fmt = lambda a: ", ".join(f"{v:.5f}" for v in np.ravel(a))  # noqa: E731
    return ir.from_onnx_text(TRANSFORMER_TEXT % (fmt(gamma), fmt(rng.normal(0, 0.1, 16)),
                                                 fmt(rng.normal(0, 0.3, (16, 16))), fmt(rng.normal(0, 0.3, (16, 16)))))


def _sequence_feeds(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, int(rng.integers(3, 12)), 16)).astype(np.float32)} for _ in range(count)]


def _ops(model: ir.Model) -> set[str]:
    return {n.op_type for n in model.graph.all_nodes()}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_quantization_keeps_digits_accuracy(digits, method):
    model, calib, data, labels = digits
    result = ox.Pipeline([ox.passes.Quantize(method=method)]).run(model, calibration=calib)
    quantized, record = result.model, result.records[0]
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(quantized)
    stats = record.statistics
    assert stats["mode"] == "static" and stats["preset"] == "cnn" and stats["method"] == method
    assert record.kernels["int8"] == 5 and record.kernels["float"] == 0  # every Conv and Gemm runs int8
    assert record.bytes_after < 0.3 * record.bytes_before
    reference = runtime.run_model(model, data)
    got = runtime.run_model(quantized, data)
    assert accuracy(got, labels) >= accuracy(reference, labels) - 0.01
    onnx_check(quantized)


def test_bias_correction_and_gptq_reduce_the_error(digits):
    model, calib, data, _ = digits
    reference = runtime.run_model(model, data)
    errors = {}
    for corrected, gptq in ((False, False), (True, False), (True, True)):
        result = ox.Pipeline([ox.passes.Quantize(method="minmax", bias_correction=corrected, gptq=gptq)]).run(
            model, calibration=calib)
        errors[corrected, gptq] = compare(reference, runtime.run_model(result.model, data))["logits"].mean_abs
        stats = result.records[0].statistics
        # GPTQ rounds all five layers; bias correction is for the layers it did not round.
        assert stats["bias_corrected"] == (5 if corrected and not gptq else 0)
        assert stats.get("gptq", {}).get("layers", 0) == (5 if gptq else 0)
    assert errors[True, True] < errors[True, False] < errors[False, False]


def test_dynamic_transformer_preset_with_smoothquant():
    model = _transformer()
    calib = _sequence_feeds(30)
    quantize = ox.passes.Quantize()
    result = ox.Pipeline([quantize]).run(model, calibration=calib)
    stats = result.records[0].statistics
    assert stats["preset"] == "transformer" and stats["mode"] == "dynamic"
    assert stats["smoothquant_alpha"] in (0.5, 0.6, 0.7, 0.8, 0.9) and len(stats["smoothquant_search"]) == 5
    assert "MatMulInteger" in _ops(result.model) or "DynamicQuantizeMatMul" in _ops(result.model)
    assert result.records[0].kernels["int8"] == 2
    plain = ox.Pipeline([ox.passes.Quantize(smoothquant=False)]).run(model, calibration=calib)
    held_out = _sequence_feeds(10, seed=1)
    reference = runtime.run_model(model, held_out)
    smooth_cos = compare(reference, runtime.run_model(result.model, held_out))["y"].cosine
    plain_cos = compare(reference, runtime.run_model(plain.model, held_out))["y"].cosine
    assert smooth_cos > plain_cos  # the outlier channel hurts plain per-tensor activations


def test_smoothing_alone_is_exact_in_float():
    from onnxpress.passes import _calibrated
    from onnxpress.statistics import collect

    model = _transformer()
    ir.passes.common.NameFixPass()(model)  # groups are matched by node name, as the pass names them
    feeds = _sequence_feeds(8)
    groups = _calibrated.matmul_groups(model, {n.name for n in model.graph if n.op_type == "MatMul"})
    assert list(groups) == ["n"] and len(groups["n"]) == 2  # q and v share their input
    stats = collect(model, feeds, tensors=["n"], channel_axes={"n": -1})
    smoothed = model.clone()
    assert _calibrated.smooth(smoothed, groups, stats, 0.7) == 1
    for feed in feeds:
        np.testing.assert_allclose(ort_run(smoothed, feed)[0], ort_run(model, feed)[0], rtol=1e-4, atol=1e-5)


def test_exclusion_by_name_and_op_type(digits):
    model, calib, _, _ = digits
    first_conv = next(n.name for n in model.graph if n.op_type == "Conv")
    result = ox.Pipeline([ox.passes.Quantize(exclude=[first_conv, "Gemm"])]).run(model, calibration=calib)
    stats = result.records[0].statistics
    assert stats["float_nodes"][first_conv] == "excluded by the exclude option"
    gemms = [n.name for n in model.graph if n.op_type == "Gemm"]
    assert all(stats["float_nodes"][g] == "excluded by the exclude option" for g in gemms)
    kernels = result.records[0].kernels
    assert kernels["int8"] == 2 and kernels["float"] >= 3


def test_nodes_inside_subgraphs_stay_float_with_the_reason(rng):
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    branchy (float[2, 4] x, bool c) => (float[2, 4] y)
    <float[4, 4] w = {%s}>
    {
        h = MatMul(x, w)
        y = If (c) <then_branch = then_g () => (float[2, 4] t) { t = MatMul(h, w) },
                    else_branch = else_g () => (float[2, 4] e) { e = Relu(h) }>
    }
    """ % ", ".join(f"{v:.3f}" for v in rng.normal(0, 1, 16))
    model = ir.from_onnx_text(text)
    model.graph.node(1).attributes["then_branch"].value.node(0).name = "inner_matmul"
    calib = [{"x": rng.standard_normal((2, 4)).astype(np.float32), "c": np.array(True)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize(preset="all")]).run(model, calibration=calib)
    reason = result.records[0].statistics["float_nodes"]["inner_matmul"]
    assert "inside a If subgraph" in reason and "do not descend" in reason
    assert result.records[0].statistics["quantized_nodes"] >= 1


def test_old_opsets_are_upgraded_first(rng):
    weights = ", ".join(f"{v:.3f}" for v in rng.normal(0, 1, 4 * 2 * 9))
    model = ir.from_onnx_text(f"""
    <ir_version: 6, opset_import: ["" : 11]>
    old (float[1, 2, 6, 6] x) => (float[1, 4, 6, 6] y)
    <float[4, 2, 3, 3] w = {{{weights}}}, float[4] b = {{0.1, 0.2, 0.3, 0.4}}>
    {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
        y = Relu(c)
    }}
    """)
    calib = [{"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize()]).run(model, calibration=calib)
    assert result.records[0].statistics["opset_upgraded"] == [11, 13]
    assert result.model.opset_imports[""] >= 13
    assert result.records[0].kernels["int8"] == 1


def _fmt(array) -> str:
    return ", ".join(f"{v:.5f}" for v in np.ravel(array))


def _batchnorm_params(rng, channels: int) -> str:
    scale, shift = rng.uniform(0.5, 1.5, channels), rng.uniform(-0.2, 0.2, channels)
    mean, var = rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels)
    return (f"float[{channels}] scale = {{{_fmt(scale)}}}, float[{channels}] shift = {{{_fmt(shift)}}}, "
            f"float[{channels}] mean = {{{_fmt(mean)}}}, float[{channels}] var = {{{_fmt(var)}}}")


def _with_batchnorms(model: ir.Model, rng) -> ir.Model:
    """``model`` with a BatchNormalization (random statistics) after every Conv."""
    model = model.clone()
    for conv in [n for n in model.graph if n.op_type == "Conv"]:
        channels = conv.inputs[1].const_value.shape[0]
        params = []
        for kind, low, high in (("scale", 0.5, 1.5), ("shift", -0.2, 0.2), ("mean", -0.5, 0.5), ("var", 0.5, 2.0)):
            name = f"{conv.name}_bn_{kind}"
            value = ir.Value(name=name, const_value=ir.tensor(rng.uniform(low, high, channels).astype(np.float32),
                                                              name=name))
            model.graph.register_initializer(value)
            params.append(value)
        output = conv.outputs[0]
        uses = list(output.uses())
        batchnorm = ir.node("BatchNormalization", [output, *params], name=f"{conv.name}_bn")
        batchnorm.outputs[0].name = f"{output.name}_bn"
        model.graph.insert_after(conv, batchnorm)
        for use in uses:
            use.node.replace_input_with(use.idx, batchnorm.outputs[0])
    return model


def test_batchnorm_folding_is_exact(rng):
    from test_simplify import BN_TEXT  # noqa: PLC0415 - shared fixture text

    model = ir.from_onnx_text(BN_TEXT)  # ResNet-style: a Conv without bias, then BatchNormalization
    model.graph.node(0).name = "conv"
    folded = model.clone()
    assert fold_batchnorm(folded) == 1
    assert [n.op_type for n in folded.graph] == ["Conv"]
    assert folded.graph.node(0).name == "conv"  # include/exclude lists still find it
    feed = {"x": rng.standard_normal((2, 2, 5, 5)).astype(np.float32)}
    np.testing.assert_allclose(ort_run(folded, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)
    assert folded.graph.outputs[0].name == "y"
    assert fold_batchnorm(folded) == 0


@pytest.mark.parametrize("producer, x_shape, w_shape, y_shape", [
    ("ConvTranspose <group = 2> (x, w, b)", (1, 4, 5, 5), (4, 2, 3, 3), (1, 4, 7, 7)),  # w: [in, out/group, k, k]
    ("Gemm <transB = 1, beta = 0.5> (x, w, b)", (3, 4), (4, 4), (3, 4)),
])
def test_batchnorm_folds_into_conv_transpose_and_gemm(rng, producer, x_shape, w_shape, y_shape):
    dims = lambda shape: ", ".join(map(str, shape))  # noqa: E731
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[{dims(x_shape)}] x) => (float[{dims(y_shape)}] y)
    <float[{dims(w_shape)}] w = {{{_fmt(rng.normal(0, 1, w_shape))}}}, float[4] b = {{{_fmt(rng.normal(0, 1, 4))}}},
     {_batchnorm_params(rng, 4)}>
    {{
        h = {producer}
        y = BatchNormalization (h, scale, shift, mean, var)
    }}
    """)
    folded = model.clone()
    assert fold_batchnorm(folded) == 1
    assert [n.op_type for n in folded.graph] == [producer.split()[0]]
    feed = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    np.testing.assert_allclose(ort_run(folded, feed)[0], ort_run(model, feed)[0], rtol=1e-5, atol=1e-5)
    onnx_check(folded)


def test_batchnorm_is_not_folded_where_the_conv_output_is_used_elsewhere(rng):
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 2, 5, 5] x) => (float[1, 4, 5, 5] y, float[1, 4, 5, 5] z)
    <float[4, 2, 3, 3] w = {{{_fmt(rng.normal(0, 1, 72))}}}, {_batchnorm_params(rng, 4)}>
    {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        y = BatchNormalization (c, scale, shift, mean, var)
        z = Relu(c)
    }}
    """)
    assert fold_batchnorm(model) == 0
    assert [n.op_type for n in model.graph] == ["Conv", "BatchNormalization", "Relu"]


def test_batchnorms_fold_into_the_digits_cnn(digits, rng):
    model, calib, data, labels = digits
    with_batchnorms = _with_batchnorms(model, rng)
    folded = with_batchnorms.clone()
    assert fold_batchnorm(folded) == 3
    assert [(n.name, n.op_type) for n in folded.graph] == [(n.name, n.op_type) for n in model.graph]
    reference = runtime.run_model(with_batchnorms, data[:2])
    got = runtime.run_model(folded, data[:2])
    np.testing.assert_allclose(got[0]["logits"], reference[0]["logits"], rtol=1e-4, atol=1e-4)
    result = ox.Pipeline([ox.passes.Quantize()]).run(with_batchnorms, calibration=calib)
    assert result.records[0].statistics["batchnorm_folded"] == 3
    assert result.records[0].kernels["int8"] == 5 and "BatchNormalization" not in _ops(result.model)


def test_a_second_run_changes_nothing(digits):
    model, calib, _, _ = digits
    first = ox.Pipeline([ox.passes.Quantize()]).run(model, calibration=calib)
    second = ox.Pipeline([ox.passes.Quantize()]).run(first.model, calibration=calib)
    assert second.records[0].modified is False
    assert "already quantized" in second.records[0].statistics["note"]


def test_accuracy_aware_fallback_keeps_the_fewest_nodes_float(digits):
    model, calib, _, _ = digits
    quantize = ox.passes.Quantize(method="minmax", target_cosine=0.99999, bias_correction=False)
    result = ox.Pipeline([quantize]).run(model, calibration=calib)
    fallback = result.records[0].statistics["fallback"]
    assert fallback["trials"][0]["float"] == 0 and fallback["trials"][0]["cosine"] < 0.99999
    floating = {k: v for k, v in result.records[0].statistics["float_nodes"].items() if "accuracy-aware" in v}
    if fallback["target_met"]:
        assert floating and len(floating) < 12
        assert any(t["cosine"] >= 0.99999 and t["float"] == len(floating) for t in fallback["trials"])
    loose = ox.Pipeline([ox.passes.Quantize(target_cosine=0.9)]).run(model, calibration=calib)
    assert loose.records[0].statistics["fallback"]["trials"] == [loose.records[0].statistics["fallback"]["trials"][0]]


def test_accuracy_target_with_a_task_metric(digits):
    model, calib, data, labels = digits
    quantize = ox.passes.Quantize(max_metric_drop=0.0)
    eval_feeds = data[:4]
    eval_labels = labels[:200]
    result = ox.Pipeline([quantize]).run(model, calibration=calib, evaluation=eval_feeds,
                                         metric=lambda outs: accuracy(outs, eval_labels))
    assert result.records[0].statistics["fallback"]["target_met"]
    assert "metric_drop" in result.records[0].statistics["fallback"]["trials"][0]


def test_latency_aware_mode_records_its_measurements(digits):
    model, calib, _, _ = digits
    messages = []
    result = ox.Pipeline([ox.passes.Quantize(latency_aware=True)]).run(
        model, calibration=calib, progress=lambda e: e.message and messages.append(e.message))
    latency = result.records[0].statistics["latency"]
    assert latency["fp32_ms"] > 0 and latency["int8_ms"] > 0 and latency["final_ms"] > 0
    assert latency["final_ms"] <= max(latency["fp32_ms"], latency["int8_ms"])
    assert any(m.startswith("latency fp32") for m in messages)
    if latency.get("kept_fp32"):
        assert result.records[0].statistics["quantized_nodes"] == 0
        assert all("latency-aware" in r for r in result.records[0].statistics["float_nodes"].values())


def test_static_mode_needs_calibration(digits):
    model, _, _, _ = digits
    with pytest.raises(PipelineError, match="quantize: calibration data needed"):
        ox.Pipeline([ox.passes.Quantize()]).run(model)


@pytest.mark.parametrize("options, message", [
    (dict(method="kl"), "quantize: method must be"),
    (dict(mode="int4"), "quantize: mode must be"),
    (dict(percentile=10.0), "quantize: percentile"),
    (dict(smoothquant_alpha=2.0), "quantize: smoothquant_alpha"),
    (dict(target_cosine=1.5), "quantize: target_cosine"),
    (dict(reduce_range="yes"), "quantize: reduce_range"),
    (dict(scale="pow10"), "quantize: scale must be auto, free or pow2"),
    (dict(scale="pow2", mode="dynamic"), "quantize: mode must be static or auto with scale='pow2'"),
    (dict(scale="pow2", activation_type="uint8"), "quantize: activation_type must be int8 or auto"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ox.passes.Quantize(**options)


@pytest.mark.parametrize("calib, message", [
    ([{"wrong": np.zeros((1, 1, 8, 8), np.float32)}], r"missing input\(s\) \['input'\]"),
    ([{"input": np.zeros((1, 1, 9, 8), np.float32)}], r"wants float32 \[batch,1,8,8\], the data gives \[1,1,9,8\]"),
    ([{"input": np.zeros((1, 1, 8, 8), np.int32)}], r"the data gives int32 \[1,1,8,8\]"),
    ([], "gave no samples"),
])
def test_bad_calibration_data_is_named(digits, calib, message):
    model, _, _, _ = digits
    with pytest.raises(ox.DataError, match=message):
        ox.Pipeline([ox.passes.Quantize()], golden_samples=0).run(model, calibration=calib)


def test_a_recipe_runs_quantization_from_the_cli(tmp_path, capsys):
    from onnxpress.cli import main

    recipe = tmp_path / "q.toml"
    recipe.write_text('[calibration]\nsource = "%s"\n[[passes]]\nname = "simplify"\n[[passes]]\nname = "quantize"\n'
                      'method = "minmax"\n' % samples.DIGITS_CALIB.as_posix())
    out = tmp_path / "q.onnx"
    assert main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "-o", str(out), "--target", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "quantize" in text and "5/0" in text and "verdict on target 'cpu': PASSED" in text
    assert "QLinearConv" in runtime.Runner("cpu").kernel_census(ox.load(out))["ops"]


# ------------------------------------------------------------------- real-model forms (issue 12)

def _integer_kernels(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger")]


def test_dynamic_mode_quantizes_gemm_layers_under_their_names(rng):
    """simplify fuses MatMul+Add into Gemm (transB, alpha, beta as exporters write them); the
    dynamic mode rewrites each as MatMul + Add under the Gemm's name, and its count is true."""
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    mlp (float[4, 16] x) => (float[4, 8] y)
    <float[32, 16] w1 = {{{_fmt(rng.normal(0, 0.3, (32, 16)))}}}, float[32] b1 = {{{_fmt(rng.normal(0, 0.1, 32))}}},
     float[32, 8] w2 = {{{_fmt(rng.normal(0, 0.3, (32, 8)))}}}, float[8] b2 = {{{_fmt(rng.normal(0, 0.1, 8))}}}>
    {{
        h = Gemm <transB = 1, alpha = 0.5> (x, w1, b1)
        r = Relu(h)
        y = Gemm <beta = 2.0> (r, w2, b2)
    }}
    """)
    model.graph.node(0).name, model.graph.node(2).name = "fc1", "fc2"
    feed = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    result = ox.Pipeline([ox.passes.Quantize(mode="dynamic")]).run(model, calibration=[feed])
    stats = result.records[0].statistics
    assert stats["gemm_as_matmul"] == 2 and stats["quantized_nodes"] == 2 and stats["float_nodes"] == {}
    assert "Gemm" not in _ops(result.model) and len(_integer_kernels(result.model)) == 2
    assert result.records[0].kernels["float"] == 0
    expected, got = ort_run(model, feed)[0], ort_run(result.model, feed)[0]
    assert compare([{"y": expected}], [{"y": got}])["y"].cosine > 0.999
    onnx_check(result.model)


def test_opset_11_resize_with_an_empty_roi_is_quantized(rng):
    model = ir.from_onnx_text(f"""
    <ir_version: 6, opset_import: ["" : 11]>
    up (float[1, 2, 4, 4] x) => (float[1, 4, 8, 8] y)
    <float[4, 2, 3, 3] w = {{{_fmt(rng.normal(0, 0.5, (4, 2, 3, 3)))}}}, float[4, 4, 1, 1] w2 = {{{_fmt(rng.normal(0, 0.5, 16))}}}>
    {{
        roi = Constant <value = float[0] {{}}> ()
        scales = Constant <value = float[4] {{1.0, 1.0, 2.0, 2.0}}> ()
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        u = Resize <mode = "nearest"> (c, roi, scales)
        y = Conv (u, w2)
    }}
    """)
    calib = [{"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize()]).run(model, calibration=calib)
    assert result.records[0].statistics["quantized_nodes"] >= 3  # both convolutions and the Resize between
    assert result.records[0].kernels["int8"] >= 2
    expected, got = ort_run(model, calib[0])[0], ort_run(result.model, calib[0])[0]
    assert compare([{"y": expected}], [{"y": got}])["y"].cosine > 0.99


def test_a_model_of_ai_onnx_ml_ops_is_refused_by_name():
    model = ir.from_onnx_text("""
    <ir_version: 8, opset_import: ["" : 15, "ai.onnx.ml" : 3]>
    scaled (float[N, 3] x) => (float[N, 3] y)
    {
        y = ai.onnx.ml.Scaler <offset = [0.5, 0.5, 0.5], scale = [2.0, 2.0, 2.0]> (x)
    }
    """)
    calib = [{"x": np.ones((2, 3), np.float32)}]
    with pytest.raises(ox.OnnxpressError, match=r"quantize: nothing to quantize: .*ai\.onnx\.ml"):
        ox.Pipeline([ox.passes.Quantize()]).run(model, calibration=calib)


def test_a_detector_output_of_boxes_and_scores_keeps_its_scores(rng):
    """Per level, boxes (hundreds) and scores ([0, 1]) are concatenated, then the levels are
    reshaped and concatenated again: every one of those joins stays float, with its reason."""
    weights = {f"w{i}": rng.normal(0, 0.5, (4, 2, 1, 1)) for i in range(4)}
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    head (float[1, 2, 4, 4] x) => (float[1, 8, 32] y)
    <{", ".join(f"float[4, 2, 1, 1] {k} = {{{_fmt(v)}}}" for k, v in weights.items())},
     float[1] big = {{300.0}}, int64[3] flat = {{1, 8, 16}}>
    {{
        b0 = Conv (x, w0)
        boxes0 = Mul(b0, big)
        s0 = Conv (x, w1)
        scores0 = Sigmoid(s0)
        level0 = Concat <axis = 1> (boxes0, scores0)
        b1 = Conv (x, w2)
        boxes1 = Mul(b1, big)
        s1 = Conv (x, w3)
        scores1 = Sigmoid(s1)
        level1 = Concat <axis = 1> (boxes1, scores1)
        f0 = Reshape(level0, flat)
        f1 = Reshape(level1, flat)
        y = Concat <axis = 2> (f0, f1)
    }}
    """)
    calib = [{"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize(method="minmax")]).run(model, calibration=calib)
    floating = result.records[0].statistics["float_nodes"]
    assert sum("mixed ranges" in r or "ranges differ" in r for r in floating.values()) == 5, floating
    assert result.records[0].kernels["int8"] >= 4  # the four convolutions
    expected, got = ort_run(model, calib[0])[0], ort_run(result.model, calib[0])[0]
    scores = lambda y: y[:, 4:]  # noqa: E731
    assert compare([{"s": scores(expected)}], [{"s": scores(got)}])["s"].cosine > 0.99


def test_a_hybrid_quantizes_its_conv_stem_statically_and_its_matmuls_dynamically(rng):
    """Conv stem -> Relu -> tokens -> LayerNorm + attention-style MatMuls: per region."""
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    hybrid (float[1, 3, 8, 8] x) => (float[1, 16, 16] y)
    <float[16, 3, 3, 3] wc = {{{_fmt(rng.normal(0, 0.3, (16, 3, 3, 3)))}}}, float[16] gamma = {{{_fmt(np.ones(16))}}},
     float[16] beta = {{{_fmt(np.zeros(16))}}}, float[16, 16] wq = {{{_fmt(rng.normal(0, 0.3, (16, 16)))}}},
     float[16, 16] wv = {{{_fmt(rng.normal(0, 0.3, (16, 16)))}}}, int64[3] tokens = {{1, 16, 16}}>
    {{
        c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, wc)
        r = Relu(c)
        t = Reshape(r, tokens)
        p = Transpose <perm = [0, 2, 1]> (t)
        n = LayerNormalization <axis = -1> (p, gamma, beta)
        q = MatMul(n, wq)
        v = MatMul(n, wv)
        s = Softmax <axis = -1> (q)
        y = Mul(s, v)
    }}
    """)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    result = ox.Pipeline([ox.passes.Quantize()]).run(model, calibration=calib)
    stats = result.records[0].statistics
    assert stats["preset"] == "transformer" and stats["mode"] == "mixed"
    assert stats["static_nodes"] >= 2 and stats["dynamic_nodes"] == 2  # Conv + Relu; the two MatMuls
    assert len(_integer_kernels(result.model)) == 2
    conv = next(n for n in result.model.graph if n.op_type == "Conv")
    assert conv.inputs[1].producer().op_type == "DequantizeLinear"
    assert result.records[0].kernels["float"] == 0
    expected, got = ort_run(model, calib[0])[0], ort_run(result.model, calib[0])[0]
    assert compare([{"y": expected}], [{"y": got}])["y"].cosine > 0.99
    # Without calibration data the convolutional region stays float and says why.
    plain = ox.Pipeline([ox.passes.Quantize()]).run(model)
    assert "needs calibration data" in plain.records[0].statistics["float_nodes"][conv.name]


def test_the_ops_between_the_last_convolution_and_the_output_stay_float(rng):
    """A 1000-way Softmax's near-uniform probabilities (about 0.001) are all 0 at int8's 1/255:
    the Softmax (and the Reshape after it) stay float, the convolution is int8."""
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    classifier (float[1, 8, 4, 4] x) => (float[1, 1000] y)
    <float[1000, 8, 4, 4] w = {{{_fmt(rng.normal(0, 0.001, (1000, 8, 4, 4)))}}}, int64[2] flat = {{1, 1000}}>
    {{
        c = Conv (x, w)
        p = Softmax <axis = 1> (c)
        y = Reshape(p, flat)
    }}
    """)
    calib = [{"x": rng.standard_normal((1, 8, 4, 4)).astype(np.float32)} for _ in range(4)]
    result = ox.Pipeline([ox.passes.Quantize(method="minmax")]).run(model, calibration=calib)
    floating = result.records[0].statistics["float_nodes"]
    assert sorted(r for r in floating.values()) == ["feeds the model's output 'y': int8 there only adds error"] * 2
    assert result.records[0].kernels["int8"] == 1
    expected, got = ort_run(model, calib[0])[0], ort_run(result.model, calib[0])[0]
    assert compare([{"y": expected}], [{"y": got}])["y"].cosine > 0.999


def _scales_and_zero_points(model: ir.Model) -> tuple[np.ndarray, np.ndarray]:
    scales, zero_points = [], []
    for node in model.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scales.append(node.inputs[1].const_value.numpy().ravel())
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                zero_points.append(node.inputs[2].const_value.numpy().ravel().astype(np.int64))
    return np.concatenate(scales), np.concatenate(zero_points)


def test_fixed_point_scales_are_powers_of_two_with_zero_points_of_zero(digits):
    model, calib, data, labels = digits
    free = ox.Pipeline([ox.passes.Quantize(scale="free")]).run(model, calibration=calib)
    fixed = ox.Pipeline([ox.passes.Quantize(scale="pow2")]).run(model, calibration=calib)
    scales, zero_points = _scales_and_zero_points(fixed.model)
    exponents = np.log2(scales.astype(np.float64))
    assert scales.size > 20 and np.array_equal(exponents, np.round(exponents))  # activations, weights, biases
    assert not zero_points.any()
    free_scales = _scales_and_zero_points(free.model)[0].astype(np.float64)
    assert not np.array_equal(np.log2(free_scales), np.round(np.log2(free_scales)))  # the test can fail
    stats = fixed.records[0].statistics
    assert stats["scale"] == "pow2" and stats["activation_type"] == "int8" and stats["mode"] == "static"
    assert 0.5 <= stats["pow2"]["mean_factor"] < 2.0 and stats["pow2"]["activation_tensors"] >= 10
    assert fixed.records[0].kernels["int8"] == 5  # still fused into ONNX Runtime's int8 kernels
    reference = accuracy(runtime.run_model(model, data), labels)
    assert accuracy(runtime.run_model(fixed.model, data), labels) >= reference - 0.01
    onnx_check(fixed.model)


def test_the_mcu_target_gives_fixed_point_by_default(digits):
    model, calib, _, _ = digits
    on_mcu = ox.Pipeline([ox.passes.Quantize()], target="mcu").run(model, calibration=calib)
    on_cpu = ox.Pipeline([ox.passes.Quantize()], target="cpu").run(model, calibration=calib)
    assert on_mcu.records[0].statistics["scale"] == "pow2"
    assert on_cpu.records[0].statistics["scale"] == "free"


def test_fixed_point_makes_a_transformer_static(rng):
    model = _transformer()
    result = ox.Pipeline([ox.passes.Quantize(scale="pow2")]).run(model, calibration=_sequence_feeds(16))
    stats = result.records[0].statistics
    assert stats["mode"] == "static" and stats["preset"] == "transformer"
    assert "DynamicQuantizeLinear" not in _ops(result.model)
    scales, zero_points = _scales_and_zero_points(result.model)
    exponents = np.log2(scales.astype(np.float64))
    assert np.array_equal(exponents, np.round(exponents)) and not zero_points.any()
    assert result.records[0].cosine > 0.98
