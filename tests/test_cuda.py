"""The cuda target on a real GPU (skipped where the CUDA execution provider is absent)."""
import numpy as np
import pytest

import onnxpress as ox
from onnxpress import runtime, samples
from onnxpress.validate import validate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in runtime.available_providers(),
                       reason="the CUDA execution provider is not available (needs onnxruntime-gpu and a GPU)"),
]


def test_the_cuda_profile_runs_every_node_on_the_gpu():
    model = ox.load(samples.DIGITS_MODEL)
    data, labels = samples.digits_eval()
    report = validate(model, reference=model, target="cuda", data=data)
    assert report.passed, report.failures
    assert report.unplaced == [] and report.providers == ["CUDAExecutionProvider"]
    assert report.latency["candidate"].median_ms > 0
    assert np.isclose(report.metrics["logits"].cosine, 1.0)
