"""Binary weights (``weightonly`` with ``bits=1``, ``passes/_binary.py``): packing, the expansion ONNX
Runtime folds, exact outputs against the float α·sign(W) model, what stays float, the data-aware
scale, sizes, and the digits CNN through ``WeightOnly(bits=1)`` in a pipeline, with and without
distillation afterwards."""
import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import runtime
from onnxpress.errors import PassError
from onnxpress.metrics import accuracy
from onnxpress.passes import _binary

from conftest import onnx_check, ort_run


def _fmt(array) -> str:
    return ", ".join(f"{v:.7g}" for v in np.ravel(array))


def _cnn(seed: int = 0, opset: int = 18) -> ir.Model:
    """Conv → Conv (stride 2) → Gemm (transB) → MatMul (533 weights: not a multiple of 8) → Gemm
    (no transB); every weight over ``MIN_ELEMENTS``."""
    rng = np.random.default_rng(seed)
    shapes = {"w1": (16, 3, 3, 3), "w2": (16, 16, 3, 3), "w3": (41, 144), "w4": (41, 13), "w5": (13, 24)}
    fan_in = {"w1": 27, "w2": 144, "w3": 144, "w4": 41, "w5": 13}
    w = {k: rng.standard_normal(s) / np.sqrt(fan_in[k]) for k, s in shapes.items()}
    b = {k: 0.1 * rng.standard_normal(n) for k, n in (("b1", 16), ("b3", 41), ("b5", 24))}
    declared = ", ".join(f"float[{', '.join(map(str, a.shape))}] {k} = {{{_fmt(a)}}}" for k, a in {**w, **b}.items())
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    cnn (float[B, 3, 6, 6] x) => (float[B, 24] y)
    <{declared}, int64[2] flat = {{0, -1}}>
    {{
        c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        r1 = Relu(c1)
        c2 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (r1, w2)
        r2 = Relu(c2)
        f = Reshape(r2, flat)
        g3 = Gemm <transB = 1> (f, w3, b3)
        r3 = Relu(g3)
        m4 = MatMul(r3, w4)
        r4 = Relu(m4)
        y = Gemm(r4, w5, b5)
    }}
    """)
    for node, name in zip([n for n in model.graph if n.op_type in ("Conv", "Gemm", "MatMul")],
                          ("conv1", "conv2", "gemm3", "matmul4", "gemm5")):
        node.name = name
    return model


def _feeds(count: int, seed: int, batch: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)} for _ in range(count)]


def _float_reference(original: ir.Model, binarized: ir.Model, stats: dict) -> ir.Model:
    """``original`` with each binarized layer's weight replaced by α·sign(W), α read from the
    scale initializer the binarized model stores."""
    reference = original.clone()
    for node in reference.graph:
        if node.name in stats["layers"]:
            alpha = binarized.graph.initializers[stats["layers"][node.name]["scale_initializer"]].const_value.numpy()
            weight = node.inputs[1].const_value.numpy()
            node.inputs[1].const_value = ir.tensor(alpha * np.where(weight >= 0, 1, -1).astype(weight.dtype),
                                                   name=node.inputs[1].name)
    return reference


def _relative_error(model: ir.Model, reference: ir.Model, feeds) -> float:
    got = np.concatenate([ort_run(model, feed)[0] for feed in feeds])
    want = np.concatenate([ort_run(reference, feed)[0] for feed in feeds])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ------------------------------------------------------------------------------- packing

@pytest.mark.parametrize("shape", [(8,), (5,), (41, 13), (16, 3, 3, 3)])
def test_pack_unpack_round_trip_is_exact(rng, shape):
    weight = rng.standard_normal(shape).astype(np.float32)
    weight.ravel()[::7] = 0.0  # sign(0) = +1
    packed = _binary.pack(weight)
    assert packed.dtype == np.uint8 and packed.shape == (-(-weight.size // 8), 1)
    np.testing.assert_array_equal(_binary.unpack(packed, shape), np.where(weight >= 0, 1.0, -1.0))


# --------------------------------------------------------------------------- the rewrite

def test_ort_outputs_equal_the_float_alpha_sign_model_exactly():
    original = _cnn()
    model = original.clone()
    count, stats = _binary.binarize(model, keep_first_last=False)
    assert count == 5 and stats["binarized"] == 5 and stats["skipped"] == {}
    reference = _float_reference(original, model, stats)
    for feed in _feeds(3, seed=1):
        np.testing.assert_array_equal(ort_run(model, feed)[0], ort_run(reference, feed)[0])
    for node in original.graph:  # α = mean|W| per output channel
        if node.name in stats["layers"]:
            weight = node.inputs[1].const_value.numpy()
            transposed = node.op_type == "Conv" or node.attributes.get_int("transB", 0)
            axis = 0 if transposed else 1  # the output channels: Conv [N, C, kh, kw], Gemm [N, K] with transB
            alpha = model.graph.initializers[stats["layers"][node.name]["scale_initializer"]].const_value.numpy()
            want = np.mean(np.abs(weight), axis=tuple(a for a in range(weight.ndim) if a != axis), keepdims=True)
            np.testing.assert_allclose(alpha, want, rtol=1e-6)
    onnx_check(model)


def test_each_layer_reads_the_expansion_and_the_float_weights_are_gone():
    model = _cnn()
    weights = {node.name: node.inputs[1] for node in model.graph if node.op_type in ("Conv", "Gemm", "MatMul")}
    _, stats = _binary.binarize(model, keep_first_last=False)
    for node in model.graph:
        if node.name in weights:
            producer = node.inputs[1].producer()
            assert producer is not None and producer.op_type == "Mul"
            assert producer.inputs[1] is model.graph.initializers[stats["layers"][node.name]["scale_initializer"]]
            assert weights[node.name].name not in model.graph.initializers
    packed = [v for name, v in model.graph.initializers.items() if name.endswith(".binary_signs")]
    assert len(packed) == 5 and all(v.const_value.dtype == ir.DataType.UINT8 for v in packed)


def test_onnx_runtime_folds_the_expansion_when_it_builds_the_session(tmp_path):
    import onnxruntime as ort

    model = _cnn()
    _binary.binarize(model, keep_first_last=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert ops.isdisjoint({"Cast", "Div", "Sub", "Slice"}) and "Mul" not in ops  # computed once, at load


def test_first_and_last_layers_are_kept_by_default():
    model = _cnn()
    count, stats = _binary.binarize(model)
    assert count == 3 and set(stats["layers"]) == {"conv2", "gemm3", "matmul4"}
    assert "first or last" in stats["skipped"]["conv1"] and "first or last" in stats["skipped"]["gemm5"]
    first = next(node for node in model.graph if node.name == "conv1")
    assert first.inputs[1].const_value is not None and first.inputs[1].const_value.dtype == ir.DataType.FLOAT


def test_exclude_keeps_the_named_nodes_and_reports_unknown_names():
    model = _cnn()
    count, stats = _binary.binarize(model, exclude=["gemm3", "no_such_node"])
    assert count == 2 and set(stats["layers"]) == {"conv2", "matmul4"}
    assert stats["skipped"]["gemm3"] == "excluded"
    assert stats["exclude_unmatched"] == ["no_such_node"]


def test_a_second_run_changes_nothing():
    model = _cnn()
    _binary.binarize(model)
    before = ir.serde.serialize_model(model).SerializeToString()
    count, stats = _binary.binarize(model)
    assert count == 0 and "binarized already" in stats["skipped"]["conv2"]
    assert "first or last" in stats["skipped"]["conv1"]  # the binarized layers still count as weight layers
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_a_graph_without_constant_weights_is_left_untouched(minimal_model):
    before = ir.serde.serialize_model(minimal_model).SerializeToString()
    count, stats = _binary.binarize(minimal_model)
    assert count == 0 and stats["binarized"] == 0
    assert ir.serde.serialize_model(minimal_model).SerializeToString() == before


def test_depthwise_tiny_and_shared_weights_stay_float_with_the_reason(rng):
    depthwise = rng.standard_normal((32, 1, 3, 3))
    tiny = rng.standard_normal((8, 8))
    shared = rng.standard_normal((32, 32))
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 32, 4, 4] x, float[1, 32] v, float[1, 8] u) => (float[1, 32, 4, 4] y, float[1, 32] s, float[1, 8] t)
    <float[32, 1, 3, 3] dw = {{{_fmt(depthwise)}}}, float[8, 8] tiny = {{{_fmt(tiny)}}},
     float[32, 32] shared = {{{_fmt(shared)}}}>
    {{
        y = Conv <group = 32, pads = [1, 1, 1, 1]> (x, dw)
        h = MatMul(v, shared)
        s = MatMul(h, shared)
        t = MatMul(u, tiny)
    }}
    """)
    for node, name in zip(model.graph, ("depthwise", "first_use", "second_use", "small")):
        node.name = name
    count, stats = _binary.binarize(model, keep_first_last=False)
    assert count == 0
    assert "depthwise" in stats["skipped"]["depthwise"]
    assert "shared" in stats["skipped"]["first_use"] and "shared" in stats["skipped"]["second_use"]
    assert "64 weights" in stats["skipped"]["small"]


def test_below_opset_10_the_signs_are_stored_as_int8_and_outputs_stay_exact():
    original = _cnn(opset=9)
    model = original.clone()
    count, stats = _binary.binarize(model, keep_first_last=False)
    assert count == 5 and stats["storage"].startswith("int8")
    assert {v.const_value.dtype for n, v in model.graph.initializers.items() if n.endswith(".binary_signs")} == {
        ir.DataType.INT8}
    reference = _float_reference(original, model, stats)
    feed = _feeds(1, seed=2)[0]
    np.testing.assert_array_equal(ort_run(model, feed)[0], ort_run(reference, feed)[0])
    onnx_check(model)


def test_the_binarized_weights_take_about_a_32nd_of_the_bytes(rng):
    weight = rng.standard_normal((512, 256)).astype(np.float32)
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 512] x) => (float[1, 256] y)
    <float[512, 256] w = {{{_fmt(weight)}}}>
    {{
        y = MatMul(x, w)
    }}
    """)
    before = len(ir.serde.serialize_model(model).SerializeToString())
    count, stats = _binary.binarize(model, keep_first_last=False)
    after = len(ir.serde.serialize_model(model).SerializeToString())
    assert count == 1 and stats["bytes_before"] == weight.nbytes
    assert next(iter(stats["layers"].values()))["bytes_after"] == 16384 + 1024 + 16  # signs, scales, shape
    # the file: 524 KB -> 19 KB (measured 27.7x: the signs are 1/32, the scales and ~1.2 KB of
    # expansion nodes and shared constants come on top)
    assert before / after > 25


# -------------------------------------------------------------------------- data-aware scale

def test_optimal_scale_beats_the_mean_scale_on_output_error():
    original = _cnn()
    calibration, held_out = _feeds(16, seed=3), _feeds(8, seed=4)
    errors, layer_stats = {}, {}
    for scale in ("mean", "optimal"):
        model = original.clone()
        _, stats = _binary.binarize(model, scale=scale, keep_first_last=False, feeds=calibration)
        errors[scale] = _relative_error(model, original, held_out)
        layer_stats[scale] = stats["layers"]
        onnx_check(model)
    assert all("output_error" in layer for layer in layer_stats["mean"].values())
    fitted = [layer for layer in layer_stats["optimal"].values() if layer["fit"] == "optimal"]
    assert fitted and all(layer["output_error"] < layer["output_error_mean"] for layer in fitted)
    # measured: relative error of the output on held-out inputs 0.80 (mean) -> 0.68 (optimal); the
    # signs of Gaussian weights alone leave sqrt(1 - 2/pi) = 0.60 of each layer's weights
    assert errors["optimal"] < 0.9 * errors["mean"]


def test_optimal_scale_without_calibration_data_names_the_option():
    with pytest.raises(PassError, match="binary_scale='optimal'"):
        _binary.binarize(_cnn(), scale="optimal")


def test_an_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="binary_scale"):
        _binary.binarize(_cnn(), scale="median")


# ----------------------------------------------------------------------------- digits CNN

def test_digits_accuracy_drops_and_the_optimal_scale_wins_back_part(digits):
    model, calibration, data, labels = digits
    scores = {"fp32": accuracy(runtime.run_model(model, data), labels)}
    for scale in ("mean", "optimal"):
        result = ox.Pipeline([ox.passes.WeightOnly(bits=1, binary_scale=scale)]).run(model, calibration=calibration)
        stats = result.records[0].statistics
        assert stats["bits"] == 1 and stats["scale"] == scale and result.records[0].name == "weightonly"
        assert set(stats["layers"]) == {"node_Conv_26", "node_Conv_27", "node_linear"}
        assert stats["bytes_after"] < stats["bytes_before"] / 25
        scores[scale] = accuracy(runtime.run_model(result.model, data), labels)
        onnx_check(result.model)
    # measured on the 397 held-out images: fp32 0.995, mean 0.80, optimal 0.97
    assert scores["mean"] < scores["fp32"] - 0.1
    assert scores["optimal"] > scores["mean"] + 0.1


def test_distill_after_binarization_wins_back_accuracy(digits):
    torch = pytest.importorskip("torch")
    model, calibration, data, labels = digits
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        binarize = ox.passes.WeightOnly(bits=1)
        alone = ox.Pipeline([binarize], golden_samples=0, check=False).run(model, calibration=calibration)
        # steps, not time_budget: the steps a budget buys depend on how busy the machine is
        distill = ox.passes.Distill(steps=300, threads=1, learning_rate=1e-3)
        both = ox.Pipeline([binarize, distill], golden_samples=0).run(model, calibration=calibration)
    finally:
        torch.set_num_threads(previous)
    before = accuracy(runtime.run_model(alone.model, data), labels)
    after = accuracy(runtime.run_model(both.model, data), labels)
    # measured: 0.80 binarized alone, 0.977 after 300 steps (the float first and last layers and the
    # biases train; the binarized layers' signs stay as they were)
    assert after > before + 0.1
    for node in both.model.graph:  # still binary: the binarized layers read the expansion
        if node.name in alone.records[0].statistics["layers"]:
            assert node.inputs[1].producer() is not None and node.inputs[1].producer().op_type == "Mul"
