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


@pytest.mark.parametrize("build", ["digits", "resnet18", "minilm"])
def test_fp16_models_validate_on_the_gpu_with_every_node_there(build):
    """The cuda profile's own recipe (simplify, fp16) on a CNN, ResNet-18 and MiniLM: every node
    on the CUDA provider, outputs within the profile's tolerances of fp32."""
    from onnxpress.recipe import default_recipe

    if build == "digits":
        model, calibration = ox.load(samples.DIGITS_MODEL), samples.digits_calibration()
        data = samples.digits_eval()[0]
    elif build == "resnet18":
        torch = pytest.importorskip("torch")
        from onnxpress.samples.architectures import resnet18

        model = ox.export(resnet18().eval(), (torch.zeros(1, 3, 224, 224),))
        rng = np.random.default_rng(0)
        feeds = [{model.graph.inputs[0].name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
                 for _ in range(8)]
        calibration, data = feeds[:6], feeds[6:]
    else:
        from onnxpress.samples import minilm

        model = minilm.export()
        calibration, data = minilm.feeds(minilm.CALIBRATION_SENTENCES[:16]), minilm.feeds(minilm.EVAL_SENTENCES[:8])
    pipeline = ox.Pipeline.from_recipe(default_recipe("cuda"))
    result = pipeline.run(model, calibration=calibration)
    assert any(n.op_type == "Cast" for n in result.model.graph)  # fp16 inside, fp32 at the edges
    report = validate(result.model, reference=model, target="cuda", data=data)
    assert report.passed, report.failures
    assert report.unplaced == [] and report.providers == ["CUDAExecutionProvider"]
