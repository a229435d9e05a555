"""Golden files, layer-wise comparison, per-output tolerances, host capabilities, edge bundle."""
import json

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import samples, targets
from onnxpress.hardware import CpuCapabilities, cpu_capabilities, quantization_defaults
from onnxpress.layerwise import compare_layers
from onnxpress.golden import load_golden, save_golden
from onnxpress.validate import validate

from conftest import ort_run


@pytest.fixture(scope="module")
def digits():
    return ox.load(samples.DIGITS_MODEL), samples.digits_calibration().take(6)


def _negated(model: ir.Model, name: str) -> ir.Model:
    broken = model.clone()
    value = broken.graph.initializers[name]
    value.const_value = ir.tensor(-value.const_value.numpy(), name=name)
    return broken


def test_golden_outputs_saved_once_and_checked_later(tmp_path, digits):
    model, feeds = digits
    path = save_golden(model, feeds, tmp_path / "golden.npz")
    stored_feeds, stored_outputs = load_golden(path)
    assert len(stored_feeds) == 6 and np.array_equal(stored_feeds[2]["input"], feeds[2]["input"])
    np.testing.assert_array_equal(stored_outputs[0]["logits"], ort_run(model, feeds[0])[0])
    report = validate(model, golden=path, measure_latency=False, measure_memory=False)
    assert report.passed and report.data_source == "golden file golden.npz"
    assert report.metrics["logits"].max_abs == 0
    broken = validate(_negated(model, "classifier.3.weight"), golden=path, measure_latency=False,
                      measure_memory=False)
    assert not broken.passed and any("cosine" in f for f in broken.failures)
    (tmp_path / "plain.npz").write_bytes((tmp_path / "golden.npz").read_bytes()[:100])
    with pytest.raises(ox.DataError, match="cannot read the golden file"):
        load_golden(tmp_path / "plain.npz")


def test_layerwise_names_the_layer_where_the_error_starts(digits):
    model, feeds = digits
    broken = _negated(model, "features.3.weight")  # the second convolution
    result = compare_layers(model, broken, feeds)
    assert result.shared == len(result.layers) >= 10
    assert [layer.cosine for layer in result.layers[:2]] == [1.0, 1.0]  # before the broken conv
    assert result.first_jump.op_type == "Conv" and result.first_jump.cosine < 0.5
    conv_nodes = [n for n in model.graph if n.op_type == "Conv"]
    assert result.first_jump.node == conv_nodes[1].name
    report = validate(broken, reference=model, data=feeds, layerwise=True, measure_latency=False,
                      measure_memory=False)
    assert report.layerwise["first_jump"]["node"] == conv_nodes[1].name
    assert any("layer-wise: the error jumps at" in n for n in report.notes)


def test_per_output_tolerances_override_the_profile(tmp_path, digits):
    model, feeds = digits
    slightly = model.clone()
    value = slightly.graph.initializers["classifier.3.weight"]
    value.const_value = ir.tensor(value.const_value.numpy() * 1.001, name=value.name)
    assert validate(slightly, reference=model, data=feeds, measure_latency=False, measure_memory=False).passed
    profile = (targets.FOLDER / "cpu.toml").read_text().replace(
        "[budgets]", "[tolerances.outputs.logits]\nmax_abs = 1e-7\n\n[budgets]")
    (tmp_path / "strict.toml").write_text(profile)
    assert targets.load(tmp_path / "strict.toml").tolerance("logits", "max_abs") == 1e-7
    report = validate(slightly, reference=model, data=feeds, target=tmp_path / "strict.toml",
                      measure_latency=False, measure_memory=False)
    assert not report.passed and report.failures[0].startswith("output 'logits': max-abs error")
    (tmp_path / "bad.toml").write_text(profile.replace("max_abs = 1e-7", "max_ab = 1e-7"))
    with pytest.raises(ox.RecipeError, match=r"\[tolerances.outputs.logits\]: unknown key 'max_ab'"):
        targets.load(tmp_path / "bad.toml")


def test_error_statistics_include_quantiles_and_nonfinite(digits):
    model, feeds = digits
    report = validate(model, reference=model, data=feeds, measure_latency=False, measure_memory=False)
    stats = report.metrics["logits"].to_dict()
    assert {"max_abs", "mean_abs", "p50_abs", "p90_abs", "p99_abs", "nonfinite", "cosine"} <= set(stats)
    nan_model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 2] x) => (float[N, 2] y) { y = Log(x) }
    """)
    ref_model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 2] x) => (float[N, 2] y) { y = Abs(x) }
    """)
    report = validate(nan_model, reference=ref_model, data=[{"x": np.array([[-1.0, 2.0]], np.float32)}],
                      measure_latency=False, measure_memory=False)
    assert any("1 NaN/Inf values (reference: 0)" in f for f in report.failures)


@pytest.mark.parametrize("flags, arch, expected", [
    ("flags : fpu sse avx2 fma avx512f avx512_vnni", "x86_64", ("uint8", False)),
    ("flags : fpu sse avx2 fma", "x86_64", ("uint8", True)),
    ("Features : fp asimd asimddp i8mm", "aarch64", ("int8", False)),
    ("Features : fp asimd", "aarch64", ("uint8", False)),
])
def test_quantization_defaults_follow_the_processor(flags, arch, expected):
    caps = cpu_capabilities(flags, arch)
    defaults = quantization_defaults(caps)
    assert (defaults.activation_type, defaults.reduce_range) == expected
    assert defaults.weight_type == "int8" and defaults.reason


def test_the_host_is_described_in_cpu_reports(digits):
    model, feeds = digits
    report = validate(model, data=feeds[:1], measure_latency=False, measure_memory=False)
    assert report.hardware["cpu"] == cpu_capabilities().describe()
    assert isinstance(CpuCapabilities(**report.hardware["capabilities"]), CpuCapabilities)


def test_edge_profile_writes_an_ort_bundle(tmp_path, digits):
    model, feeds = digits
    report = validate(model, reference=model, target="edge", data=feeds, bundle=tmp_path / "bundle",
                      measure_memory=False)
    assert report.passed, report.failures
    folder = tmp_path / "bundle"
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.ort", "required_operators.config"]
    config = (folder / "required_operators.config").read_text().splitlines()
    ops_lines = [line for line in config if not line.startswith("#")]
    # Extended optimisation fuses Conv+Relu into ONNX Runtime's FusedConv: the list is of the optimised graph.
    assert any(line.startswith("ai.onnx;18;") and "MaxPool" in line for line in ops_lines)
    assert any(line.startswith("com.microsoft;1;") and "FusedConv" in line for line in ops_lines)
    assert report.bundle["min_cosine"] > 0.9999
    info = json.loads((folder / "bundle.json").read_text())
    assert info["optimization"] == "extended" and info["model_bytes"] == (folder / "model.ort").stat().st_size
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds[0])[0], ort_run(model, feeds[0])[0], rtol=1e-5, atol=1e-5)
    assert report.latency["candidate"].runs >= 20


def test_placement_is_read_from_a_built_session_not_from_the_kernel_registry(monkeypatch):
    """onnxruntime-gpu's get_all_opkernel_def() can segfault (TensorRT missing): validate reads
    where each node ran from the session it built, and never needs the registry for a model
    that runs."""
    from onnxpress import kernels, samples
    from onnxpress.validate import validate

    def unreadable(model, provider):
        raise kernels.RegistryUnavailable("reading ONNX Runtime's kernel registry crashed (exit code -11)")

    monkeypatch.setattr(kernels, "unplaced_nodes", unreadable)
    report = validate(samples.DIGITS_MODEL, measure_latency=False, measure_memory=False)
    assert report.passed, report.failures
    assert report.unplaced == []


def test_the_kernel_registry_can_be_read_in_a_child_process(monkeypatch):
    import onnxpress as ox
    from onnxpress import kernels, samples

    monkeypatch.setattr(kernels, "_BUILT_IN", frozenset())  # as in a build with CUDA or TensorRT
    kernels._kernels.cache_clear()
    try:
        assert kernels.unplaced_nodes(ox.load(samples.DIGITS_MODEL), "CPUExecutionProvider") == []
        assert ("", "Conv") in kernels._kernels("CPUExecutionProvider")
    finally:
        kernels._kernels.cache_clear()


def test_a_session_whose_first_provider_was_not_enabled_is_refused(monkeypatch):
    """ONNX Runtime drops a provider it cannot start and runs on the CPU; Session refuses that."""
    import onnxruntime as ort

    import onnxpress as ox
    from onnxpress import runtime, samples
    from onnxpress.errors import ProviderError

    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["AzureExecutionProvider"])
    with pytest.raises(ProviderError, match="did not enable CPUExecutionProvider"):
        runtime.Runner("cpu").session(ox.load(samples.DIGITS_MODEL))


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """Peak memory is measured in a spawned process; spawning must not run the caller's script again."""
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text("import onnxpress as ox\nfrom onnxpress import samples\nprint('script ran')\n"
                      "model = ox.load(samples.DIGITS_MODEL)\n"
                      "report = ox.validate(model, reference=model, target='cpu')\n"
                      "print('peak', sorted(report.peak_memory), all(v > 0 for v in report.peak_memory.values()))\n",
                      encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["script ran", "peak ['candidate', 'reference'] True"]
    assert "Traceback" not in done.stderr


def test_the_size_budget_judges_the_shipped_ort_file_too(tmp_path, digits):
    model, feeds = digits
    profile = (targets.FOLDER / "edge.toml").read_text(encoding="utf-8").replace("size_mb = 25.0", "size_mb = 0.1")
    assert "size_mb = 0.1" in profile
    (tmp_path / "tiny.toml").write_text(profile, encoding="utf-8")
    report = validate(model, reference=model, target=str(tmp_path / "tiny.toml"), data=feeds,
                      bundle=tmp_path / "bundle", measure_memory=False, measure_latency=False)
    shipped = (tmp_path / "bundle" / "model.ort").stat().st_size
    assert shipped > 0.1 * 2**20 and report.size["candidate"] > 0.1 * 2**20
    assert report.failures == [
        f"size {report.size['candidate'] / 2**20:.4g} MB is over the budget of 0.1 MB",
        f"the bundle's model.ort, {shipped / 2**20:.4g} MB, is over the budget of 0.1 MB"]
