import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnxpress as ox  # noqa: E402
export_module = importlib.import_module("onnxpress.export")  # the attribute is the function
from onnxpress.export import export_info  # noqa: E402

from conftest import ort_run  # noqa: E402


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x, y):
        return torch.relu(self.linear(x)) * y.sum(dim=1, keepdim=True), x.mean(dim=1)


def test_dynamo_export_matches_torch_on_two_batch_sizes():
    torch.manual_seed(0)
    module = TwoInputs()
    x, y = torch.randn(1, 6), torch.randn(1, 2)
    model = ox.export(module, (x, y), input_names=["x", "y"], output_names=["scaled", "mean"])
    info = export_info(model)
    assert info["exporter"] == "dynamo" and info["fallback_reason"] is None
    assert info["batch_sizes_checked"] == [1, 3] and info["max_abs_error"] < 1e-5
    assert [v.name for v in model.graph.inputs] == ["x", "y"]
    assert [v.name for v in model.graph.outputs] == ["scaled", "mean"]
    big_x, big_y = torch.randn(5, 6), torch.randn(5, 2)
    expected = [t.detach().numpy() for t in module(big_x, big_y)]
    got = ort_run(model, {"x": big_x.numpy(), "y": big_y.numpy()})
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_falls_back_to_torchscript_and_says_why(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported FX node")

    monkeypatch.setattr(export_module, "_dynamo", broken)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    model = ox.export(module, torch.randn(2, 4))
    info = export_info(model)
    assert info["exporter"] == "torchscript"
    assert "dynamo exporter: RuntimeError: unsupported FX node" in info["fallback_reason"]
    assert info["batch_sizes_checked"] == [2, 4]


def test_fixed_batch_export():
    model = ox.export(torch.nn.Linear(3, 2), torch.randn(4, 3), dynamic_batch=False)
    assert export_info(model)["batch_sizes_checked"] == [4]
    assert model.graph.inputs[0].shape[0] == 4


class Wrong(torch.nn.Module):
    """Runs differently in torch than what it exports: the check must notice."""

    def forward(self, x):
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return x * 2
        return x * 3


def test_an_export_that_differs_from_torch_is_refused():
    with pytest.raises(ox.ExportError, match=r"output 'output' differs from torch"):
        ox.export(Wrong(), torch.randn(2, 3))


def test_bad_arguments():
    with pytest.raises(ox.ExportError, match="example_args must be tensors"):
        ox.export(torch.nn.Identity(), [1, 2])
    with pytest.raises(ox.ExportError, match="2 input names for 1 example inputs"):
        ox.export(torch.nn.Identity(), torch.randn(1, 2), input_names=["a", "b"])
    with pytest.raises(ValueError, match="exporter must be"):
        ox.export(torch.nn.Identity(), torch.randn(1, 2), exporter="jit")
