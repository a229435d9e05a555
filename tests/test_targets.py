import pytest

import onnxpress as ox
from onnxpress import targets


def _profile(tmp_path, old: str, new: str):
    path = tmp_path / "mine.toml"
    text = (targets.FOLDER / "cpu.toml").read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_profiles_name_their_instruction_set(tmp_path):
    assert targets.load("cpu").isa == "host" and targets.load("cuda").isa == "host"
    assert targets.load("edge").isa == "arm64-dotprod"
    assert targets.load(_profile(tmp_path, 'isa = "host"', 'isa = "x86-avx2"')).isa == "x86-avx2"
    assert targets.load(_profile(tmp_path, 'isa = "host"', "")).isa == "host"  # the default


@pytest.mark.parametrize("old, new, message", [
    ('isa = "host"', 'isa = "riscv"', r"mine.toml: \[runtime\]: 'isa' must be one of 'host', 'x86-vnni', .*"
                                      r"got str 'riscv'"),
    ('optimization = "all"', 'optimization = "fast"', r"\[runtime\]: 'optimization' must be one of 'disable'"),
    ("intra_op_threads = 0", "intra_op_threads = true", r"\[runtime\]: 'intra_op_threads' must be int, got bool"),
    ("cosine = 0.99", 'cosine = "high"', r"\[tolerances\]: 'cosine' must be float, got str 'high'"),
    ("warmup = 5", "warm_up = 5", r"\[latency\]: unknown key 'warm_up'; known: warmup"),
    ('providers = ["CPUExecutionProvider"]', "providers = [1]", r"'providers' must be a list of str, got list \[1\]"),
    ('providers = ["CPUExecutionProvider"]', "providers = []", r"'providers' must be a non-empty list"),
])
def test_profile_mistakes_are_named(tmp_path, old, new, message):
    with pytest.raises(ox.RecipeError, match=message):
        targets.load(_profile(tmp_path, old, new))


def test_integers_are_taken_where_floats_are_wanted(tmp_path):
    target = targets.load(_profile(tmp_path, "size_mb = 0.0", "size_mb = 25"))
    assert target.size_mb == 25.0 and isinstance(target.size_mb, float)


def test_a_target_built_in_python_checks_its_isa():
    with pytest.raises(ValueError, match="isa must be one of host, x86-vnni"):
        targets.Target(name="t", description="", path=targets.FOLDER, providers=["CPUExecutionProvider"],
                       isa="z80")


def test_each_profile_names_the_precision_its_default_recipe_compresses_to(tmp_path):
    from onnxpress.recipe import default_recipe

    expected = {"cpu": ("int8", ["simplify", "quantize"]), "edge": ("int8", ["simplify", "quantize"]),
                "cuda": ("fp16", ["simplify", "fp16"]), "mcu": ("int8-pow2", ["simplify", "quantize"])}
    for name, (precision, passes) in expected.items():
        assert targets.load(name).precision == precision
        recipe = default_recipe(name)
        assert recipe.pass_names == passes and recipe.target == name
    mcu = targets.load("mcu")
    assert mcu.intra_op_threads == 1 and mcu.size_mb == 1.0
    assert default_recipe("mcu").passes[1].scale == "pow2"
    assert default_recipe("cuda").passes[1].dtype == "float16"
    with pytest.raises(ox.RecipeError, match=r"\[recipe\]: 'precision' must be one of 'fp32', 'fp16'"):
        targets.load(_profile(tmp_path, 'precision = "int8"', 'precision = "int3"'))
