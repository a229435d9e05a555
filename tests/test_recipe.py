
import logging
from pathlib import Path

import numpy as np
import pytest

import onnxpress as ox
from onnxpress.calibration import DataSource, read_source
from onnxpress.recipe import load_recipe, parse_recipe

GOOD = """
description = "test"
target = "cpu"
[pipeline]
check = true
golden_samples = 2
[calibration]
source = "calib.npz"
limit = 3
[[passes]]
name = "simplify"
fold_limit_bytes = 1024
engine = "onnx-ir"
"""


def test_a_recipe_builds_its_pipeline(tmp_path, small_model):
    np.savez(tmp_path / "calib.npz", x=np.ones((10, 4), np.float32))
    (tmp_path / "r.toml").write_text(GOOD)
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.pass_names == ["simplify"] and recipe.target == "cpu"
    simplify = recipe.passes[0]
    assert isinstance(simplify, ox.passes.Simplify)
    assert simplify.fold_limit_bytes == 1024 and simplify.engine == "onnx-ir"
    assert recipe.calibration == DataSource(Path("calib.npz"), limit=3) and recipe.evaluation is None
    assert len(read_source(recipe.calibration, base=recipe.path.parent)) == 3  # relative to the recipe, capped
    pipeline = ox.Pipeline.from_recipe(tmp_path / "r.toml")
    assert pipeline.golden_samples == 2
    result = pipeline.run(small_model)
    assert result.golden_source == "calibration"
    assert result.records[0].statistics["engine"] == "onnx-ir"


@pytest.mark.parametrize("text, message", [
    ('[[passes]]\nname = "simplfy"', r"r\.toml: passes\[1\]: unknown pass 'simplfy'; known passes: .*simplify"),
    ('[[passes]]\nname = "simplify"\nfold_limit = 3',
     r"passes\[1\]: pass 'simplify' has no option 'fold_limit'; its options are: fold_limit_bytes"),
    ('[[passes]]\nname = "simplify"\nfold_batchnorm = "yes"',
     r"/r\.toml: passes\[1\]: pass 'simplify' option 'fold_batchnorm' must be bool, got str 'yes'$"),
    ('[[passes]]\nname = "simplify"\nfuse_bn = "yes"', r"option 'fold_batchnorm' must be bool, got str 'yes'"),
    ('[[passes]]\nname = "simplify"\nfuse_bn = false\nfold_batchnorm = true',
     r"option 'fuse_bn' is the old name of 'fold_batchnorm'; give 'fold_batchnorm' only"),
    ('[[passes]]\nname = "prune"\nsparsity = true', r"option 'sparsity' must be float, got bool True"),
    ('[[passes]]\nname = "prune"\nsparsity_by = { Conv = "half" }',
     r"option 'sparsity_by' must be a table of float or none, got dict"),
    ('[[passes]]\nname = "simplify"\nengine = "magic"', r"option 'engine' must be one of 'auto', 'onnxsim', 'onnx-ir'"),
    ('[[passes]]\nname = "simplify"\nfold_limit_bytes = -1', r"passes\[1\]: simplify: fold_limit_bytes must be >= 0"),
    ('[[passes]]\nname = "simplify"\n[[passes]]\nfuse_bn = true', r"passes\[2\]: each pass needs a 'name'"),
    ('passes = [', "not valid TOML"),
    ('description = "nothing"', "names no passes"),
    ('speed = "max"\n[[passes]]\nname = "simplify"', r"unknown key\(s\) \['speed'\]"),
    ('[pipeline]\ncheck = 1\n[[passes]]\nname = "simplify"', r"\[pipeline\]: 'check' must be bool, got int 1"),
    ('[calibration]\nlimit = 3\n[[passes]]\nname = "simplify"', r"\[calibration\] needs a 'source'"),
    ('[evaluation]\nsource = "e.npz"\nlimit = "all"\n[[passes]]\nname = "simplify"',
     r"/r\.toml: \[evaluation\]: 'limit' must be int, got str 'all'$"),
    ('[evaluation]\nsource = "e.npz"\nsamples = 3\n[[passes]]\nname = "simplify"',
     r"\[evaluation\]: unknown key 'samples'; known: source, type"),
    ('[calibration]\nsource = "c.npz"\ntype = "csv"\n[[passes]]\nname = "simplify"',
     r"\[calibration\]: 'type' must be one of 'npz', 'npy', 'images', 'text', 'python', got str 'csv'"),
    ('[calibration]\nsource = "c.npz"\ncolor = "L"\n[[passes]]\nname = "simplify"',
     r"\[calibration\] \['color'\] apply to type = 'images' only"),
    ('[calibration]\nsource = "c.npz"\nbatch_size = 0\n[[passes]]\nname = "simplify"',
     r"\[calibration\]: batch_size must be >= 1, got 0"),
    ('target = 3\n[[passes]]\nname = "simplify"', r"r\.toml: 'target' must be str or none, got int 3"),
    ('[pipeline]\ninput_shapes = { x = [1, 0] }\n[[passes]]\nname = "simplify"',
     r"\[pipeline\]: 'input_shapes': the shape of 'x' must be a list of positive integers, got \[1, 0\]"),
    ('[pipeline]\ninput_shapes = { x = "1x4" }\n[[passes]]\nname = "simplify"',
     r"\[pipeline\]: 'input_shapes' must be"),
])
def test_recipe_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(ox.RecipeError, match=message):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ox.RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "none.toml")


def test_the_sample_recipe_is_valid():
    from onnxpress import samples

    recipe = load_recipe(samples.RECIPE)
    assert recipe.pass_names[0] == "simplify"
    assert len(read_source(recipe.calibration, base=recipe.path.parent)) == 200


def test_old_option_names_are_taken_with_a_warning(tmp_path, caplog):
    path = tmp_path / "r.toml"
    path.write_text('[[passes]]\nname = "simplify"\nfuse_bn = false\n'
                    '[[passes]]\nname = "prune"\nskip = ["conv_b"]\n')
    with caplog.at_level(logging.WARNING, logger="onnxpress.registry"):
        recipe = load_recipe(path)
    simplify, prune = recipe.passes
    assert simplify.fold_batchnorm is False and prune.exclude == ["conv_b"]
    assert f"{path}: passes[1]: pass 'simplify' option 'fuse_bn' is deprecated" in caplog.text
    assert "use 'fold_batchnorm'" in caplog.text
    assert f"{path}: passes[2]: pass 'prune' option 'skip' is deprecated" in caplog.text
    assert "use 'exclude'" in caplog.text


def test_evaluation_source_and_only_the_model_inputs_are_fed(tmp_path, small_model):
    """[evaluation] parses like [calibration]; with a model, arrays it does not take are left out."""
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "calib.npz", x=np.ones((6, 4), np.float32), label=np.arange(6))
    np.savez(tmp_path / "data" / "eval.npz", x=np.zeros((4, 4), np.float32), label=np.arange(4))
    recipe = parse_recipe('[calibration]\nsource = "data/calib.npz"\nbatch_size = 2\n'
                          '[evaluation]\nsource = "data/eval.npz"\n[[passes]]\nname = "simplify"\n',
                          name="r.toml", path=tmp_path / "r.toml")
    assert recipe.evaluation == DataSource(Path("data/eval.npz"))
    calib = read_source(recipe.calibration, model=small_model, base=tmp_path)
    assert len(calib) == 3 and all(set(feed) == {"x"} for feed in calib)
    evaluation = read_source(recipe.evaluation, model=small_model, base=tmp_path, name="evaluation")
    assert len(evaluation) == 4 and evaluation.name.startswith("evaluation (")
    assert set(next(iter(read_source(recipe.calibration, base=tmp_path)))) == {"x", "label"}  # no model: all


def test_input_shapes_in_the_pipeline_table():
    recipe = parse_recipe('[pipeline]\ninput_shapes = { images = [1, 3, 320, 320], "input:0" = [1, 16] }\n'
                          '[[passes]]\nname = "simplify"\n')
    assert recipe.pipeline_options["input_shapes"] == {"images": (1, 3, 320, 320), "input:0": (1, 16)}
