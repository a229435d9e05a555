import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress.passes.lowrank import _truncated_svd

from conftest import onnx_check, ort_run


def _fmt(array) -> str:
    return ", ".join(f"{v:.6f}" for v in np.ravel(array))


def _low_rank_weight(k: int, n: int, rank: int, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(rank)
    return (weight + noise * rng.standard_normal((k, n))).astype(np.float32)


def _matmul_model(weight: np.ndarray, name: str = "mm") -> ir.Model:
    k, n = weight.shape
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[B, {k}] x) => (float[B, {n}] y)
    <float[{k}, {n}] w = {{{_fmt(weight)}}}>
    {{ y = MatMul(x, w) }}
    """)
    model.graph.node(0).name = name
    return model


def _feeds(k: int, count: int = 8, seed: int = 1, batch: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, k)).astype(np.float32)} for _ in range(count)]


def test_factor_shapes_and_exact_reconstruction_of_a_low_rank_weight():
    weight = _low_rank_weight(64, 96, rank=8)
    model = _matmul_model(weight)
    result = ox.passes.LowRank(rank=8)(model)
    assert result.modified
    ops = [(n.op_type, tuple(n.inputs[1].const_value.shape)) for n in result.model.graph]
    assert ops == [("MatMul", (64, 8)), ("MatMul", (8, 96))]
    assert result.model.graph.outputs[0].name == "y"
    for feed in _feeds(64):
        np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(model, feed)[0], rtol=1e-4, atol=1e-4)
    layer = result.statistics["layers"]["mm"]
    assert layer["rank"] == 8 and layer["energy_kept"] > 0.99999 and layer["relative_error"] < 1e-5
    assert layer["params_before"] == 64 * 96 and layer["params_after"] == 8 * (64 + 96)
    onnx_check(result.model)


def test_layers_where_factoring_would_not_pay_are_skipped():
    model = _matmul_model(_low_rank_weight(64, 64, rank=64, seed=2))
    result = ox.passes.LowRank(rank=40)(model)  # 40 * 128 > 64 * 64 * 0.9
    assert result.modified is False
    assert "would not save" in result.statistics["skipped"]["mm"]
    assert [n.op_type for n in result.model.graph] == ["MatMul"]
    tiny = ox.passes.LowRank(rank=1)(_matmul_model(_low_rank_weight(8, 8, rank=2)))
    assert "fewer than min_elements" in tiny.statistics["skipped"]["mm"]


@pytest.mark.parametrize("trans_a, trans_b, alpha, beta", [(0, 0, 1.0, 1.0), (0, 1, 0.5, 2.0), (1, 1, 1.5, 0.25)])
def test_gemm_attribute_variants(trans_a, trans_b, alpha, beta):
    k, n, rank = 48, 80, 6
    weight = _low_rank_weight(k, n, rank, seed=3)
    stored = weight.T if trans_b else weight
    x_shape = f"[{k}, B]" if trans_a else f"[B, {k}]"
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float{x_shape} x) => (float[B, {n}] y)
    <float[{stored.shape[0]}, {stored.shape[1]}] w = {{{_fmt(stored)}}}, float[{n}] c = {{{_fmt(np.linspace(-1, 1, n))}}}>
    {{ y = Gemm <alpha = {alpha}, beta = {beta}, transA = {trans_a}, transB = {trans_b}> (x, w, c) }}
    """)
    result = ox.passes.LowRank(rank=rank, min_elements=0)(model)
    assert [n.op_type for n in result.model.graph] == ["Gemm", "Gemm"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((k, 5) if trans_a else (5, k)).astype(np.float32)
    np.testing.assert_allclose(ort_run(result.model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_one_by_one_convolutions_become_two(rng):
    weight = _low_rank_weight(32, 48, rank=4, seed=4)  # [K=in, N=out]
    conv_weight = weight.T[:, :, None, None]
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[1, 32, 5, 5] x) => (float[1, 48, 5, 5] y)
    <float[48, 32, 1, 1] w = {{{_fmt(conv_weight)}}}, float[48] b = {{{_fmt(np.linspace(0, 1, 48))}}}>
    {{ y = Conv <kernel_shape = [1, 1]> (x, w, b) }}
    """)
    result = ox.passes.LowRank(rank=4, min_elements=0)(model)
    shapes = [tuple(n.inputs[1].const_value.shape) for n in result.model.graph]
    assert shapes == [(4, 32, 1, 1), (48, 4, 1, 1)]
    x = rng.standard_normal((1, 32, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(ort_run(result.model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_batched_matmul_weights_are_left_alone():
    weight = np.ones((2, 64, 64), np.float32)
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[2, 3, 64] x) => (float[2, 3, 64] y)
    <float[2, 64, 64] w = {{{_fmt(weight)}}}>
    {{ y = MatMul(x, w) }}
    """)
    model.graph.node(0).name = "batched"
    result = ox.passes.LowRank(rank=2)(model)
    assert result.modified is False
    assert "batched MatMul" in result.statistics["skipped"]["batched"]


def test_a_pass_runs_in_a_context_built_by_hand():
    from onnxpress.calibration import from_feeds
    from onnxpress.context import PassContext
    from onnxpress.runtime import Runner

    model = _matmul_model(_low_rank_weight(64, 96, rank=8, noise=0.01))
    lowrank = ox.passes.LowRank(method="activation", rank=8)
    context = PassContext(runner=Runner("cpu"), calibration=from_feeds(_feeds(64)))
    result = lowrank.run_in(context, model)
    assert result.modified and result.statistics["layers"]["mm"]["output_error_measured"]
    assert lowrank.context is None  # bound only while it runs


def test_rank_selection_by_energy_ratio_tolerance_and_budget():
    weights = {"big": _low_rank_weight(96, 128, rank=12, noise=0.01, seed=6),
               "small": _low_rank_weight(96, 64, rank=30, noise=0.01, seed=7)}
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[B, 96] x) => (float[B, 128] y, float[B, 64] z)
    <float[96, 128] w1 = {{{_fmt(weights["big"])}}}, float[96, 64] w2 = {{{_fmt(weights["small"])}}}>
    {{ y = MatMul(x, w1)
       z = MatMul(x, w2) }}
    """)
    model.graph.node(0).name, model.graph.node(1).name = "big", "small"
    energy = ox.passes.LowRank(energy=0.999)(model.clone())
    assert energy.statistics["layers"]["big"]["rank"] <= 14 and energy.statistics["layers"]["big"]["energy_kept"] >= 0.999
    ratio = ox.passes.LowRank(rank_ratio=0.25)(model.clone())
    assert ratio.statistics["layers"]["big"]["rank"] == 24
    stats = ox.passes.LowRank(budget=0.4)(model.clone()).statistics
    assert stats["params_after"] <= 0.4 * stats["params_before"] + 96 + 128
    # The allocation gives the layer that needs more rank more of the budget.
    assert stats["layers"]["small"]["rank"] > stats["layers"]["big"]["rank"] * 1.5
    calib = _feeds(96, count=10)
    tolerance = ox.Pipeline([ox.passes.LowRank(method="activation", tolerance=0.05)], golden_samples=0).run(
        model, calibration=calib).records[0]
    assert all(layer["relative_error"] <= 0.05 for layer in tolerance.statistics["layers"].values())


def test_a_second_run_changes_nothing_when_nothing_pays():
    model = _matmul_model(_low_rank_weight(64, 96, rank=8))
    first = ox.passes.LowRank(rank=8)(model).model
    assert ox.passes.LowRank(rank=8)(first).modified is False


def test_randomized_svd_matches_the_exact_top_triplets(rng):
    matrix = rng.standard_normal((800, 900)) @ np.diag(np.geomspace(100, 0.01, 900)) @ np.linalg.qr(
        rng.standard_normal((900, 900)))[0]
    u, s, vt = _truncated_svd(matrix, 20, True, 0)
    eu, es, evt = np.linalg.svd(matrix, full_matrices=False)
    assert u.shape == (800, 20) and vt.shape == (20, 900)
    np.testing.assert_allclose(s, es[:20], rtol=0.02)  # a slowly decaying spectrum: the hard case
    best = np.linalg.norm(matrix - (eu[:, :20] * es[:20]) @ evt[:20])
    assert np.linalg.norm(matrix - (u * s) @ vt) <= 1.01 * best


def test_activation_method_needs_calibration():
    model = _matmul_model(_low_rank_weight(64, 96, rank=8))
    with pytest.raises(ox.PipelineError, match="lowrank: calibration data needed"):
        ox.Pipeline([ox.passes.LowRank(method="activation", rank=4)]).run(model)
    with pytest.raises(ir.passes.PreconditionError, match="lowrank: calibration data needed"):
        ox.passes.LowRank(tolerance=0.05)(model)  # called directly, without a context


@pytest.mark.parametrize("options, message", [
    (dict(rank=4, budget=0.5), "give one rank selection, got rank, budget"),
    (dict(method="qr"), "lowrank: method must be"),
    (dict(budget=1.5), "lowrank: budget must be in"),
    (dict(rank=0), "lowrank: rank must be >= 1"),
    (dict(tolerance=0.0), "lowrank: tolerance"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ox.passes.LowRank(**options)


def test_lowrank_then_quantize_in_one_recipe(tmp_path):
    from onnxpress.recipe import load_recipe

    weight = _low_rank_weight(128, 128, rank=16, noise=0.001, seed=8)
    model = _matmul_model(weight)
    feeds = _feeds(128, count=20)
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in feeds]))
    (tmp_path / "r.toml").write_text('[calibration]\nsource = "calib.npz"\nbatch_size = 4\n'
                                     '[[passes]]\nname = "lowrank"\nmethod = "activation"\nbudget = 0.3\n'
                                     '[[passes]]\nname = "quantize"\npreset = "transformer"\n')
    result = ox.Pipeline.from_recipe(load_recipe(tmp_path / "r.toml")).run(model)
    lowrank, quantize = result.records
    assert lowrank.statistics["factored"] == 1 and quantize.kernels["int8"] == 2
    assert quantize.cosine > 0.99
    from onnxpress.validate import validate

    report = validate(result.model, reference=model, data=feeds, measure_memory=False, measure_latency=False)
    assert report.metrics["y"].cosine > 0.99 and report.unplaced == []


def test_budget_allocation_weighs_layers_by_measured_sensitivity():
    # Two chained layers with a Tanh between them: their errors reach the output differently.
    # The measured allocation moves rank towards the more sensitive layer and lowers the
    # output error at the same budget.
    k = 96
    first, second = _low_rank_weight(k, k, 40, seed=9) * 3, _low_rank_weight(k, k, 40, seed=10) / 4
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[B, {k}] x) => (float[B, {k}] y)
    <float[{k}, {k}] w1 = {{{_fmt(first)}}}, float[{k}, {k}] w2 = {{{_fmt(second)}}}>
    {{ h = MatMul(x, w1)
       t = Tanh(h)
       y = MatMul(t, w2) }}
    """)
    model.graph.node(0).name, model.graph.node(2).name = "first", "second"
    calib, held_out = _feeds(k, count=30), _feeds(k, count=6, seed=7)
    results = {}
    for measure in (True, False):
        lowrank = ox.passes.LowRank(method="activation", budget=0.4, measure_sensitivity=measure)
        result = ox.Pipeline([lowrank], golden_samples=0).run(model, calibration=calib)
        diff = [ort_run(result.model, f)[0] - ort_run(model, f)[0] for f in held_out]
        results[measure] = (result.records[0].statistics["layers"], float(np.sqrt(np.mean(np.square(diff)))))
    measured, blind = results[True][0], results[False][0]
    assert all(layer["sensitivity"] == 1.0 for layer in blind.values())
    sensitive = max(measured, key=lambda name: measured[name]["sensitivity"])
    assert measured[sensitive]["sensitivity"] > 1.2 * min(layer["sensitivity"] for layer in measured.values())
    assert measured[sensitive]["rank"] > blind[sensitive]["rank"]
    assert results[True][1] < results[False][1]


def test_activation_aware_and_eigen_beat_plain_svd_at_the_same_rank():
    """Inputs with a few dominant directions: what matters is the output on those, not
    ||W - W_r||. ``eigen`` (W ≈ W·V_r·V_rᵀ with V_r the top eigenvectors of Wᵀ·C·W) reaches
    the activation method's optimum from the output side (it differs only by the damping)."""
    k, n = 64, 64
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((k, n)).astype(np.float32) / 8
    model = _matmul_model(weight)
    mixing = np.diag(np.r_[np.full(6, 10.0), np.full(k - 6, 0.1)]) @ np.linalg.qr(rng.standard_normal((k, k)))[0]
    calib = [{"x": (rng.standard_normal((16, k)) @ mixing).astype(np.float32)} for _ in range(20)]
    held_out = [{"x": (rng.standard_normal((16, k)) @ mixing).astype(np.float32)} for _ in range(5)]
    errors = {}
    for method in ("svd", "activation", "eigen"):
        lowrank = ox.passes.LowRank(method=method, rank=8, compensate=False)
        result = ox.Pipeline([lowrank], golden_samples=0).run(model, calibration=calib)
        diff = [ort_run(result.model, f)[0] - ort_run(model, f)[0] for f in held_out]
        errors[method] = float(np.sqrt(np.mean(np.square(diff))))
        if method == "eigen":
            second = next(n for n in result.model.graph if n.name.endswith("_lowrank_2"))
            basis = second.inputs[1].const_value.numpy()  # V_rᵀ: orthonormal rows
            np.testing.assert_allclose(basis @ basis.T, np.eye(8), atol=1e-5)
    assert errors["activation"] < 0.3 * errors["svd"]
    assert errors["eigen"] < 0.3 * errors["svd"]
    assert errors["eigen"] == pytest.approx(errors["activation"], rel=0.1)
