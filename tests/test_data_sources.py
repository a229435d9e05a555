"""Calibration and evaluation data without code: folders of images, text files with a tokenizer,
Python functions, and feeds matched to the model's inputs (issue 16)."""
import json

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import samples
from onnxpress.calibration import DataSource, read_source
from onnxpress.cli import main
from onnxpress.errors import DataError, RecipeError
from onnxpress.feeds import fit_feed, input_specs

from conftest import ort_run

QUANTIZE = '[[passes]]\nname = "quantize"\n'

# Token ids and a mask in; the embeddings and the mask as floats out.
TOKENS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
tokens ({ids}[N, {seq}] input_ids, {ids}[N, {seq}] attention_mask) => (float[N, {seq}, 2] e, float[N, {seq}] m)
<float[12, 2] table = {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}}>
{{
    e = Gather(table, input_ids)
    m = Cast<to = 1>(attention_mask)
}}
"""

# An RGB image input and a second input images cannot give.
PIXELS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
pixels (float[1, 3, 8, 8] pixel_values{extra}) => (float[1] y) {{
    y = ReduceMean<keepdims = 0>(pixel_values)
}}
"""

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran"]


def _error(capsys, code):
    """The one stderr line of a user error (exit code 2), without its prefix."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("onnxpress: error: "), (code, err)
    return err[0][len("onnxpress: error: "):]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "q.toml"
    path.write_text(QUANTIZE)
    return str(path)


def _tokens_model(ids="int64", seq="S"):
    return ir.from_onnx_text(TOKENS_TEXT.format(ids=ids, seq=seq))


@pytest.fixture
def tokenizer_json(tmp_path):
    """A word-level tokenizer.json ([CLS] text [SEP]; pairs with type ids 1), made without downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture
def digit_pngs(tmp_path):
    """48 of scikit-learn's digits as 8x8 grey PNGs (pixels / 16 * 255), and 200 others as the
    model's inputs (pixels / 16) for checking the result."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(48):
        Image.fromarray(np.round(images[index] / 16 * 255).astype(np.uint8), mode="L").save(folder / f"{index:03d}.png")
    return folder, (images[1000:1200] / 16).astype(np.float32)[:, None]


def test_run_calibrates_on_a_folder_of_images(tmp_path, digit_pngs, capsys):
    """`onnxpress run --calibration FOLDER`: size, layout, color and dtype come from the model."""
    folder, held_out = digit_pngs
    recipe, out = tmp_path / "q.toml", tmp_path / "out.onnx"
    recipe.write_text(QUANTIZE)
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", str(recipe), "--calibration", str(folder), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    source = ox.load(samples.DIGITS_MODEL)
    feeds = list(read_source(folder, model=source))
    assert len(feeds) == 48 and feeds[0]["input"].shape == (1, 1, 8, 8) and feeds[0]["input"].dtype == np.float32
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(feeds[5]["input"][0, 0], load_digits().images[5] / 16, atol=1 / 255)
    quantized = ox.load(out)
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph)
    expected = ort_run(source, {"input": held_out})[0]
    got = ort_run(quantized, {"input": held_out})[0]
    cosine = np.sum(expected * got) / (np.linalg.norm(expected) * np.linalg.norm(got))
    assert cosine > 0.999 and np.mean(expected.argmax(1) == got.argmax(1)) >= 0.98
    assert 'type = "images"' in (tmp_path / "out.lock.toml").read_text()


def test_image_settings_from_the_command_line_and_stacking(tmp_path):
    from PIL import Image

    model = ir.from_onnx_text(PIXELS_TEXT.format(extra=""))
    (tmp_path / "imgs").mkdir()
    for index in range(5):
        Image.fromarray(np.full((30, 40, 3), (index * 40, 100, 200), np.uint8)).save(tmp_path / "imgs" / f"{index}.png")
    image = ox.calibration.ImageSpec(size=10, crop=(8, 8), mean=(0.5,), std=(0.25,), color="BGR")
    feeds = list(read_source(DataSource.from_path(tmp_path / "imgs", image=image), model=model))
    np.testing.assert_allclose(feeds[1]["pixel_values"][0, :, 3, 3], [(200 / 255 - 0.5) / 0.25, (100 / 255 - 0.5) / 0.25,
                                                                      (40 / 255 - 0.5) / 0.25], rtol=1e-5)
    model = ir.from_onnx_text(PIXELS_TEXT.format(extra="").replace("float[1, 3, 8, 8]", "float[N, 8, 8, 3]"))
    stacked = read_source(DataSource.from_path(tmp_path / "imgs", batch_size=2), model=model)
    assert [f["pixel_values"].shape for f in stacked] == [(2, 8, 8, 3), (2, 8, 8, 3), (1, 8, 8, 3)]  # NHWC, resized


def test_a_preprocessor_config_sets_size_crop_and_normalization(tmp_path, capsys):
    """A Hugging Face preprocessor_config.json, given or found beside the model."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for index in range(3):
        Image.fromarray(np.full((24, 36, 3), (10, 100 + index, 250), np.uint8)).save(tmp_path / "imgs" / f"{index}.png")
    config = {"do_resize": True, "size": {"shortest_edge": 12}, "do_center_crop": True,
              "crop_size": {"height": 8, "width": 8}, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 0.5]}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(config))
    model = ir.from_onnx_text(PIXELS_TEXT.format(extra="").replace("float[1, 3, 8, 8]", "float[1, 3, H, W]"))
    feeds = list(read_source(DataSource.from_path(tmp_path / "imgs", preprocessor=tmp_path / "hf"), model=model))
    assert len(feeds) == 3 and feeds[2]["pixel_values"].shape == (1, 3, 8, 8)  # 24x36 -> 12x18 -> 8x8
    np.testing.assert_allclose(feeds[2]["pixel_values"][0, :, 4, 4],
                               [(10 / 255 - 0.5) / 0.25, (102 / 255 - 0.5) / 0.5, (250 / 255 - 0.5) / 0.5], rtol=1e-5)
    # beside the model (a Hugging Face export's folder), the CLI finds it by itself
    ox.save(model, tmp_path / "hf" / "model.onnx")
    code = main(["validate", str(tmp_path / "hf" / "model.onnx"), "--data", str(tmp_path / "imgs"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"data: preprocessing from {tmp_path / 'hf' / 'preprocessor_config.json'}" in captured.err
    assert json.loads(captured.out)["samples"] == 3


def test_text_lines_are_tokenized_for_the_model_inputs(tmp_path, tokenizer_json):
    (tmp_path / "lines.txt").write_text("the cat sat\n\n  \nthe dog ran on a mat\nzebra\n", encoding="utf-8")
    source = DataSource.from_path(tmp_path / "lines.txt", tokenizer=tokenizer_json, batch_size=2)
    assert source.type == "text"
    feeds = list(read_source(source, model=_tokens_model()))
    assert len(feeds) == 2 and set(feeds[0]) == {"input_ids", "attention_mask"}  # token_type_ids left out
    assert feeds[0]["input_ids"].tolist() == [[2, 4, 5, 6, 3, 0, 0, 0], [2, 4, 10, 11, 7, 8, 9, 3]]  # padded
    assert feeds[0]["attention_mask"].tolist()[0] == [1, 1, 1, 1, 1, 0, 0, 0]
    assert feeds[1]["input_ids"].tolist() == [[2, 1, 3]]  # an unknown word
    fixed = list(read_source(source, model=_tokens_model(ids="int32", seq="6")))  # cast, padded and cut to 6
    assert fixed[0]["input_ids"].dtype == np.int32 and fixed[0]["input_ids"].tolist()[1] == [2, 4, 10, 11, 7, 3]
    assert fixed[1]["input_ids"].shape == (1, 6)
    (tmp_path / "pairs.txt").write_text("the cat\ta mat\nthe dog\tran\n")
    pairs = list(read_source(DataSource.from_path(tmp_path / "pairs.txt", tokenizer=tokenizer_json)))
    assert pairs[0]["input_ids"].tolist() == [[2, 4, 5, 3, 8, 9, 3]]
    assert pairs[0]["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_a_python_function_makes_the_feeds(tmp_path, small_model, monkeypatch, capsys):
    (tmp_path / "feeds_mod.py").write_text(
        "import numpy as np\n\n"
        "def make(inputs):\n"
        "    for i in range(6):\n"
        "        yield {inputs[0].name: np.full((2, 4), i, np.float64), 'label': np.int64(i)}\n\n"
        "def plain():\n"
        "    return [{'x': [[1.0, 2.0, 3.0, 4.0]]}]\n")
    data = read_source(f"{tmp_path / 'feeds_mod.py'}:make", model=small_model)
    feeds = list(data)
    assert len(data) == 6 and set(feeds[0]) == {"x"} and feeds[3]["x"].dtype == np.float32  # cast, label left out
    assert feeds[3]["x"][0, 0] == 3 and data.name == f"calibration ({tmp_path / 'feeds_mod.py'}:make)"
    monkeypatch.chdir(tmp_path)
    assert [f["x"].tolist() for f in read_source("feeds_mod:plain", model=small_model)] == [[[1, 2, 3, 4]]]
    out = tmp_path / "out.onnx"
    (tmp_path / "r.toml").write_text('[calibration]\nsource = "feeds_mod.py:make"\n[[passes]]\nname = "simplify"\n')
    assert main(["run", str(ox.save(small_model, tmp_path / "in.onnx")), "--recipe", "r.toml", "-o", str(out)]) == 0
    assert 'function = "make"' in (tmp_path / "out.lock.toml").read_text()
    capsys.readouterr()


def test_a_recipe_names_text_data(tmp_path, tokenizer_json):
    from onnxpress.pipeline import Pipeline
    from onnxpress.recipe import load_recipe, to_toml

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lines.txt").write_text("the cat sat on the mat\nthe dog\na cat ran\n")
    (tmp_path / "r.toml").write_text('[calibration]\nsource = "data/lines.txt"\ntype = "text"\n'
                                     'tokenizer = "tokenizer.json"\nmax_length = 5\nbatch_size = 2\n'
                                     '[[passes]]\nname = "simplify"\n')
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.calibration == DataSource(tmp_path.joinpath("data/lines.txt").relative_to(tmp_path), type="text",
                                            tokenizer=tokenizer_json.relative_to(tmp_path), max_length=5, batch_size=2)
    feeds = list(Pipeline.from_recipe(recipe).data(_tokens_model(), "calibration"))
    assert [f["input_ids"].shape for f in feeds] == [(2, 5), (1, 5)] and feeds[0]["input_ids"][0, -1] == 3  # cut
    assert 'tokenizer = "tokenizer.json"' in to_toml(recipe) and 'max_length = 5' in to_toml(recipe)
    with pytest.raises(RecipeError, match=r"r.toml: \[calibration\] \['tokenizer'\] apply to type = 'text' only"):
        load_recipe(_write(tmp_path / "r.toml", '[calibration]\nsource = "c.npz"\ntokenizer = "t"\n'))
    with pytest.raises(RecipeError, match=r"r.toml: \[calibration\]: text data needs a tokenizer"):
        load_recipe(_write(tmp_path / "r.toml", '[calibration]\nsource = "lines.txt"\n'))


def _write(path, table):
    path.write_text(table + '[[passes]]\nname = "simplify"\n')
    return path


def test_fit_feed_casts_only_what_is_safe(small_model):
    specs = input_specs(small_model)
    assert fit_feed(specs, {"x": np.ones((2, 4))}, "data")["x"].dtype == np.float32
    with pytest.raises(DataError, match=r"^data: input 'x' wants float32 \[N,4\], the data gives int8 \[2,4\]$"):
        fit_feed(specs, {"x": np.ones((2, 4), np.int8)}, "data")
    with pytest.raises(DataError, match=r"^data: input 'x' wants float32 \[N,4\], the data gives \[2,5\]$"):
        fit_feed(specs, {"x": np.ones((2, 5), np.float32)}, "data")
    ids = input_specs(_tokens_model(ids="int32"))
    with pytest.raises(DataError, match="input 'input_ids' wants int32 and its int64 values do not fit"):
        fit_feed(ids, {"input_ids": np.full((1, 2), 2**40), "attention_mask": np.ones((1, 2), np.int32)}, "data")


@pytest.mark.slow
def test_run_calibrates_a_text_model_on_lines_and_a_tokenizer(tmp_path, capsys, monkeypatch):
    """`onnxpress run bert.onnx --calibration lines.txt --tokenizer FOLDER`, FOLDER a saved
    transformers tokenizer; the passes receive the tokenized lines."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from onnxpress.pipeline import Pipeline

    words = WORDS + ["fast", "slow", "red", "blue", "big", "small", "house", "tree"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=len(words),
        max_position_embeddings=64)).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tokenizer(["the cat sat on the mat"], return_tensors="pt")
    model = ox.export(Hidden(), tuple(example[n] for n in names), input_names=names, output_names=["hidden"],
                      dynamic_dims={n: {1: "sequence"} for n in names}, exporter="torchscript")
    ox.save(model, tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words[4:], size=int(rng.integers(2, 10)))) for _ in range(24)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "q.toml").write_text(QUANTIZE)
    seen = []
    run = Pipeline.run

    def spy(self, model, calibration=None, **kwargs):
        seen.extend(calibration.take(3))
        return run(self, model, calibration, **kwargs)

    monkeypatch.setattr(Pipeline, "run", spy)
    out = tmp_path / "out.onnx"
    code = main(["run", str(tmp_path / "bert.onnx"), "--recipe", str(tmp_path / "q.toml"), "--calibration",
                 str(tmp_path / "lines.txt"), "--tokenizer", str(tmp_path / "tok"), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert seen[2]["input_ids"].tolist() == tokenizer(lines[2], return_tensors="np")["input_ids"].tolist()
    assert seen[2]["input_ids"].tolist() == [[2, *(words.index(w) for w in lines[2].split()), 3]]  # no [UNK]
    assert {k: v.dtype for k, v in seen[2].items()} == {n: np.int64 for n in names}
    feed = {n: seen[0][n] for n in names}
    expected_hidden, got = ort_run(model, feed)[0], ort_run(ox.load(out), feed)[0]
    assert np.abs(expected_hidden - got).max() < 0.1
    assert 'tokenizer = "tok"' in (tmp_path / "out.lock.toml").read_text()


# ----------------------------------------------------------------------------- errors: one line, exit 2, nothing written


def test_error_images_of_the_wrong_size(tmp_path, digit_pngs, recipe, capsys):
    folder, _ = digit_pngs
    out = tmp_path / "out.onnx"
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", recipe, "--calibration", str(folder),
                 "--image-size", "16", "-o", str(out)])
    assert _error(capsys, code) == (f"calibration ({folder}): input 'input' wants float32 [batch,1,8,8], the images "
                                    "give [1,1,16,16]: pass --image-size 8x8 (size = [8, 8] in a recipe)")
    assert not out.exists() and not (tmp_path / "out.lock.toml").exists()


def test_error_tokenizer_path_missing(tmp_path, recipe, capsys):
    (tmp_path / "lines.txt").write_text("the cat\n")
    model, out = ox.save(_tokens_model(), tmp_path / "m.onnx"), tmp_path / "out.onnx"
    code = main(["run", str(model), "--recipe", recipe, "--calibration", str(tmp_path / "lines.txt"),
                 "--tokenizer", str(tmp_path / "nope"), "-o", str(out)])
    assert _error(capsys, code) == (f"calibration ({tmp_path / 'lines.txt'}): tokenizer {tmp_path / 'nope'}: "
                                    "no such file or folder")
    code = main(["run", str(model), "--recipe", recipe, "--calibration", str(tmp_path / "lines.txt"), "-o", str(out)])
    assert _error(capsys, code) == (f"--calibration {tmp_path / 'lines.txt'}: text data needs a tokenizer "
                                    "(tokenizer = PATH in a recipe, --tokenizer PATH on the command line)")
    assert not out.exists()


@pytest.mark.parametrize("body, message", [
    ("def feeds():\n    raise ValueError('no data\\nhere')\n", "feeds() raised ValueError: no data"),
    ("def feeds():\n    yield {'x': np.ones((1, 4), np.float32)}\n    raise KeyError('gone')\n",
     "item 1: feeds() raised KeyError: 'gone'"),
    ("def feeds():\n    return [[1, 2]]\n", "item 0 is a list, not a mapping of input names to arrays"),
    ("def feeds():\n    return 3\n", "feeds() returned a int, not an iterable of feeds (mappings of input name to array)"),
    ("def feeds():\n    return [{'x': 'text'}]\n", "item 0: 'x' is a str, not an array of numbers"),
    ("def feeds():\n    return [{'y': np.ones((1, 4))}]\n",
     "missing input(s) ['x']; the model takes ['x'], the function gives ['y']"),
    ("def feeds(a, b):\n    return []\n", "feeds() must take no argument or one (the model's inputs), it takes ['a', 'b']"),
    ("import nowhere_to_be_found\n", "cannot import {file}: ModuleNotFoundError: No module named 'nowhere_to_be_found'"),
])
def test_error_from_a_python_function(tmp_path, small_model, recipe, capsys, body, message):
    (tmp_path / "src.py").write_text("import numpy as np\n" + body)
    model, out = ox.save(small_model, tmp_path / "m.onnx"), tmp_path / "out.onnx"
    code = main(["run", str(model), "--recipe", recipe, "--calibration", f"{tmp_path / 'src.py'}:feeds", "-o", str(out)])
    assert _error(capsys, code) == f"calibration ({tmp_path / 'src.py'}:feeds): " + message.format(file=tmp_path / "src.py")
    assert not out.exists()


def test_error_an_input_the_source_cannot_give(tmp_path, tokenizer_json, digit_pngs, capsys):
    folder, _ = digit_pngs
    model = ox.save(ir.from_onnx_text(PIXELS_TEXT.format(extra=", float[1] scale")), tmp_path / "m.onnx")
    code = main(["validate", str(model), "--data", str(folder)])
    assert _error(capsys, code) == (f"data ({folder}): images feed 'pixel_values' only, and the model also takes "
                                    "['scale']; use .npz files or a Python function (module:function) for this model")
    (tmp_path / "lines.txt").write_text("the cat\n")
    code = main(["validate", str(model), "--data", str(tmp_path / "lines.txt"), "--tokenizer", str(tokenizer_json)])
    assert _error(capsys, code) == (f"data ({tmp_path / 'lines.txt'}): the model input(s) ['pixel_values', 'scale'] "
                                    "are not what a tokenizer gives (input_ids, attention_mask, token_type_ids); use "
                                    ".npz files or a Python function (module:function) for this model")


def test_error_a_data_option_that_fits_no_source(tmp_path, recipe, capsys):
    out = tmp_path / "out.onnx"
    code = main(["run", str(samples.DIGITS_MODEL), "--recipe", recipe, "--calibration", str(samples.DIGITS_CALIB),
                 "--image-size", "8", "-o", str(out)])
    assert _error(capsys, code) == (f"--image-size applies to a folder of images as --calibration or --data "
                                    f"(--calibration {samples.DIGITS_CALIB} is npz data); a recipe's data take their "
                                    "settings in its table")
    assert not out.exists()
