"""Closed-form error compensation (issue 13, part 1): the refits inside lowrank and prune."""
import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import runtime, samples
from onnxpress.metrics import accuracy, compare
from onnxpress.passes import _compensate

from conftest import onnx_check


def _fmt(array) -> str:
    return ", ".join(f"{v:.6f}" for v in np.ravel(array))


def _mlp(rng, widths=(32, 64, 32, 16)) -> ir.Model:
    """x -> MatMul -> Relu -> MatMul -> Relu -> MatMul, weights with a decaying spectrum."""
    initializers, lines, source = [], [], "x"
    for index, (k, n) in enumerate(zip(widths, widths[1:])):
        u, _, vt = np.linalg.svd(rng.standard_normal((k, n)), full_matrices=False)
        weight = (u * np.geomspace(1.0, 0.05, min(k, n))) @ vt
        initializers.append(f"float[{k}, {n}] w{index} = {{{_fmt(weight)}}}")
        lines.append(f"h{index} = MatMul({source}, w{index})")
        source = f"h{index}"
        if index < len(widths) - 2:
            lines.append(f"r{index} = Relu(h{index})")
            source = f"r{index}"
    lines.append(f"y = Identity({source})")
    model = ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    mlp (float[B, {widths[0]}] x) => (float[B, {widths[-1]}] y)
    <{", ".join(initializers)}>
    {{
        {chr(10).join(lines)}
    }}
    """)
    for index, node in enumerate(n for n in model.graph if n.op_type == "MatMul"):
        node.name = f"layer{index}"
    return model


def _correlated_feeds(rng, count: int, k: int = 32, batch: int = 16) -> list[dict]:
    mixing = rng.standard_normal((k, k)) * np.geomspace(1.0, 0.1, k)
    return [{"x": (rng.standard_normal((batch, k)) @ mixing).astype(np.float32)} for _ in range(count)]


def _held_out_cosine(model: ir.Model, compressed: ir.Model, feeds: list[dict]) -> float:
    return compare(runtime.run_model(model, feeds), runtime.run_model(compressed, feeds))["y"].cosine


def test_the_constrained_fits_change_nothing_at_full_rank_and_zero_sparsity(rng):
    weight = rng.standard_normal((48, 16))
    inputs = rng.standard_normal((500, 48)) @ rng.standard_normal((48, 48))
    damped = inputs.T @ inputs + np.eye(48)
    a, b = _compensate.factored(weight, damped, 16)
    np.testing.assert_allclose(a @ b, weight, atol=1e-10)
    np.testing.assert_array_equal(_compensate.masked(weight, damped, sparsity=0.0), weight)
    np.testing.assert_array_equal(_compensate.masked(weight, damped, keep=np.ones_like(weight, bool)), weight)


def test_obs_pruning_beats_zeroing_and_keeps_the_pattern(rng):
    weight = rng.standard_normal((256, 32))
    inputs = rng.standard_normal((2000, 256)) @ (rng.standard_normal((256, 256)) * np.geomspace(1, 0.05, 256))
    gram = inputs.T @ inputs
    damped = gram + np.eye(256) * 0.01 * np.trace(gram) / 256
    error = lambda w: np.linalg.norm(inputs @ (w - weight)) / np.linalg.norm(inputs @ weight)  # noqa: E731
    magnitude = np.abs(weight) >= np.median(np.abs(weight), axis=0)
    zeroed = error(weight * magnitude)
    fixed = _compensate.masked(weight, damped, keep=magnitude)
    assert ((fixed != 0) == magnitude).all() and error(fixed) < 0.9 * zeroed
    adaptive = _compensate.masked(weight, damped, sparsity=0.5)
    assert np.mean(adaptive == 0) == pytest.approx(0.5, abs=0.01) and error(adaptive) < error(fixed)
    two_four = _compensate.masked(weight, damped, n=2, m=4)
    assert (np.count_nonzero(two_four.reshape(64, 4, 32), axis=1) <= 2).all()


def test_refit_of_an_unchanged_model_changes_nothing(rng):
    """Student = teacher: every layer's refit optimum is its own weight (x̂ = x), so the dense
    refit writes back what was there, to rounding."""
    model = _mlp(rng)
    student = model.clone()
    layers = []
    for node in student.graph:
        if node.op_type != "MatMul":
            continue
        weight = node.inputs[1].const_value.numpy().astype(np.float64)

        def fit(best, damped, node=node):
            def write():
                node.inputs[1].const_value = ir.tensor(best.astype(np.float32), name=node.inputs[1].name)
            return best, write

        layers.append(_compensate.Layer(node.name, weight, weight, node.inputs[0].name, node.inputs[0].name,
                                        _compensate.flat_rows, _compensate.flat_rows, fit, (node.name,)))
    stats = _compensate.refit(model, student, layers, _correlated_feeds(rng, 12), runtime.Runner("cpu"))
    assert len(stats) == 3
    for before, after in zip(model.graph, student.graph):
        if before.op_type == "MatMul":
            np.testing.assert_allclose(after.inputs[1].const_value.numpy(), before.inputs[1].const_value.numpy(),
                                       atol=1e-5)


@pytest.mark.parametrize("options", [
    dict(sparsity=0.5),
    dict(granularity="n:m", n=2, m=4),
    dict(sparsity=0.5, criterion="importance"),
])
def test_pruning_with_compensation_keeps_more_of_the_output(rng, options):
    model = _mlp(rng)
    calibration, held_out = _correlated_feeds(rng, 40), _correlated_feeds(rng, 8)
    plain = ox.Pipeline([ox.passes.Prune(**options, compensate=False)], golden_samples=0).run(model, calibration=calibration)
    fitted = ox.Pipeline([ox.passes.Prune(**options)], golden_samples=0).run(model, calibration=calibration)
    stats = fitted.records[0].statistics
    assert set(stats["compensation"]) == set(stats["layers"])
    assert stats["sparsity"] == pytest.approx(plain.records[0].statistics["sparsity"], abs=0.02)
    assert _held_out_cosine(model, fitted.model, held_out) > _held_out_cosine(model, plain.model, held_out)
    if options.get("granularity") == "n:m":
        for node in fitted.model.graph:
            weight = node.inputs[1].const_value.numpy() if node.op_type == "MatMul" else None
            if weight is not None and node.name != "layer0":
                groups = weight[: weight.shape[0] // 4 * 4].reshape(-1, 4, weight.shape[1])
                assert (np.count_nonzero(groups, axis=1) <= 2).all()
    onnx_check(fitted.model)


def test_lowrank_with_compensation_keeps_the_ranks_and_more_of_the_output(rng):
    model = _mlp(rng)
    calibration, held_out = _correlated_feeds(rng, 40), _correlated_feeds(rng, 8)
    options = dict(method="activation", rank=6, min_saving=0.0, min_elements=0)
    plain = ox.Pipeline([ox.passes.LowRank(**options, compensate=False)], golden_samples=0).run(
        model, calibration=calibration)
    fitted = ox.Pipeline([ox.passes.LowRank(**options)], golden_samples=0).run(model, calibration=calibration)
    assert fitted.records[0].statistics["compensated"]
    for node in fitted.model.graph:
        if node.name.endswith("_lowrank_1"):
            assert node.inputs[1].const_value.shape[1] == 6
    assert _held_out_cosine(model, fitted.model, held_out) > _held_out_cosine(model, plain.model, held_out)


def test_structured_pruning_of_the_digits_cnn_refits_the_next_layers():
    model, calibration = ox.load(samples.DIGITS_MODEL), samples.digits_calibration()
    data, labels = samples.digits_eval()
    options = dict(granularity="structured", sparsity=0.5, skip_first_last=False)
    plain = ox.Pipeline([ox.passes.Prune(**options, compensate=False)], golden_samples=0).run(
        model, calibration=calibration)
    fitted = ox.Pipeline([ox.passes.Prune(**options)], golden_samples=0).run(model, calibration=calibration)
    stats = fitted.records[0].statistics
    assert len(stats["compensation"]) > len(stats["layers"])  # pruned layers and the layers after them
    score = lambda m: accuracy(runtime.run_model(m, list(data)), labels)  # noqa: E731
    assert score(fitted.model) > score(plain.model)


# ----------------------------------------------------------------------------- GPTQ (int8 weights)

def test_gptq_leaves_weights_on_the_grid_alone(rng):
    scale = rng.uniform(0.01, 0.1, 16)
    weight = rng.integers(-127, 128, (48, 16)) * scale
    inputs = rng.standard_normal((500, 48)) @ rng.standard_normal((48, 48))
    damped = inputs.T @ inputs + np.eye(48)
    np.testing.assert_allclose(_compensate.quantized(weight, damped, scale, -127, 127), weight, rtol=0, atol=1e-12)


def test_gptq_rounds_to_the_grid_with_less_output_error_than_rounding(rng):
    weight = rng.standard_normal((64, 16))
    inputs = rng.standard_normal((2000, 64)) @ (rng.standard_normal((64, 64)) * np.geomspace(1.0, 0.05, 64))
    damped = inputs.T @ inputs + 1e-3 * np.eye(64) * np.trace(inputs.T @ inputs) / 64
    scale = np.abs(weight).max(axis=0) / 7  # a coarse grid (4 bits) makes the difference plain
    rounded = _compensate.quantized(weight, damped, scale, -7, 7)
    levels = rounded / scale
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-9)
    assert np.abs(np.round(levels)).max() <= 7
    nearest = np.clip(np.round(weight / scale), -7, 7) * scale
    error = lambda w: np.linalg.norm(inputs @ (w - weight))  # noqa: E731
    assert error(rounded) < 0.7 * error(nearest)


def _stored_weights(model: ir.Model) -> dict[str, np.ndarray]:
    """Each MatMulInteger's int8 weight times its scale, by the float MatMul's output name."""
    found = {}
    for node in model.graph:
        if node.op_type == "MatMulInteger":
            weight = node.inputs[1].const_value.numpy().astype(np.float64)
            scale_name = node.inputs[1].name.replace("_quantized", "_scale")
            scale = model.graph.initializers[scale_name].const_value.numpy().astype(np.float64)
            found[node.outputs[0].name.split("_output_quantized")[0]] = weight * scale
    return found


def test_gptq_in_quantize_stores_its_integers_and_beats_rounding(rng):
    model = _mlp(rng)
    calibration, held = _correlated_feeds(rng, 32), _correlated_feeds(rng, 8)
    context = ox.PassContext(runner=runtime.Runner("cpu"), calibration=ox.calibration.from_feeds(calibration))
    results = {}
    for gptq in (False, True):
        quantize = ox.passes.Quantize(mode="dynamic", preset="transformer", smoothquant=False, gptq=gptq)
        results[gptq] = quantize.run_in(context, model)
        onnx_check(results[gptq].model)
    stats = results[True].statistics["gptq"]
    assert stats["considered"] == 3 and stats["layers"] >= 2
    assert "gptq" not in results[False].statistics
    # The same rounding outside the pass, to compare weights: GPTQ's float weights, and plain rounding's.
    rounded = model.clone()
    layers = [n for n in rounded.graph if n.op_type == "MatMul"]
    _, originals, _ = ox.passes._calibrated.gptq(rounded, layers, calibration, runtime.Runner("cpu"),
                                                 per_channel=True, reduce_range=False)
    assert set(originals) == {name for name, fit in stats["fits"].items() if "kept" not in fit}
    # The quantizer stored exactly the grid points GPTQ chose (its scales were handed over) ...
    stored = _stored_weights(results[True].model)
    nearest = model.clone()
    for node in layers:
        if node.name in originals:
            np.testing.assert_allclose(stored[node.outputs[0].name], node.inputs[1].const_value.numpy(), rtol=1e-6,
                                       atol=1e-7)
    for node in (n for n in nearest.graph if n.op_type == "MatMul"):
        weight = node.inputs[1].const_value.numpy()
        node.inputs[1].const_value = ir.tensor(ox.passes._calibrated._quantized(weight, 1, False).astype(np.float32))
    # ... and they keep more of the outputs on held-out inputs than rounding to the nearest point.
    assert _held_out_cosine(model, rounded, held) > _held_out_cosine(model, nearest, held)
