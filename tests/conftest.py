"""Shared fixtures: tiny models written in ONNX text, and the real models installed packages ship."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

LIGHT_MODELS = sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))

# y = Relu(x @ W + b) with a foldable Identity/Add chain on the bias and a dead branch.
SMALL_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
small (float[N, 4] x) => (float[N, 3] y)
<float[4, 3] w = {0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 1.0, 2.0, 0.1, -0.3, 0.6},
 float[3] b = {0.1, 0.2, 0.3}, float[3] one = {1.0, 1.0, 1.0}>
{
    b2 = Identity(b)
    b3 = Add(b2, one)
    h = MatMul(x, w)
    z = Add(h, b3)
    y = Relu(z)
    dead = Sigmoid(h)
}
"""

# Nothing to simplify: every node is needed and nothing is constant.
MINIMAL_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
minimal (float[N, 4] x, float[N, 4] s) => (float[N, 4] y)
{
    y = Mul(x, s)
}
"""


def model_from_text(text: str) -> ir.Model:
    return ir.from_onnx_text(text)


@pytest.fixture
def small_model() -> ir.Model:
    return model_from_text(SMALL_TEXT)


@pytest.fixture
def minimal_model() -> ir.Model:
    return model_from_text(MINIMAL_TEXT)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def ort_run(model: ir.Model, feed: dict) -> list[np.ndarray]:
    """Reference runner for tests: a plain ONNX Runtime session over the serialised model."""
    import onnxruntime as ort

    from onnxpress import _proto

    proto = _proto.to_proto(model)  # external tensors read into the message
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def onnx_check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


@pytest.fixture(scope="module")
def digits():
    """The bundled digits CNN, its calibration feeds, and the held-out feeds with their labels."""
    import onnxpress as ox
    from onnxpress import samples

    data, labels = samples.digits_eval()
    return ox.load(samples.DIGITS_MODEL), samples.digits_calibration(), list(data), labels


def large_model_builder():
    """``benchmarks/_large_model.py`` (the synthetic decoder of issue 17's benchmark), imported."""
    import importlib.util
    import sys

    name = "_large_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks"
                                                      / "_large_model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]
