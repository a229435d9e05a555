"""Large models, small: piecewise sessions, streamed weights and piecewise quantization.

A target whose ``session_memory_mb`` is smaller than a small decoder's weights runs it the way
a multi-gigabyte model runs on the ``cpu`` target: in segments, one session at a time. Every
result is compared with the same work done in one session. The decoder is the one
``benchmarks/large.py`` builds (``benchmarks/_large_model.py``), written with external data.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from conftest import large_model_builder

import onnxpress
from onnxpress import _segments, _weights, runtime, statistics
from onnxpress.modelinfo import op_histogram
from onnxpress.passes import Quantize, WeightOnly

REPO = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """A decoder of 4 blocks, hidden 64, vocabulary 512: about 0.5 MB of float32 weights."""
    builder = large_model_builder()
    return builder.build(tmp_path_factory.mktemp("decoder"), builder.Shape(hidden=64, layers=4, vocab=512), seed=7)


@pytest.fixture(scope="module")
def small_target(tmp_path_factory) -> Path:
    """The cpu profile with a session budget of 0.1 MB: the decoder runs in segments of 25 KB."""
    text = (REPO / "targets" / "cpu.toml").read_text()
    text = text.replace('name = "cpu"', 'name = "cpu-small"')
    text = text.replace("session_memory_mb = 512 ", "session_memory_mb = 0.1 ")
    assert "session_memory_mb = 0.1" in text
    path = tmp_path_factory.mktemp("target") / "small.toml"
    path.write_text(text)
    return path


def _feeds(count: int = 3, sequence: int = 6) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"input_ids": rng.integers(0, 512, size=(1, sequence), dtype=np.int64)} for _ in range(count)]


def test_piecewise_outputs_equal_one_session(decoder, small_target):
    model = onnxpress.load(decoder)
    whole, pieces = runtime.Runner("cpu"), runtime.Runner(small_target)
    assert whole.segment_bytes(model) is None
    assert pieces.segment_bytes(model) == int(0.1 * 2**20) // 4
    feeds = _feeds()
    expected = whole.outputs(model, feeds)
    got = pieces.outputs(model, feeds)
    assert len(got) == len(expected) == 3
    for a, b in zip(expected, got):
        assert a["logits"].shape == b["logits"].shape == (1, 6, 512)
        np.testing.assert_allclose(b["logits"], a["logits"], rtol=1e-4, atol=1e-4)


def test_plan_cuts_by_weight_budget(decoder, small_target):
    model = onnxpress.load(decoder)
    runner = runtime.Runner(small_target)
    key, artefact = runner._artefact(model)
    assert isinstance(artefact.source, str) and Path(artefact.source).parent == _weights.workspace().folder
    budget = runner.segment_bytes(model)
    plan = _segments.Plan(artefact.source, budget)
    sizes = {v.name: v.const_value.nbytes for v in model.graph.initializers.values()}
    assert len(plan) > 8
    assert sum(len(s.nodes) for s in plan.segments) == len(model.graph)
    for segment in plan.segments:
        # Within the budget, unless one node's own weights exceed it (the embedding, the LM head).
        assert segment.weight_bytes <= budget or len(segment.nodes) == 1 or \
            max(sizes[n] for n in segment.initializers) > budget
    assert plan.weight_bytes >= sum(sizes.values())


def test_piecewise_latency_census_and_peak_memory(decoder, small_target):
    model = onnxpress.load(decoder)
    runner = runtime.Runner(small_target)
    feed = _feeds(1)[0]
    latency = runner.latency(model, feed)
    assert latency.segments > 8 and latency.median_ms > 0 and latency.p90_ms >= latency.median_ms
    census = runner.kernel_census(model)
    matmuls = sum(1 for node in model.graph if node.op_type == "MatMul")
    assert census["ops"].get("MatMul", 0) + census["ops"].get("FusedMatMul", 0) == matmuls
    assert runner.peak_memory(model, feed) > 0


def test_statistics_run_piecewise(decoder, small_target):
    model = onnxpress.load(decoder)
    feeds = _feeds(2)
    whole = statistics.collect(model, feeds, runner=runtime.Runner("cpu"))
    pieces = statistics.collect(model, feeds, runner=runtime.Runner(small_target))
    assert set(whole.tensors) == set(pieces.tensors) and len(whole.tensors) > 20
    for name, tensor in whole.tensors.items():
        np.testing.assert_allclose(pieces[name].range("minmax"), tensor.range("minmax"), rtol=1e-4, atol=1e-4)


def test_dynamic_quantization_piecewise_equals_whole(decoder, small_target, monkeypatch):
    monkeypatch.setattr(_weights, "SPILL_MIN_BYTES", 2**12)  # this decoder's int8 weights are 4-64 KB
    model = onnxpress.load(decoder)
    feeds = _feeds()

    def quantized(target):
        passes = [Quantize(mode="dynamic", gptq=False, smoothquant_alpha=0.5)]
        return onnxpress.Pipeline(passes, target=target, golden_samples=0).run(model, feeds).model

    whole, pieces = quantized("cpu"), quantized(str(small_target))
    assert op_histogram(whole) == op_histogram(pieces)
    assert op_histogram(pieces).get("MatMulInteger", 0) + op_histogram(pieces).get("DynamicQuantizeMatMul", 0) > 0
    # The pieces' new tensors went to the workspace as each segment was quantized.
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in pieces.graph.initializers.values())
    a = runtime.Runner("cpu").outputs(whole, feeds)
    b = runtime.Runner("cpu").outputs(pieces, feeds)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y["logits"], x["logits"], rtol=1e-5, atol=1e-5)


def test_large_model_streams_through_weightonly(decoder, monkeypatch, tmp_path):
    """With the large-model threshold lowered, the pipeline streams: new tensors go to the
    spill file as they are made, and the saved result equals the one made in memory."""
    feeds = _feeds(2)
    passes = [WeightOnly(bits=4, block_size=32, algorithm="rtn", measure_latency=False)]
    in_memory = onnxpress.Pipeline(passes, golden_samples=1).run(onnxpress.load(decoder), feeds).model
    monkeypatch.setattr(_weights, "LARGE_BYTES", 2**16)
    monkeypatch.setattr(_weights, "SPILL_MIN_BYTES", 2**12)
    streamed = onnxpress.Pipeline(passes, golden_samples=1).run(onnxpress.load(decoder), feeds).model
    original = set(onnxpress.load(decoder).graph.initializers)
    made = [v.const_value for name, v in streamed.graph.initializers.items()
            if name not in original and v.const_value.nbytes >= 2**12]
    assert made and all(isinstance(t, ir.ExternalTensor) and Path(t.path).parent == _weights.workspace().folder
                        for t in made)
    matmuls = sum(1 for node in onnxpress.load(decoder).graph if node.op_type == "MatMul")
    assert op_histogram(streamed) == op_histogram(in_memory)
    assert op_histogram(streamed)["com.microsoft::MatMulNBits"] == matmuls - 2 * 4  # all but attention's two per block
    for name, value in in_memory.graph.initializers.items():
        np.testing.assert_array_equal(_weights.read(streamed.graph.initializers[name].const_value),
                                      value.const_value.numpy(), err_msg=name)
    path = onnxpress.save(streamed, tmp_path / "out.onnx", external_data=True)
    reloaded = onnxpress.load(path)
    a = runtime.Runner("cpu").outputs(in_memory, feeds)
    b = runtime.Runner("cpu").outputs(reloaded, feeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(y["logits"], x["logits"])


def test_read_copies_and_unmaps(decoder):
    model = onnxpress.load(decoder)
    tensor = next(v.const_value for v in model.graph.initializers.values() if v.const_value.nbytes > 2**16)
    assert isinstance(tensor, ir.ExternalTensor)
    array = _weights.read(tensor)
    assert tensor.raw is None  # read with pread: never mapped
    mapped = np.array(tensor.numpy())
    assert tensor.raw is not None
    np.testing.assert_array_equal(array, mapped)
    _weights.release(tensor)
    assert tensor.raw is None


def test_keep_spills_only_while_streaming():
    array = np.arange(2**19, dtype=np.float32).reshape(512, 1024)  # 2 MiB
    tensor = ir.tensor(array, name="w")
    assert _weights.keep(tensor) is tensor
    with _weights.streaming():
        kept = _weights.keep(tensor)
    assert isinstance(kept, ir.ExternalTensor) and kept.offset % 4096 == 0
    np.testing.assert_array_equal(_weights.read(kept), array)
    small = ir.tensor(np.ones(8, np.float32), name="b")
    with _weights.streaming():
        assert _weights.keep(small) is small


def test_session_budget_must_not_be_negative(tmp_path):
    text = (REPO / "targets" / "cpu.toml").read_text().replace("session_memory_mb = 512 ", "session_memory_mb = -1 ")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(onnxpress.errors.RecipeError, match="session_memory_mb' must be >= 0"):
        runtime.Runner(path)
    assert os.path.exists(path)


def test_validate_at_scale_runs_piecewise_and_parks_outputs(decoder, small_target, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("onnxpress.validate"), "OUTPUTS_IN_MEMORY_BYTES", 2**10)
    report = onnxpress.validate(decoder, decoder, target=small_target, data=_feeds(2), measure_memory=False)
    assert report.passed, report.failures
    assert report.metrics["logits"].cosine > 0.999999
    notes = " ".join(report.notes)
    assert "the candidate ran piecewise" in notes and "the reference ran piecewise" in notes
    assert "the reference's outputs" in notes and "kept on disk" in notes
    assert report.latency["reference"].segments > 8


def test_a_killed_process_workspace_is_removed(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = ("import os, numpy as np, onnx_ir as ir; from onnxpress import _weights\n"
            "with _weights.streaming():\n"
            "    _weights.keep(ir.tensor(np.zeros(2**19, np.float32), name='w'))\n"
            "print(_weights.workspace().folder, flush=True); os._exit(0)")  # no exit handlers: as if killed
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    folder = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 check=True).stdout.strip())
    assert folder.parent == tmp_path and (folder / "spill.data").stat().st_size >= 2**21
    _weights._remove_orphans()
    assert not folder.exists()
