"""``export_hf`` and ``onnxpress export --hf`` on tiny random-weight models saved by transformers.

Each export is loaded back with ONNX Runtime and compared with the torch model on fresh inputs of
another batch size and sequence length than the export's example (batch 2, sequence 8).
"""
import importlib
import json
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import onnxruntime as ort  # noqa: E402

import onnxpress as ox  # noqa: E402
from onnxpress.cli import main  # noqa: E402
from onnxpress.export import export_info  # noqa: E402
from onnxpress.export_hf import detect_task, export_hf_info  # noqa: E402

from conftest import ort_run  # noqa: E402

export_hf_module = importlib.import_module("onnxpress.export_hf")  # the attribute is the function

VOCAB = 97
ATOL = 1e-4


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64))


def _vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0))


def _t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1))


_BUILDERS = {"bert": _bert, "vit": _vit, "gpt2": _gpt2, "t5": _t5}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (folder, the torch model saved there), built once per module."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            model = _BUILDERS[name]().eval()
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            made[name] = folder, model
        return made[name]
    return get


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, feed):
    return dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {k: v.numpy() for k, v in feed.items()})))


def _export(tmp_path, capsys, folder, *extra):
    out = tmp_path / "model.onnx"
    assert main(["export", "--hf", str(folder), "-o", str(out), *extra]) == 0
    return out, capsys.readouterr().out


def _ids(batch, length):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(batch * 100 + length))


def _mask(batch, length):
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[0, -2:] = 0  # right padding: no row is masked whole
    return mask


@pytest.mark.slow
def test_bert_feature_extraction_matches_torch(tmp_path, capsys, saved):
    folder, model = saved("bert")
    out, text = _export(tmp_path, capsys, folder)
    assert "task feature-extraction" in text and "exporter: dynamo" in text
    feed = {"input_ids": _ids(3, 11), "attention_mask": _mask(3, 11),
            "token_type_ids": torch.randint(0, 2, (3, 11), generator=torch.Generator().manual_seed(1))}
    got = _run(_session(out), feed)
    with torch.no_grad():
        expected = model(**feed)
    np.testing.assert_allclose(got["last_hidden_state"], expected.last_hidden_state.numpy(), atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(got["pooler_output"], expected.pooler_output.numpy(), atol=ATOL, rtol=1e-4)
    info = export_hf_info(ox.load(out))
    assert info["task"] == "feature-extraction" and info["source"] == folder.name and info["cache"] is None


@pytest.mark.slow
def test_vit_image_classification_matches_torch(tmp_path, capsys, saved):
    folder, model = saved("vit")
    out, text = _export(tmp_path, capsys, folder)
    assert "task image-classification" in text
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = _run(_session(out), {"pixel_values": pixels})
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    assert got["logits"].shape == (5, 5)
    np.testing.assert_allclose(got["logits"], expected, atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_gpt2_exports_without_a_cache_by_default(tmp_path, capsys, saved):
    folder, model = saved("gpt2")
    out, text = _export(tmp_path, capsys, folder)
    assert "task causal-lm" in text and "cache: none: use_cache=False" in text
    session = _session(out)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    feed = {"input_ids": _ids(3, 13), "attention_mask": _mask(3, 13), "position_ids": torch.arange(13).repeat(3, 1)}
    with torch.no_grad():
        expected = model(**feed, use_cache=False).logits.numpy()
    np.testing.assert_allclose(_run(session, feed)["logits"], expected, atol=ATOL, rtol=1e-4)
    info = export_hf_info(ox.load(out))
    assert info["cache"].startswith("none: use_cache=False")


@pytest.mark.slow
def test_gpt2_with_past_takes_and_returns_key_values(tmp_path, capsys, saved):
    folder, model = saved("gpt2")
    out, text = _export(tmp_path, capsys, folder, "--with-past")
    assert "cache: explicit" in text
    session = _session(out)
    past_names = [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids", *past_names]
    assert [o.name for o in session.get_outputs()] == ["logits"] + [n.replace("past_key_values", "present")
                                                                     for n in past_names]
    shapes = {v.name: v.shape for v in session.get_inputs() + session.get_outputs()}
    assert shapes["attention_mask"] == ["batch", "total_sequence"]
    assert shapes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    assert shapes["present.1.value"] == ["batch", 2, "past_sequence + sequence", 16]
    batch, prefix = 3, 6
    with torch.no_grad():
        cache = model(input_ids=_ids(batch, prefix), use_cache=True).cache
        past = [t.clone() for layer in cache.layers for t in (layer.keys, layer.values)]
    for step in (1, 4):  # one decoding step, then a chunk of tokens
        feed = {"input_ids": _ids(batch, step), "attention_mask": torch.ones(batch, prefix + step, dtype=torch.int64),
                "position_ids": torch.arange(prefix, prefix + step).repeat(batch, 1)}
        feed.update(zip(past_names, past))
        got = _run(session, feed)
        with torch.no_grad():
            torch_cache = transformers.DynamicCache([(k.clone(), v.clone()) for k, v in zip(past[0::2], past[1::2])],
                                                    config=model.config)
            expected = model(input_ids=feed["input_ids"], attention_mask=feed["attention_mask"],
                             position_ids=feed["position_ids"], cache=torch_cache, use_cache=True)
        np.testing.assert_allclose(got["logits"], expected.logits.numpy(), atol=ATOL, rtol=1e-4)
        for i, layer in enumerate(expected.cache.layers):
            assert got[f"present.{i}.key"].shape == (batch, 2, prefix + step, 16)
            np.testing.assert_allclose(got[f"present.{i}.key"], layer.keys.numpy(), atol=ATOL, rtol=1e-4)
            np.testing.assert_allclose(got[f"present.{i}.value"], layer.values.numpy(), atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_t5_seq2seq_logits_match_torch(tmp_path, capsys, saved):
    folder, model = saved("t5")
    out, text = _export(tmp_path, capsys, folder)
    assert "task seq2seq" in text and "cache: none: use_cache=False" in text
    feed = {"input_ids": _ids(3, 9), "attention_mask": _mask(3, 9), "decoder_input_ids": _ids(3, 4)}
    with torch.no_grad():
        expected = model(**feed, use_cache=False).logits.numpy()
    np.testing.assert_allclose(_run(_session(out), feed)["logits"], expected, atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_in_memory_model_with_a_given_task_keeps_its_attention_setting():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3, attn_implementation="sdpa")).eval()
    exported = ox.export_hf(model, sequence_length=5, batch=1)
    assert model.config._attn_implementation == "sdpa"
    info = export_hf_info(exported)
    assert info["task"] == "sequence-classification" and info["source"] == "in-memory model"
    assert info["outputs"] == ["logits"]
    assert export_info(exported)["batch_sizes_checked"] == [1, 2, 3]
    feed = {"input_ids": _ids(4, 7), "attention_mask": _mask(4, 7),
            "token_type_ids": torch.zeros(4, 7, dtype=torch.int64)}
    with torch.no_grad():
        expected = model(**feed).logits.numpy()
    got = ort_run(exported, {k: v.numpy() for k, v in feed.items()})
    np.testing.assert_allclose(got[0], expected, atol=ATOL, rtol=1e-4)


def test_task_is_read_from_the_architecture(tmp_path):
    for architecture, task in [("BertModel", "feature-extraction"), ("GPT2LMHeadModel", "causal-lm"),
                               ("LlamaForCausalLM", "causal-lm"),
                               ("BertForTokenClassification", "token-classification"),
                               ("ViTForImageClassification", "image-classification"),
                               ("T5ForConditionalGeneration", "seq2seq")]:
        config = transformers.T5Config() if task == "seq2seq" else transformers.BertConfig()
        config.architectures = [architecture]
        config.save_pretrained(tmp_path)
        assert detect_task(tmp_path) == task


def test_unknown_architectures_and_tasks_are_refused(tmp_path):
    config = transformers.BertConfig(architectures=["BertPuzzleSolver"])
    config.save_pretrained(tmp_path)
    with pytest.raises(ox.ExportError, match="cannot tell the task of BertPuzzleSolver; give one of: "
                                             "feature-extraction, sequence-classification"):
        detect_task(tmp_path)
    with pytest.raises(ox.ExportError, match="unknown task 'translation'; tasks are feature-extraction"):
        ox.export_hf(tmp_path, task="translation")
    with pytest.raises(ox.ExportError, match="no config.json in the folder"):
        ox.export_hf(tmp_path / "..")
    with pytest.raises(ox.ExportError, match="not a folder"):
        ox.export_hf(tmp_path / "missing")
    with pytest.raises(ox.ExportError, match="expected a folder or a transformers PreTrainedModel, got Linear"):
        ox.export_hf(torch.nn.Linear(2, 2))


def test_with_past_is_only_for_causal_lm(saved):
    _, model = saved("bert")
    with pytest.raises(ox.ExportError, match="with_past is for causal-lm; feature-extraction exports without"):
        ox.export_hf(model, with_past=True)


def test_loading_never_reaches_the_network(saved, monkeypatch):
    folder, _ = saved("gpt2")

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a local model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model, task, source = export_hf_module._load(folder, None)
    assert task == "causal-lm" and source == folder.name and type(model).__name__ == "GPT2LMHeadModel"
    assert model.config._attn_implementation == "eager"
    assert "HF_HUB_OFFLINE" not in os.environ  # set for the load only


def test_cli_errors_are_one_line(tmp_path, capsys, saved):
    folder, _ = saved("bert")
    out = tmp_path / "out.onnx"
    assert main(["export", "--hf", str(tmp_path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"onnxpress: error: {tmp_path}: no config.json in the folder (give "
                                               "a Hugging Face model folder written by save_pretrained)")
    assert main(["export", "--hf", str(folder), "--task", "summarize", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        "onnxpress: error: export_hf: unknown task 'summarize'; tasks are feature-extraction, "
        "sequence-classification, token-classification, image-classification, causal-lm, seq2seq")
    assert main(["export", "--hf", str(folder), "--with-past", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("onnxpress: error: export_hf: with_past is for causal-lm; "
                                               "feature-extraction exports without a cache")
    assert not out.exists()
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["BertModel"]
