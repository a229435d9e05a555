"""``optimize`` on corpus models nobody here wrote (issue 15): a CNN and a detector.

Each search runs on the model's fitting calibration feeds, judged on held-out feeds of another
seed, with the default budget (cosine 0.99 per output, per channel group where an output mixes
scales: a detector's boxes beside its class scores). The chosen model must meet it when
checked again here by ``validate`` on those held-out feeds, and the recipe it gives must name
only registered passes with every option.
"""
from __future__ import annotations

import pytest

import onnxpress as ox
from onnxpress.cache import Cache
from onnxpress.optimize import optimize
from onnxpress.recipe import parse_recipe

from .corpus import CASES, Corpus, fitting_feeds

NAMES = ("lcnet_dynamo", "yolo_dynamo")
HELD_OUT_SAMPLES = 8


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_optimize_meets_the_budget_on_corpus_models(name, corpus: Corpus, tmp_path):
    case = next(c for c in CASES if c.name == name)
    missing = case.missing()
    if missing:
        pytest.skip(f"{case.name} needs {', '.join(missing)}, which is not importable here")
    path = corpus.path(case)
    model = ox.load(path)
    calibration = fitting_feeds(case, path, case.samples, seed=1)
    held_out = fitting_feeds(case, path, HELD_OUT_SAMPLES, seed=2)
    result = optimize(model, calibration=calibration, data=held_out, min_cosine=0.99, cache=Cache(tmp_path),
                      time_budget=240)
    assert result.met, result.table()
    assert result.best.score >= 0.99
    report = ox.validate(result.model, reference=model, target="cpu", data=held_out, measure_latency=False,
                         measure_memory=False)
    assert report.passed, (report.failures, result.table())
    measured = [c for c in result.candidates if c.error is None]
    assert len(measured) >= 3 and result.pareto()  # several methods measured, a front drawn from them
    assert [p.name for p in parse_recipe(result.recipe).passes][0] == "simplify"
