"""A pass written elsewhere, with only the documented API, registered through the entry point
group ``onnxpress.passes`` and run from a recipe, like a built-in.

The throwaway package is installed (pip, no build isolation) into a folder of its own that the
child process puts on its path, so its entry point is found by ``importlib.metadata``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import onnxpress as ox
from onnxpress import samples

_PASS = textwrap.dedent('''
    """A third-party pass: multiplies the first graph output by a constant."""
    import numpy as np
    import onnx_ir as ir

    import onnxpress as ox


    class ScaleOutput(ox.Pass, ir.passes.InPlacePass):
        """Multiply the first graph output by ``factor``."""

        name = "scale_output"
        needs_data = True

        def __init__(self, *, factor: float = 2.0) -> None:
            super().__init__()
            if factor == 0:
                raise ValueError("scale_output: factor must not be 0")
            self.factor = factor

        def call(self, model: ir.Model) -> ox.PassResult:
            output = model.graph.outputs[0]
            seen = self.context.statistics(model, tensors=[output.name])[output.name]
            self.context.say(f"largest |output| {max(abs(seen.min), abs(seen.max)):.3f}")
            scale = ir.Value(name="third_party_factor",
                             const_value=ir.tensor(np.array(self.factor, np.float32), name="third_party_factor"))
            model.graph.register_initializer(scale)
            mul = ir.node("Mul", [output, scale], name="third_party_scale")
            model.graph.append(mul)
            name = output.name
            output.name = f"{name}_unscaled"
            mul.outputs[0].name = name
            mul.outputs[0].dtype, mul.outputs[0].shape = output.dtype, output.shape
            model.graph.outputs[0] = mul.outputs[0]
            return ox.PassResult(model, modified=True, statistics={
                "factor": self.factor, "samples": len(self.context.calibration),
                "largest_before": float(max(abs(seen.min), abs(seen.max)))})
''')

_PYPROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=69"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "onnxpress-scale-output"
    version = "0.0.1"

    [project.entry-points."onnxpress.passes"]
    scale_output = "onnxpress_scale_output:ScaleOutput"

    [tool.setuptools]
    py-modules = ["onnxpress_scale_output"]
''')

_RECIPE = textwrap.dedent(f'''
    [calibration]
    source = "{samples.DIGITS_CALIB}"
    limit = 20

    [[passes]]
    name = "simplify"

    [[passes]]
    name = "scale_output"
    factor = 3.0
''')

# Run in the child: the recipe through the public API, the records printed as JSON.
_DRIVER = textwrap.dedent('''
    import json, sys
    import onnxpress as ox
    from onnxpress import registry

    recipe, model_path, out = sys.argv[1:4]
    pipeline = ox.Pipeline.from_recipe(recipe)
    result = pipeline.run(ox.load(model_path))
    ox.save(result.model, out)
    print(json.dumps({"records": [r.to_dict() for r in result.records],
                      "registered": sorted(registry.available()), "onnxpress": ox.__file__}))
''')


def install_package(folder: Path) -> Path:
    """Write and install the throwaway package; returns the folder to put on the path."""
    source = folder / "source"
    source.mkdir()
    (source / "pyproject.toml").write_text(_PYPROJECT)
    (source / "onnxpress_scale_output.py").write_text(_PASS)
    target = folder / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300, cwd=folder)
    if done.returncode != 0 and "setuptools" in done.stderr:
        pytest.skip("building the throwaway package needs setuptools in this interpreter")
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def run_recipe(python: Path | str, site: Path, folder: Path) -> tuple[dict, Path]:
    recipe = folder / "recipe.toml"
    recipe.write_text(_RECIPE)
    out = folder / "scaled.onnx"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([str(python), "-c", _DRIVER, str(recipe), str(samples.DIGITS_MODEL), str(out)],
                          capture_output=True, text=True, timeout=300, cwd=folder, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out


def check_result(report: dict, out: Path) -> None:
    assert "scale_output" in report["registered"]
    simplify, scale = report["records"]
    assert simplify["name"] == "simplify" and scale["name"] == "scale_output"
    assert scale["statistics"]["factor"] == 3.0
    assert scale["statistics"]["samples"] == 16  # 20 calibration samples, a fifth held out
    assert scale["statistics"]["largest_before"] > 0
    feeds = samples.digits_eval(batch_size=8)[0].take(2)
    original = ox.runtime.run_model(ox.load(samples.DIGITS_MODEL), feeds)
    scaled = ox.runtime.run_model(ox.load(out), feeds)
    for before, after in zip(original, scaled):
        np.testing.assert_allclose(after["logits"], 3.0 * before["logits"], rtol=1e-5, atol=1e-5)


def test_a_third_party_pass_runs_from_a_recipe(tmp_path):
    site = install_package(tmp_path)
    report, out = run_recipe(sys.executable, site, tmp_path)
    check_result(report, out)
