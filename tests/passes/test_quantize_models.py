"""Quantization on real models: ResNet-18, MobileNetV3-small and the MiniLM sentence encoder."""
import numpy as np
import pytest

import onnxpress as ox
from onnxpress import runtime
from onnxpress.metrics import compare

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")


def _images(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_cnn_architectures_quantize_static(arch):
    from onnxpress.samples import architectures

    model = ox.export(getattr(architectures, arch)(), torch.randn(1, 3, 224, 224))
    result = ox.Pipeline([ox.passes.Quantize()], golden_samples=2).run(model, calibration=_images(16, 0))
    record = result.records[0]
    stats = record.statistics
    assert stats["mode"] == "static"
    # GPTQ rounds (nearly) every Conv/Gemm; bias correction takes the ones it leaves.
    assert stats["gptq"]["layers"] + stats["bias_corrected"] >= 20
    assert record.kernels["int8"] >= 20 and record.bytes_after < 0.3 * record.bytes_before
    held_out = _images(4, 1)
    stats = compare(runtime.run_model(model, held_out), runtime.run_model(result.model, held_out))["output"]
    assert stats.cosine > 0.99


@pytest.fixture(scope="module")
def minilm():
    from onnxpress.samples import minilm as sample

    return sample, sample.export()


def _embedding_cosine(reference, candidate) -> float:
    return compare(reference, candidate)["sentence_embedding"].cosine


def test_minilm_dynamic_quantization_keeps_embeddings(minilm):
    sample, model = minilm
    calibration = sample.feeds(sample.CALIBRATION_SENTENCES)
    result = ox.Pipeline([ox.passes.Quantize()], golden_samples=2).run(model, calibration=calibration)
    stats = result.records[0].statistics
    assert stats["preset"] == "transformer" and stats["mode"] == "dynamic"
    assert stats["quantized_nodes"] == 38  # 6 layers x (Q, K, V, output, 2 feed-forward) MatMuls + 2 embedding tables
    assert result.records[0].kernels["int8"] == 36
    assert result.records[0].bytes_after < 0.27 * result.records[0].bytes_before  # embeddings int8 too
    evaluation = sample.feeds(sample.EVAL_SENTENCES)
    assert len({f["input_ids"].shape[1] for f in evaluation}) > 5  # sentences of many lengths
    cosine = _embedding_cosine(runtime.run_model(model, evaluation), runtime.run_model(result.model, evaluation))
    assert cosine >= 0.995


def test_minilm_through_a_cli_recipe(minilm, tmp_path, capsys):
    from onnxpress.cli import main

    sample, model = minilm
    folder = tmp_path / "sentences"
    folder.mkdir()
    for i, feed in enumerate(sample.feeds(sample.CALIBRATION_SENTENCES[:20])):
        np.savez(folder / f"{i:03d}.npz", **feed)
    ox.save(model, tmp_path / "minilm.onnx")
    (tmp_path / "r.toml").write_text('[calibration]\nsource = "sentences"\n[[passes]]\nname = "quantize"\n'
                                     'preset = "transformer"\nsmoothquant_alpha = 0.7\n')
    code = main(["run", str(tmp_path / "minilm.onnx"), "--recipe", str(tmp_path / "r.toml"),
                 "-o", str(tmp_path / "q.onnx"), "--target", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "36/" in out and "verdict on target 'cpu': PASSED" in out
