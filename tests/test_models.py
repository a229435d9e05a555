"""The simplify pipeline on real graphs: the ONNX model zoo's light models and torch architectures."""
import numpy as np
import pytest

import onnxpress as ox
from onnxpress.export import export_info
from onnxpress.feeds import input_specs

from conftest import LIGHT_MODELS, ort_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_light_model_zoo_graphs_keep_their_outputs(path, rng):
    model = ox.load(path)
    (spec,) = input_specs(model)  # older models also list their weights as inputs
    feed = {spec.name: rng.standard_normal(spec.shape).astype(np.float32)}
    result = ox.Pipeline([ox.passes.Simplify()], golden_samples=2).run(model, calibration=[feed])
    record = result.records[0]
    assert record.checked and record.nodes_after < record.nodes_before
    expected = ort_run(model, feed)
    got = ort_run(result.model, feed)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch, size", [("resnet18", 224), ("mobilenet_v3_small", 224)])
def test_exported_architectures_simplify_without_changing_outputs(arch, size):
    import torch

    from onnxpress.samples import architectures

    module = getattr(architectures, arch)()
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = ox.export(module, example)
    info = export_info(model)
    assert info["exporter"] == "dynamo" and info["batch_sizes_checked"] == [1, 3]
    result = ox.Pipeline([ox.passes.Simplify()], golden_samples=2).run(model)
    assert result.records[0].checked
    feed = {"input": example.numpy()}
    with torch.no_grad():
        reference = module(example).numpy()
    np.testing.assert_allclose(ort_run(result.model, feed)[0], ort_run(model, feed)[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ort_run(result.model, feed)[0], reference, rtol=1e-3, atol=1e-3)
    batch = {"input": np.concatenate([feed["input"]] * 2)}
    assert ort_run(result.model, batch)[0].shape == (2, 1000)
