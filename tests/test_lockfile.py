"""Lockfiles and ``onnxpress replay``; recipes written back to TOML."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import registry, samples
from onnxpress.cache import data_digest, model_digest, versions
from onnxpress.calibration import DataSource, ImageSpec, from_npz
from onnxpress.cli import main
from onnxpress.errors import RecipeError
from onnxpress.lockfile import ReplayResult, lock_path, nondeterministic, read_lock
from onnxpress.recipe import dumps, load_recipe, parse_recipe, pass_options, recipe_text, to_toml

RECIPE = """description = "simplify, then int8 on 20 digits"
target = "cpu"
[calibration]
source = "calib.npz"
limit = 20
[[passes]]
name = "simplify"
[[passes]]
name = "quantize"
calibration_samples = 16
"""

# Options changed from their defaults, of every kind TOML has to hold: lists, tables, None
# where None is the default, strings that need escapes.
CHANGED = {
    "simplify": {"fold_limit_bytes": 0, "engine": "onnx-ir", "fold_batchnorm": False},
    "quantize": {"mode": "static", "op_types": ["Conv", "Gemm"], "include": ["a.b"], "exclude": ['q"uote\\'],
                 "reduce_range": True, "smoothquant_alpha": 0.5, "target_cosine": 0.995, "percentile": 99.9},
    "lowrank": {"method": "activation", "rank": 8, "op_types": ["MatMul"], "exclude": ["x\ty"], "seed": 3},
    "prune": {"criterion": "random", "granularity": "n:m", "sparsity_by": {"Conv": 0.5, "features.3 w": 0.25},
              "exclude": ["first\nlast"], "skip_first_last": True, "compensate": False},
    "distill": {"steps": None, "time_budget": 5.0, "train": ["Conv", "bias"], "labels": "data.npz:label",
                "task_output": "logits", "threads": 1},
    "fp16": {"dtype": "bfloat16", "block": ["Resize"], "exclude": ["n1"], "measure": False},
    "weightonly": {"bits": 4, "block_size": 64, "accuracy_level": 4, "error_budget": 0.01, "exclude": ["é"],
                   "embeddings": False},
}
BUILTIN = ["simplify", "quantize", "lowrank", "prune", "distill", "fp16", "weightonly"]


@pytest.mark.parametrize("changed", [False, True], ids=["defaults", "changed"])
@pytest.mark.parametrize("name", BUILTIN)
def test_a_written_recipe_reads_back_every_option(name, changed):
    item = registry.create(name, CHANGED[name] if changed else {})
    text = recipe_text([item], target="cpu")
    back = parse_recipe(text).passes[0]
    assert type(back) is type(item)
    assert pass_options(back) == pass_options(item)
    written = tomllib.loads(text)["passes"][0]
    options = registry.options(type(item))
    # every option is explicit, but for those None by default and left None
    assert set(written) - {"name"} == {k for k in options if getattr(item, k) is not None}


def test_none_over_another_default_and_arrays_are_refused_by_name():
    item = registry.create("simplify", {})
    item.engine = None
    with pytest.raises(RecipeError, match=r"pass 'simplify' option 'engine' is None, which TOML cannot write"):
        recipe_text([item])
    distill = registry.get("distill")(labels=np.arange(4))
    with pytest.raises(RecipeError, match=r"pass 'distill' option 'labels' cannot be written to TOML"):
        recipe_text([distill])


def test_dumps_escapes_strings_and_reads_back_equal():
    data = {"description": 'a "quoted" \\ back\nslash\ttab \x01 \x7f é ✓', "target": "cpu",
            "pipeline": {"input_shapes": {"input.1": [1, 3, 8, 8], "weird key": [2]}, "accuracy_floor": 0.99},
            "passes": [{"name": "prune", "sparsity_by": {"a.b": 0.5}, "exclude": []}],
            "big": {"x": 2**63 - 1, "inf": float("inf"), "tiny": 1e-300, "neg": -0.0}}
    assert tomllib.loads(dumps(data)) == data
    with pytest.raises(ValueError, match="None"):
        dumps({"a": {"b": None}})


def test_data_sources_are_written_relative_to_the_recipe_when_inside_it(tmp_path):
    calibration = DataSource(Path("calib.npz"), batch_size=2, limit=5)
    images = DataSource(tmp_path / "imgs", type="images", input="x",
                        image=ImageSpec(size=(8, 8), mean=(0.5,), std=(0.25,), color="L"))
    item = registry.create("simplify", {})
    inside = tomllib.loads(recipe_text([item], calibration=calibration, evaluation=images, base=tmp_path,
                                       folder=tmp_path))
    assert inside["calibration"] == {"source": "calib.npz", "type": "npz", "batch_size": 2, "limit": 5}
    assert inside["evaluation"]["source"] == "imgs"
    elsewhere = tomllib.loads(recipe_text([item], calibration=calibration, base=tmp_path, folder=tmp_path / "sub"))
    assert elsewhere["calibration"]["source"] == (tmp_path / "calib.npz").as_posix()
    back = parse_recipe(recipe_text([item], evaluation=images, base=tmp_path, folder=tmp_path))
    assert back.evaluation == DataSource(Path("imgs"), type="images", input="x", image=images.image)


def test_to_toml_keeps_a_recipe_file_whole(tmp_path):
    recipe = load_recipe(samples.RECIPE)
    copy = tmp_path / "recipe.toml"
    copy.write_text(to_toml(recipe, folder=tmp_path))  # written elsewhere: the data paths follow
    back = load_recipe(copy)
    assert [pass_options(p) for p in back.passes] == [pass_options(p) for p in recipe.passes]
    assert (back.target, back.description, back.pipeline_options) == (recipe.target, recipe.description,
                                                                      recipe.pipeline_options)
    assert back.calibration.source == samples.DIGITS_CALIB and back.evaluation.source == samples.DIGITS_EVAL
    assert parse_recipe(to_toml(recipe), path=samples.RECIPE).calibration == recipe.calibration


def test_passes_that_follow_the_clock_are_not_deterministic():
    passes = [registry.create(name, {}) for name in BUILTIN]
    assert nondeterministic(passes) == ["weightonly"]  # accuracy_level="auto" is chosen by timing
    timed = [registry.create("distill", {"time_budget": 2.0}), registry.create("quantize", {"latency_aware": True}),
             registry.create("weightonly", {"accuracy_level": 4})]
    assert nondeterministic(timed) == ["distill", "quantize"]
    assert ox.Pass.deterministic is True


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """One ``onnxpress run`` of simplify + quantize on the digits CNN, with its lockfile."""
    folder = tmp_path_factory.mktemp("run")
    shutil.copy(samples.DIGITS_MODEL, folder / "model.onnx")
    shutil.copy(samples.DIGITS_CALIB, folder / "calib.npz")
    (folder / "r.toml").write_text(RECIPE)
    code = main(["run", str(folder / "model.onnx"), "--recipe", str(folder / "r.toml"), "-o", str(folder / "out.onnx")])
    assert code == 0
    return folder


def test_run_writes_a_lockfile_with_the_digests(run_folder, capsys):
    lock = read_lock(run_folder / "out.lock.toml")
    assert lock_path(run_folder / "out.onnx") == run_folder / "out.lock.toml"
    assert lock.input_digest == model_digest(ox.load(run_folder / "model.onnx"))
    assert lock.input_path == run_folder / "model.onnx"  # the relative path, found first
    calibration = from_npz(run_folder / "calib.npz", limit=20, keys=["input"])
    assert lock.data["calibration"] == {"path": (run_folder / "calib.npz").as_posix(),
                                        "sha256": data_digest(calibration), "samples": 20}
    assert lock.file_digest == model_digest(ox.load(run_folder / "out.onnx"))
    assert lock.deterministic and lock.seed == 0 and lock.target == "cpu" and lock.tolerance == 0.99
    assert lock.versions == versions()
    assert lock.command.startswith("onnxpress run ") and lock.command.endswith("out.onnx")
    assert lock.recipe["calibration"] == {"source": "calib.npz", "type": "npz", "batch_size": 1, "limit": 20}
    assert lock.recipe["passes"][1]["calibration_samples"] == 16 and "method" in lock.recipe["passes"][1]


def test_replay_reproduces_the_digest(run_folder, tmp_path):
    again = tmp_path / "again.onnx"
    # in a process of its own, as replays run: the digest must not depend on the process
    child = subprocess.run([sys.executable, "-m", "onnxpress.cli", "replay", str(run_folder / "out.lock.toml"),
                            "-o", str(again)], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    out = child.stdout
    lock = read_lock(run_folder / "out.lock.toml")
    assert out.startswith(f"identical: the output's sha256 {lock.output_digest} is the lockfile's")
    assert model_digest(ox.load(again)) == lock.file_digest


def test_a_different_digest_of_a_deterministic_run_is_a_difference(run_folder):
    lock = read_lock(run_folder / "out.lock.toml")
    result = ReplayResult(lock=lock, model=None, digest="f" * 64, identical=False)
    assert not result.reproduced
    assert result.lines()[0].startswith(f"differs: sha256 {'f' * 64} is not the lockfile's {lock.output_digest}")


def test_the_embedded_recipe_run_again_gives_the_same_model(run_folder, capsys):
    lock = read_lock(run_folder / "out.lock.toml")
    recipe = run_folder / "resolved.toml"  # beside the lockfile: its data paths are relative to it
    recipe.write_text(lock.recipe_text)
    out = run_folder / "out2.onnx"
    assert main(["run", str(run_folder / "model.onnx"), "--recipe", str(recipe), "-o", str(out)]) == 0
    assert read_lock(run_folder / "out2.lock.toml").output_digest == lock.output_digest
    assert read_lock(run_folder / "out2.lock.toml").recipe == lock.recipe


def test_a_changed_input_model_is_one_error_line(run_folder, tmp_path, capsys):
    for name in ("model.onnx", "calib.npz", "out.onnx", "out.lock.toml"):
        shutil.copy(run_folder / name, tmp_path / name)  # the lockfile's relative paths follow the copy
    model = ox.load(tmp_path / "model.onnx")
    bias = model.graph.initializers["classifier.3.bias"]
    bias.const_value = ir.tensor(bias.const_value.numpy() + 1.0, name=bias.name)  # one weight changed
    ox.save(model, tmp_path / "model.onnx")
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "out.lock.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    recorded = read_lock(tmp_path / "out.lock.toml").input_digest
    assert err[0].startswith(f"onnxpress: error: {tmp_path / 'model.onnx'}: the input model changed")
    assert recorded in err[0] and model_digest(ox.load(tmp_path / "model.onnx")) in err[0]


def test_a_nondeterministic_run_is_held_to_its_tolerance(run_folder, tmp_path, capsys):
    for name in ("model.onnx", "calib.npz", "out.onnx"):
        shutil.copy(run_folder / name, tmp_path / name)
    text = (run_folder / "out.lock.toml").read_text()
    lock = read_lock(run_folder / "out.lock.toml")
    text = text.replace(f'\nsha256 = "{lock.output_digest}"', f'\nsha256 = "{"0" * 64}"')  # not file_sha256
    text = text.replace("deterministic = true", 'deterministic = false\nnondeterministic_passes = ["quantize"]')
    text = text.replace((run_folder / "out.onnx").as_posix(), (tmp_path / "out.onnx").as_posix())
    (tmp_path / "out.lock.toml").write_text(text)
    capsys.readouterr()
    assert main(["replay", str(tmp_path / "out.lock.toml")]) == 0
    assert capsys.readouterr().out.startswith("within tolerance: ")
    (tmp_path / "out.onnx").unlink()  # no recorded output: nothing to compare with
    assert main(["replay", str(tmp_path / "out.lock.toml")]) == 1
    assert capsys.readouterr().out.startswith("cannot check: ")


@pytest.mark.parametrize("text, message", [
    (None, "no such lockfile"),
    ("seed = [", "not a valid lockfile"),
    ("seed = 0\n", "not an onnxpress lockfile"),
    ("[lock]\nformat = 99\n", "lockfile format 99 is not one this onnxpress reads"),
    ("seed = 0\n[lock]\nformat = 1\n[input]\nsha256 = \"x\"\n", "the lockfile has no [output] table"),
])
def test_a_bad_lockfile_is_one_error_line(tmp_path, capsys, text, message):
    path = tmp_path / "out.lock.toml"
    if text is not None:
        path.write_text(text)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"onnxpress: error: {path}: ") and message in err[0], err
