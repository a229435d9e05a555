"""A model validated against itself passes whenever ONNX Runtime can run all of it on the
target: placement is read from the session ONNX Runtime built, so Constant nodes (initializers
to ONNX Runtime), ONNX function ops (HardSwish), local functions and nodes fused away are fine.
A node that really has no kernel on the provider is still named."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox

CONSTANTS = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4] x) => (float[1, 4] y) {
    scale = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
    shape = Constant <value_ints = [1, 4]> ()
    two = Constant <value_float = 2.0> ()
    a = Mul(x, scale)
    b = Add(a, two)
    y = Reshape(b, shape)
}
"""

FUNCTION_OPS = """
<ir_version: 8, opset_import: ["" : 14, "local" : 1]>
g (float[2, 8] x) => (float[2, 8] y) {
    h = HardSwish(x)
    y = local.twice(h)
}
<domain: "local", opset_import: ["" : 14]>
twice (t) => (u) {
    u = Add(t, t)
}
"""

FUSED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 8, 8] x) => (float[1, 4] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
    n = BatchNormalization (c, gamma, beta, mean, var)
    r = Relu(n)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    m = MatMul(f, k)
    y = Add(m, bias)
}
"""

NO_KERNEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (double[3] x) => (double[3] y) {
    y = Acosh(x)
}
"""


def _with_weights(text: str) -> ir.Model:
    model = ir.from_onnx_text(text)
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3, 3, 3), "b": (4,), "gamma": (4,), "beta": (4,), "mean": (4,), "var": (4,),
              "k": (4, 4), "bias": (4,)}
    for name, shape in shapes.items():
        array = rng.standard_normal(shape).astype(np.float32)
        if name == "var":
            array = np.abs(array) + 0.5
        value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT),
                         const_value=ir.tensor(array, name=name))
        model.graph.register_initializer(value)
    return model


@pytest.mark.parametrize("text", [CONSTANTS, FUNCTION_OPS], ids=["constants", "function-ops"])
def test_a_model_validated_against_itself_passes(text):
    model = ir.from_onnx_text(text)
    report = ox.validate(model, reference=model, measure_latency=False, measure_memory=False)
    assert report.passed, report.failures
    assert report.unplaced == []
    assert all(stats.cosine == pytest.approx(1.0) for stats in report.metrics.values())


def test_nodes_fused_away_are_not_missing():
    model = _with_weights(FUSED)
    report = ox.validate(model, reference=model, measure_latency=False, measure_memory=False)
    assert report.passed, report.failures


def test_a_torchscript_export_full_of_constants_passes():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def forward(self, x):
            return (x * 0.5 + 1.0).reshape(x.shape[0], -1).softmax(-1)

    import io

    buffer = io.BytesIO()
    torch.onnx.export(Net(), (torch.randn(2, 3, 4),), buffer, dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"])
    model = ox.load(buffer.getvalue())
    assert any(node.op_type == "Constant" for node in model.graph)
    report = ox.validate(model, reference=model, measure_latency=False, measure_memory=False)
    assert report.passed, report.failures


def test_a_node_without_a_kernel_is_named():
    model = ir.from_onnx_text(NO_KERNEL)
    model.graph.node(0).name = "inverse_cosh"
    report = ox.validate(model, reference=model, data=[{"x": np.full(3, 2.0)}],
                         measure_latency=False, measure_memory=False)
    assert not report.passed
    assert any("cannot run on CPUExecutionProvider" in f and "inverse_cosh (Acosh)" in f
               and "tensor(double)" in f for f in report.failures), report.failures
