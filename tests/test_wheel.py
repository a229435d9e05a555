"""The built wheel is the whole product: one ``onnxpress`` package with its data, usable
outside the repository.

The wheel is built from a copy of the repository (pip builds in-tree, and setuptools leaves
``build/`` and ``*.egg-info`` behind; a stale ``build/lib`` would also leak removed modules
into the wheel). It is installed without dependencies into a throwaway venv; a ``.pth`` file
there puts this interpreter's site-packages on the path for the dependencies. A ``.pth``
line only appends the folder, it does not run that folder's own ``.pth`` files, so the
editable install of the repository stays out of the way.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Top-level entries of the repository that are environments or build products, not sources.
_NOT_SOURCES = {".venv", ".git", ".pytest_cache", "build", "dist", "out", "demo-out"}

TIMEOUT_S = 300


def _env() -> dict[str, str]:
    """This process's environment without anything that would steer imports or pip."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}


def _run(command: list, *, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, (f"{command} failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _ignore(folder: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(folder).resolve() == REPO:
        ignored |= _NOT_SOURCES & set(names)
    return ignored


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel offline with this interpreter's setuptools (no build isolation)."""
    pytest.importorskip("setuptools", reason="building without isolation needs setuptools here")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_ignore)
    out = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", out, source], cwd=root)
    wheels = list(out.glob("onnxpress-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A throwaway venv with the wheel installed and this venv's packages as dependencies."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    here = tmp_path_factory.mktemp("cwd")
    _run([sys.executable, "-m", "venv", "--without-pip", folder], cwd=here)
    python = folder / "bin" / "python"
    # This interpreter's pip installs into the throwaway venv (pip >= 22.3 has --python).
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          wheel], cwd=here)
    paths = json.loads(_run([python, "-c", "import json, sysconfig; "
                                           "print(json.dumps(sysconfig.get_paths()))"],
                            cwd=here).stdout)
    dependencies = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(paths["purelib"]) / "onnxpress-test-dependencies.pth").write_text(
        "".join(f"{path}\n" for path in dependencies))
    return folder


def test_wheel_holds_only_the_onnxpress_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith(".dist-info/top_level.txt")))
    tops = {name.split("/", 1)[0] for name in names}
    packages = {top for top in tops if not top.endswith((".dist-info", ".data"))}
    assert packages == {"onnxpress"}, sorted(tops)
    assert top_level.decode().split() == ["onnxpress"]
    for folder in ("passes", "targets", "samples", "tests"):
        assert not any(name.startswith(f"{folder}/") for name in names), folder
    for shipped in ("onnxpress/passes/simplify.py", "onnxpress/targets/cpu.toml",
                    "onnxpress/targets/cuda.toml", "onnxpress/targets/edge.toml",
                    "onnxpress/samples/digits_cnn.onnx", "onnxpress/samples/digits_mlp.onnx",
                    "onnxpress/samples/recipe.toml", "onnxpress/py.typed", "onnxpress/__main__.py",
                    "onnxpress/samples/digits_calib.npz", "onnxpress/samples/digits_eval.npz"):
        assert shipped in names, shipped
    assert not any("/tests/" in name or name.startswith("tests/") for name in names)


# Run by the throwaway venv's interpreter, from a folder outside the repository.
_CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import onnxpress
    import onnxpress.passes
    import onnxpress.samples
    import onnxpress.targets
    from onnxpress import targets
    from onnxpress.passes import Simplify

    report = {
        "prefix": sys.prefix,
        "files": {m.__name__: m.__file__ for m in (onnxpress, onnxpress.passes, onnxpress.targets,
                                                     onnxpress.samples)},
        "stray_modules": sorted(n for n in ("passes", "targets", "samples") if n in sys.modules),
        "target_files": sorted(p.name for p in Path(targets.FOLDER).glob("*.toml")),
        "targets": {name: targets.load(name).providers for name in targets.builtin()},
        "samples": {p.name: p.is_file() for p in (onnxpress.samples.DIGITS_MODEL,
                                                   onnxpress.samples.RECIPE)},
    }
    model = onnxpress.load(onnxpress.samples.DIGITS_MODEL)
    result = onnxpress.Pipeline([Simplify()]).run(model)
    record = result.records[0]
    report["simplify"] = {"engine": record.statistics["engine"], "checked": record.checked,
                          "max_abs": record.max_abs, "nodes_after": record.nodes_after}
    print(json.dumps(report))
""")


def test_installed_wheel_works_outside_the_repository(venv, tmp_path):
    python = venv / "bin" / "python"
    done = _run([python, "-c", _CHECK], cwd=tmp_path)
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert Path(report["prefix"]).resolve() == venv.resolve()
    for module, file in report["files"].items():
        assert Path(file).resolve().is_relative_to(venv.resolve()), (module, file)
        assert not Path(file).resolve().is_relative_to(REPO), (module, file)
    assert report["stray_modules"] == []
    assert report["target_files"] == ["cpu.toml", "cuda.toml", "edge.toml", "mcu.toml"]
    assert set(report["targets"]) == {"cpu", "cuda", "edge", "mcu"}
    assert all(report["targets"].values())
    assert report["samples"] == {"digits_cnn.onnx": True, "recipe.toml": True}
    assert report["simplify"]["checked"] is True
    assert report["simplify"]["nodes_after"] > 0
    assert report["simplify"]["max_abs"] is not None

    script = venv / "bin" / "onnxpress"
    assert script.is_file()
    listing = _run([script, "passes"], cwd=tmp_path).stdout
    assert "simplify" in listing.split()
    assert _run([python, "-m", "onnxpress", "passes"], cwd=tmp_path).stdout == listing  # python -m works alike


def test_a_third_party_pass_runs_with_the_installed_wheel(venv, tmp_path):
    """The documented pass API is all a third-party package needs, from an installed wheel too."""
    from test_third_party_pass import check_result, install_package, run_recipe

    site = install_package(tmp_path)
    report, out = run_recipe(venv / "bin" / "python", site, tmp_path)
    assert Path(report["onnxpress"]).resolve().is_relative_to(venv.resolve())
    check_result(report, out)
