"""The precision passes on every corpus model (issue 14): models nobody here wrote.

For each model, with its fitting calibration feeds:
- ``fp16`` converts it (or leaves a model with nothing float to convert alone, ``modified=False``)
  and the result validates against the model on held-out inputs on the cpu target (cosine 0.99
  per output, no NaN/Inf the reference lacks), every node kept float32 with a reason;
- ``weightonly`` (4 bits, blocks of 32, in a pipeline on the edge target, whose accuracy floor
  promotes layers to 8 bits where needed) on the models with MatMul/Gemm weights validates at
  the edge target's tolerance (cosine 0.98) or is refused by name; the weights it took shrink.
"""
from __future__ import annotations

import pytest

import onnxpress as ox

from .corpus import CASES, Case, Corpus, fitting_feeds

HELD_OUT_SAMPLES = 4


def _params(cases: list[Case] = CASES) -> list:
    return [pytest.param(case, id=case.name, marks=[pytest.mark.slow]) for case in cases]


def _built(corpus: Corpus, case: Case):
    missing = case.missing()
    if missing:
        pytest.skip(f"{case.name} needs {', '.join(missing)}, which is not importable here")
    return corpus.path(case)


@pytest.mark.parametrize("case", _params())
def test_fp16_keeps_every_corpus_model(case, corpus):
    path = _built(corpus, case)
    model = ox.load(path)
    calibration = fitting_feeds(case, path, case.samples, seed=1)
    held_out = fitting_feeds(case, path, HELD_OUT_SAMPLES, seed=2)
    result = ox.Pipeline([ox.passes.FP16()], golden_samples=0).run(model, calibration=calibration)
    stats = result.records[0].statistics
    assert all(isinstance(reason, str) and reason for reason in stats.get("nodes_kept", {}).values())
    if not result.records[0].modified:
        assert not stats.get("nodes_converted"), stats
        return
    assert stats["nodes_converted"] > 0
    # Initializers that are also graph inputs (overridable) stay float32 with keep_io_types.
    overridable = any(value.is_graph_input() for value in model.graph.initializers.values())
    assert result.records[0].bytes_after < result.records[0].bytes_before or not case.weighted or overridable
    report = ox.validate(result.model, reference=model, target="cpu", data=held_out, measure_latency=False,
                         measure_memory=False)
    assert report.passed, (report.failures, stats.get("nodes_kept"))


def _matmul_weighted(model) -> bool:
    from onnxpress.passes._common import constant

    return any(node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1 and constant(node.inputs[1]) is not None
               and constant(node.inputs[1]).ndim == 2 for node in model.graph)


# MiniLM's int4 (AWQ on its real sentences, the size and cosine figures) is
# tests/passes/test_weightonly.py's: here it would repeat a minute of the same work.
@pytest.mark.parametrize("case", _params([case for case in CASES if case.name != "minilm"]))
def test_weightonly_int4_keeps_every_corpus_model_with_matmul_weights(case, corpus):
    path = _built(corpus, case)
    model = ox.load(path)
    if not _matmul_weighted(model):
        pytest.skip(f"{case.name} has no MatMul/Gemm with a constant 2-D weight")
    # At least 10 samples: the pipeline holds a fifth back to judge its accuracy floor on.
    calibration = fitting_feeds(case, path, max(case.samples, 16), seed=1)
    held_out = fitting_feeds(case, path, HELD_OUT_SAMPLES, seed=2)
    try:
        # On the edge target: its accuracy floor (cosine 0.98) promotes the most sensitive layers
        # to 8 bits where 4 bits break it (the pass's remedy).
        weightonly = ox.passes.WeightOnly(bits=4, block_size=32, measure_latency=False)
        result = ox.Pipeline([weightonly], golden_samples=0, target="edge").run(model, calibration=calibration)
    except ox.PassError as err:
        assert "weightonly" in str(err)  # a clean refusal names the pass
        return
    record = result.records[0]
    if not record.modified:
        return
    assert record.bytes_after < record.bytes_before
    report = ox.validate(result.model, reference=model, target="edge", data=held_out, measure_latency=False,
                         measure_memory=False, bundle=None)
    assert not [f for f in report.failures if "cosine" in f or "NaN" in f or "top-1" in f], report.failures
