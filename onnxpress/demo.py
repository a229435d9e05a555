"""The demo: the default recipe on a bundled digits model, validated on the CPU."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from onnxpress import samples
from onnxpress.io import load, save
from onnxpress.metrics import accuracy
from onnxpress.pipeline import Pipeline, PipelineResult, ProgressEvent
from onnxpress.recipe import load_recipe
from onnxpress.report import ValidationReport
from onnxpress.validate import validate

logger = logging.getLogger(__name__)


_ABOUT = {"mlp": "a wide MLP trained on scikit-learn's digits: 1.1 M parameters, MatMul-bound",
          "cnn": "a small CNN trained on scikit-learn's digits: 40 k parameters, 0.02 ms per image"}


def run_demo(out: str | Path, *, model_name: str = "mlp",
             progress: Callable[[ProgressEvent | str], None] | None = None,
             say: Callable[[str], None] = lambda line: None) -> tuple[PipelineResult, ValidationReport]:
    """Run the default recipe on a sample (``mlp`` or ``cnn``, see ``samples.DEMO_MODELS``),
    save the result in ``out`` and validate it on the CPU against the input model.

    ``progress`` is told the pipeline's ``ProgressEvent``s, then how far the validation's
    measurements got (``progress.Step`` lines); ``say`` gets the lines of the demo's story.
    """
    if model_name not in samples.DEMO_MODELS:
        raise ValueError(f"demo: model must be one of {sorted(samples.DEMO_MODELS)}, got {model_name!r}")
    source = samples.DEMO_MODELS[model_name]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(samples.RECIPE)
    say(f"model:  {source.name} ({_ABOUT[model_name]})")
    say(f"recipe: {samples.RECIPE.name}: {recipe.description}")
    model = load(source)
    result = Pipeline.from_recipe(recipe).run(model, progress=progress)
    output = save(result.model, folder / source.name)
    say(result.table())
    say(f"saved:  {output}")
    eval_data, labels = samples.digits_eval(batch_size=1)  # latency as deployed: one image
    say(f"validating on target '{recipe.target or 'cpu'}' with {len(labels)} held-out digits ...")
    report = validate(result.model, reference=model, target=recipe.target or "cpu", data=eval_data,
                      metric=lambda outputs: accuracy(outputs, labels), metric_name="accuracy",
                      layerwise=True, data_source=f"{len(labels)} held-out digits the passes never saw",
                      progress=progress)
    report.pipeline = result.to_dict()
    return result, report


def the_win(report: ValidationReport) -> str:
    """One line: the candidate's size, latency and accuracy against the input model's."""
    size, latency, metric = report.size, report.latency, report.task_metric or {}
    parts = []
    if size.get("reference") and size.get("candidate") is not None:
        parts.append(f"{size['candidate'] / size['reference']:.2f}x the size")
    if report.speedup:
        ratio = latency["candidate"].median_ms / latency["reference"].median_ms
        parts.append(f"{ratio:.2f}x the latency ({report.speedup:.1f}x as fast)")
    if metric.get("reference") is not None:
        change = 100 * (metric["candidate"] - metric["reference"]) + 0.0  # + 0.0: no "-0.00"
        parts.append(f"{metric.get('name', 'metric')} {metric['reference']:.4f} -> {metric['candidate']:.4f} "
                     f"({change:+.2f} points)")
    return "compressed: " + ", ".join(parts)
