"""The demo: the default recipe on the bundled digits CNN, validated on the CPU."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from onnxpress import samples
from onnxpress.io import load, save
from onnxpress.metrics import accuracy
from onnxpress.pipeline import Pipeline, PipelineResult, Progress
from onnxpress.recipe import load_recipe
from onnxpress.report import ValidationReport
from onnxpress.validate import validate

logger = logging.getLogger(__name__)


def run_demo(out: str | Path, *, progress: Progress | None = None,
             say: Callable[[str], None] = lambda line: None) -> tuple[PipelineResult, ValidationReport]:
    """Run the default recipe on the sample, save the result in ``out``, validate it on the CPU."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(samples.RECIPE)
    say(f"model:  {samples.DIGITS_MODEL.name} (a CNN trained on scikit-learn's digits)")
    say(f"recipe: {samples.RECIPE.name}: {recipe.description}")
    model = load(samples.DIGITS_MODEL)
    result = Pipeline.from_recipe(recipe).run(model, progress=progress)
    output = save(result.model, folder / "digits_cnn.onnx")
    say(result.table())
    say(f"saved:  {output}")
    eval_data, labels = samples.digits_eval(batch_size=1)  # latency as deployed: one image
    say(f"validating on target '{recipe.target or 'cpu'}' with {len(labels)} held-out digits ...")
    report = validate(result.model, reference=model, target=recipe.target or "cpu", data=eval_data,
                      metric=lambda outputs: accuracy(outputs, labels), metric_name="accuracy",
                      layerwise=True, data_source=f"{len(labels)} held-out digits the passes never saw")
    report.pipeline = result.to_dict()
    return result, report
