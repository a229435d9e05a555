import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import runtime
from onnxpress.metrics import accuracy

from conftest import onnx_check, ort_run


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {n.name: n.inputs[1].const_value.numpy() for n in model.graph
            if n.op_type in ("Conv", "Gemm") and n.inputs[1].const_value is not None}


def test_unstructured_pruned_weights_are_exactly_zero_where_reported(digits):
    model, calib, _, _ = digits
    result = ox.Pipeline([ox.passes.Prune(sparsity=0.4, compensate=False)]).run(model, calibration=calib)
    before, after = _weights(model), _weights(result.model)
    for name, layer in result.records[0].statistics["layers"].items():
        weight = after[name]
        assert layer["nonzero"] == np.count_nonzero(weight)
        assert layer["sparsity"] == pytest.approx(0.4, abs=0.01)
        kept = weight != 0  # the survivors are the largest magnitudes, unchanged
        assert np.abs(before[name][kept]).min() >= np.abs(before[name][~kept]).max() - 1e-7
        np.testing.assert_array_equal(weight[kept], before[name][kept])
    onnx_check(result.model)


def test_global_scope_uses_one_threshold(digits):
    model, calib, _, _ = digits
    result = ox.Pipeline([ox.passes.Prune(sparsity=0.5, scope="global")]).run(model, calibration=calib)
    stats = result.records[0].statistics
    sparsities = [layer["sparsity"] for layer in stats["layers"].values()]
    assert max(sparsities) - min(sparsities) > 0.1 and stats["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_n_m_patterns_hold_in_every_group(digits):
    model, calib, _, _ = digits
    result = ox.Pipeline([ox.passes.Prune(granularity="n:m", n=2, m=4)]).run(model, calibration=calib)
    for node in result.model.graph:
        if node.op_type == "Conv":
            weight = node.inputs[1].const_value.numpy()  # [O, I, kh, kw]: groups along I
            moved = np.moveaxis(weight, 1, -1)
            length = moved.shape[-1] // 4 * 4
            groups = moved[..., :length].reshape(*moved.shape[:-1], -1, 4)
            assert (np.count_nonzero(groups, axis=-1) <= 2).all()
        if node.op_type == "Gemm":
            weight = node.inputs[1].const_value.numpy()  # transB=1: [N, K], groups along K
            groups = weight[:, : weight.shape[1] // 4 * 4].reshape(weight.shape[0], -1, 4)
            assert (np.count_nonzero(groups, axis=-1) <= 2).all()


def test_structured_pruning_removes_channels_and_keeps_the_graph_valid(digits):
    model, calib, data, labels = digits
    prune = ox.passes.Prune(granularity="structured", criterion="importance", sparsity=0.3)
    result = ox.Pipeline([prune]).run(model, calibration=calib)
    layers = result.records[0].statistics["layers"]
    # 30 % of 32 and 64 channels, kept counts rounded to multiples of 8 (channel_multiple)
    assert {name: layer["channels_after"] for name, layer in layers.items()} == {
        "node_Conv_26": 24, "node_Conv_27": 48, "node_linear": 48}
    assert "first or last" in result.records[0].statistics["skipped"]["node_Conv_25"]
    assert result.records[0].params_after < 0.6 * result.records[0].params_before
    assert accuracy(runtime.run_model(result.model, data), labels) > 0.95
    onnx_check(result.model)


def test_structured_outputs_equal_the_original_when_removed_channels_are_zero(rng):
    # Channels 1 and 3 of the first conv are all-zero (weights and bias): removing them, their
    # BatchNormalization entries, and the next conv's matching input channels changes nothing.
    w1 = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    w1[[1, 3]] = 0
    b1 = rng.standard_normal(6).astype(np.float32)
    b1[[1, 3]] = 0
    w2 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    fmt = lambda a: ", ".join(f"{v:.6f}" for v in a.ravel())  # noqa: E731
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 2, 5, 5] x) => (float[1, 4, 5, 5] y)
    <float[6, 2, 3, 3] w1 = {{{fmt(w1)}}}, float[6] b1 = {{{fmt(b1)}}}, float[6] s = {{1, 1, 1, 1, 1, 1}},
     float[6] t = {{0, 0, 0, 0, 0, 0}}, float[6] mu = {{0, 0, 0, 0, 0, 0}}, float[6] var = {{1, 1, 1, 1, 1, 1}},
     float[4, 6, 1, 1] w2 = {{{fmt(w2)}}}>
    {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        n = BatchNormalization (c, s, t, mu, var)
        r = Relu(n)
        y = Conv(r, w2)
    }}
    """)
    model.graph.node(0).name, model.graph.node(3).name = "conv1", "conv2"
    prune = ox.passes.Prune(granularity="structured", sparsity=2 / 6, skip_first_last=False, min_channels=1,
                            op_types=["Conv"])
    result = prune(model)
    first = result.model.graph.node(0)
    assert first.inputs[1].const_value.shape == (4, 2, 3, 3)
    assert result.statistics["layers"]["conv1"]["removed"] == 2
    assert "graph output" in result.statistics["skipped"]["conv2"]
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(ort_run(result.model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_residual_joins_are_left_alone_with_the_reason(rng):
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    fmt = ", ".join(f"{v:.5f}" for v in w.ravel())
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 4, 6, 6] x) => (float[1, 4, 6, 6] y)
    <float[4, 4, 3, 3] w1 = {{{fmt}}}, float[4, 4, 3, 3] w2 = {{{fmt}}}>
    {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        r = Relu(a)
        s = Add(r, x)
        y = Conv <pads = [1, 1, 1, 1]> (s, w2)
    }}
    """)
    model.graph.node(0).name, model.graph.node(3).name = "conv1", "conv2"
    prune = ox.passes.Prune(granularity="structured", sparsity=0.5, skip_first_last=False, min_channels=1,
                            op_types=["Conv"])
    result = prune(model)
    assert "channels reach Add 'node" in result.statistics["skipped"]["conv1"]
    assert "graph output" in result.statistics["skipped"]["conv2"]
    assert result.modified is False


def test_criteria_order_on_structured_pruning(digits):
    model, calib, data, labels = digits
    scores = {}
    for criterion in ("importance", "magnitude", "random"):
        result = ox.Pipeline([ox.passes.Prune(granularity="structured", criterion=criterion, sparsity=0.3,
                                              compensate=False)]).run(model, calibration=calib)
        scores[criterion] = accuracy(runtime.run_model(result.model, data), labels)
    assert scores["importance"] > scores["magnitude"] > scores["random"]


def test_importance_needs_calibration_and_bad_options(digits):
    model, _, _, _ = digits
    with pytest.raises(ox.PipelineError, match="prune: calibration data needed"):
        ox.Pipeline([ox.passes.Prune(criterion="importance")]).run(model)
    with pytest.raises(ValueError, match="prune: sparsity must be in"):
        ox.passes.Prune(sparsity=1.0)
    with pytest.raises(ValueError, match="prune: n:m needs 0 < n < m"):
        ox.passes.Prune(granularity="n:m", n=4, m=4)


def test_concat_joins_shift_the_removed_channels(rng):
    # conv_b (kept, 4 channels) and conv_a (pruned) are concatenated: the channels removed from
    # conv_a sit at offset 4 in the consumer's input.
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1[[0, 5]] = 0  # all-zero channels: removing them must not change the output
    w2 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w3 = rng.standard_normal((5, 12, 1, 1)).astype(np.float32)
    fmt = lambda a: ", ".join(f"{v:.6f}" for v in a.ravel())  # noqa: E731
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 3, 6, 6] x) => (float[1, 5, 6, 6] y)
    <float[8, 3, 3, 3] w1 = {{{fmt(w1)}}}, float[4, 3, 3, 3] w2 = {{{fmt(w2)}}}, float[5, 12, 1, 1] w3 = {{{fmt(w3)}}}>
    {{
        b = Conv <pads = [1, 1, 1, 1]> (x, w2)
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        c = Concat <axis = 1> (b, a)
        y = Conv(c, w3)
    }}
    """)
    for index, name in enumerate(("conv_b", "conv_a", "concat", "conv_out")):
        model.graph.node(index).name = name
    prune = ox.passes.Prune(granularity="structured", sparsity=0.25, skip=["conv_b", "conv_out"],
                            skip_first_last=False, min_channels=1, channel_multiple=1, op_types=["Conv"])
    result = prune(model)
    assert result.statistics["layers"]["conv_a"]["removed"] == 2
    consumer = next(n for n in result.model.graph if n.name == "conv_out")
    assert consumer.inputs[1].const_value.shape == (5, 10, 1, 1)
    original = model.graph.initializers["w3"].const_value.numpy()
    np.testing.assert_array_equal(consumer.inputs[1].const_value.numpy(), np.delete(original, [4, 9], axis=1))
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ort_run(result.model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert result.statistics["flops_after"] < result.statistics["flops_before"]


def test_statistics_report_flops_and_compressed_size(digits):
    model, calib, _, _ = digits
    structured = ox.Pipeline([ox.passes.Prune(granularity="structured", sparsity=0.3)]).run(
        model, calibration=calib).records[0].statistics
    assert structured["flops_after"] < 0.8 * structured["flops_before"]
    stats = ox.Pipeline([ox.passes.Prune(sparsity=0.5)]).run(model, calibration=calib).records[0].statistics
    assert stats["flops_after"] == stats["flops_before"]  # zeros cost the same on dense kernels
    assert stats["deflated_bytes_after"] < 0.7 * stats["deflated_bytes_before"]


@pytest.mark.slow
def test_resnet_residual_joins_stay_unpruned_and_the_model_stays_valid():
    torch = pytest.importorskip("torch")
    from onnxpress.samples import architectures

    model = ox.export(architectures.resnet18(), torch.randn(1, 3, 64, 64))
    rng = np.random.default_rng(0)
    images = [{"input": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(8)]
    prune = ox.passes.Prune(granularity="structured", criterion="importance", sparsity=0.3)
    result = ox.Pipeline([prune], golden_samples=2).run(model, calibration=images)
    stats = result.records[0].statistics
    assert sum("channels reach Add" in r for r in stats["skipped"].values()) >= 8  # each block's second conv, the stem
    assert stats["pruned_layers"] == 8  # each block's first conv
    assert all(layer["channels_after"] % 8 == 0 for layer in stats["layers"].values())
    assert result.records[0].checked and ort_run(result.model, images[0])[0].shape == (1, 1000)
