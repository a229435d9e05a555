import json

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import samples, targets
from onnxpress.metrics import accuracy
from onnxpress.validate import validate


def _perturbed(model: ir.Model, scale: float, seed: int = 0) -> ir.Model:
    """A copy whose float weights carry relative noise of ``scale``."""
    rng = np.random.default_rng(seed)
    broken = model.clone()
    for value in broken.graph.initializers.values():
        array = value.const_value.numpy()
        if array.dtype == np.float32 and array.size > 100:
            noise = rng.standard_normal(array.shape).astype(np.float32) * scale * np.abs(array).mean()
            value.const_value = ir.tensor(array + noise, name=value.name)
    return broken


@pytest.fixture(scope="module")
def digits():
    model = ox.load(samples.DIGITS_MODEL)
    data, labels = samples.digits_eval()
    return model, list(data), labels


def test_the_same_model_passes_with_every_measurement(digits):
    model, data, labels = digits
    report = validate(model, reference=model, target="cpu", data=data,
                      metric=lambda outs: accuracy(outs, labels), metric_name="accuracy")
    assert report.passed and report.failures == []
    assert report.metrics["logits"].max_abs == 0 and report.top1_agreement == 1.0
    assert report.task_metric["reference"] > 0.95 and report.task_metric["drop"] == 0
    assert report.latency["candidate"].runs >= 20 and report.latency["candidate"].median_ms > 0
    assert report.latency["candidate"].p90_ms >= report.latency["candidate"].median_ms
    assert 100_000 < report.size["candidate"] < 400_000
    assert report.peak_memory["candidate"] > 0
    assert report.samples == 8 and report.data_source == "given data"
    assert json.loads(report.to_json())["passed"] is True
    assert "PASSED" in report.to_markdown()


def test_a_broken_model_fails_naming_the_criteria(digits):
    model, data, labels = digits
    report = validate(_perturbed(model, 3.0), reference=model, target="cpu", data=data,
                      metric=lambda outs: accuracy(outs, labels), metric_name="accuracy",
                      measure_latency=False, measure_memory=False)
    assert not report.passed
    text = "\n".join(report.failures)
    assert "output 'logits': cosine" in text
    assert "top-1 agreement" in text
    assert "accuracy dropped by" in text
    slight = validate(_perturbed(model, 0.001), reference=model, data=data, measure_latency=False,
                      measure_memory=False)
    assert slight.passed, slight.failures


def test_without_data_the_verdict_is_a_consistency_check(digits):
    model, _, _ = digits
    report = validate(model, reference=model, measure_latency=False, measure_memory=False)
    assert report.passed and report.data_source == "inputs generated from the signature"
    assert any("consistency check" in note for note in report.notes)


def test_an_op_the_provider_cannot_run_is_named():
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (int16[4] x) => (int16[4] y) { y = Relu(x) }
    """)
    model.graph.node(0).name = "act_int16"
    report = validate(model, target="cpu", measure_latency=False, measure_memory=False)
    assert not report.passed
    assert report.unplaced == ["act_int16 (Relu): no CPUExecutionProvider kernel for input types T=['tensor(int16)']"]
    assert any("1 node(s) cannot run on CPUExecutionProvider: act_int16" in f for f in report.failures)
    assert any("the candidate cannot be run" in f for f in report.failures)


def test_budgets_are_enforced(tmp_path, digits):
    model, data, _ = digits
    profile = (targets.FOLDER / "cpu.toml").read_text().replace("latency_ms = 0.0", "latency_ms = 0.00001") \
        .replace("size_mb = 0.0", "size_mb = 0.01")
    (tmp_path / "tight.toml").write_text(profile)
    report = validate(model, target=tmp_path / "tight.toml", data=data[:2], measure_memory=False)
    assert not report.passed
    assert any("over the budget of 1e-05 ms" in f for f in report.failures)
    assert any("over the budget of 0.01 MB" in f for f in report.failures)


def test_missing_providers_are_an_error_or_a_failed_criterion(digits):
    model, _, _ = digits
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ox.ProviderError, match="target 'cuda' needs CUDAExecutionProvider"):
        validate(model, target="cuda")
    report = validate(model, target="cuda", allow_missing_provider=True)
    assert not report.passed and "CUDAExecutionProvider" in report.failures[0]


def test_builtin_targets_load():
    assert set(targets.builtin()) >= {"cpu", "cuda", "edge"}
    edge = targets.load("edge")
    assert edge.intra_op_threads == 2 and edge.size_mb == 25.0
    with pytest.raises(ox.RecipeError, match="unknown target 'mars'"):
        targets.load("mars")


# A regression head: one prediction per row. Weights and inputs are positive, so every prediction
# is positive and a cosine per sample is 1 however far the predictions move.
REGRESSOR = """
<ir_version: 10, opset_import: ["" : 18]>
regressor (float[N, 4] x) => (float[N, 1] y, float[N, 3] h)
<float[4, 1] w = {{{w}}}, float[1] b = {{0.1}}, float[4, 3] v = {{0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 1.0, 2.0,
 0.1, -0.3, 0.6}}>
{{
    m = MatMul(x, w)
    y = Add(m, b)
    h = MatMul(x, v)
}}
"""


def _regressor(scale: float = 1.0) -> ir.Model:
    weights = np.array([0.3, 0.2, 0.5, 0.1]) * scale
    return ir.from_onnx_text(REGRESSOR.format(w=", ".join(repr(float(v)) for v in weights)))


@pytest.mark.parametrize("batch", [1, 8])
def test_one_value_per_row_is_judged_by_its_relative_error(batch):
    rng = np.random.default_rng(0)
    data = [{"x": np.abs(rng.standard_normal((batch, 4))).astype(np.float32)} for _ in range(6)]
    reference = _regressor()
    moved = validate(_regressor(scale=0.6), reference=reference, data=data, measure_latency=False,
                     measure_memory=False)
    stats = moved.metrics["y"]
    assert stats.cosine > 0.999  # what a cosine sees of predictions moved by up to 40 %
    assert stats.measure == "relative error" and 0.3 < stats.rel_max <= 0.4
    assert not moved.passed
    assert [f for f in moved.failures if f.startswith("output 'y': relative error 0.")] == moved.failures
    assert "judged by relative error" in moved.to_text() and "| y | relative error" in moved.to_markdown()
    assert moved.metrics["h"].measure == "cosine"  # three values per row: judged by cosine
    assert moved.to_dict()["metrics"]["y"]["measure"] == "relative error"
    close = validate(_regressor(scale=1.0 + 1e-6), reference=reference, data=data, measure_latency=False,
                     measure_memory=False)
    assert close.passed, close.failures
    assert close.metrics["y"].rel_max < 1e-5 and close.metrics["y"].score > 0.9999
