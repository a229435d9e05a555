
import numpy as np
import pytest

import onnxpress as ox
from onnxpress.recipe import load_recipe

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
    assert len(recipe.calibration_source()) == 3  # relative to the recipe, capped by limit
    pipeline = ox.Pipeline.from_recipe(tmp_path / "r.toml")
    assert pipeline.golden_samples == 2
    result = pipeline.run(small_model)
    assert result.golden_source == "calibration"
    assert result.records[0].statistics["engine"] == "onnx-ir"


@pytest.mark.parametrize("text, message", [
    ('[[passes]]\nname = "simplfy"', r"r\.toml: passes\[1\]: unknown pass 'simplfy'; known passes: .*simplify"),
    ('[[passes]]\nname = "simplify"\nfold_limit = 3',
     r"passes\[1\]: pass 'simplify' has no option 'fold_limit'; its options are: fold_limit_bytes"),
    ('[[passes]]\nname = "simplify"\nfuse_bn = "yes"', r"option 'fuse_bn' must be bool, got str 'yes'"),
    ('[[passes]]\nname = "simplify"\nengine = "magic"', r"option 'engine' must be one of 'auto', 'onnxsim', 'onnx-ir'"),
    ('[[passes]]\nname = "simplify"\nfold_limit_bytes = -1', r"passes\[1\]: simplify: fold_limit_bytes must be >= 0"),
    ('[[passes]]\nname = "simplify"\n[[passes]]\nfuse_bn = true', r"passes\[2\]: each pass needs a 'name'"),
    ('passes = [', "not valid TOML"),
    ('description = "nothing"', "names no passes"),
    ('speed = "max"\n[[passes]]\nname = "simplify"', r"unknown key\(s\) \['speed'\]"),
    ('[pipeline]\ncheck = 1\n[[passes]]\nname = "simplify"', r"\[pipeline\]: 'check' must be bool, got int 1"),
    ('[calibration]\nlimit = 3\n[[passes]]\nname = "simplify"', r"\[calibration\] needs a 'source'"),
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
    assert len(recipe.calibration_source()) == 200
