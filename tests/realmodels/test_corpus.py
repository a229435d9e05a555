"""Every corpus model through what a new user runs first (issue 12, part 1).

For each model:
- ``onnxpress inspect`` exits 0 and prints its inputs;
- ``validate(M, reference=M)`` passes on inputs onnxpress generates from the signature (or,
  where no shape can be generated, raises a ``DataError`` asking for data), and on inputs that
  fit the model;
- ``onnxpress run M --recipe simplify+quantize`` (a real command, in its own process) exits 0,
  or exits 2 with one error line naming the pass and writes nothing (a refusal the case
  expects; any other refusal fails ``run``). Never a traceback. Its model then validates
  against M on held-out inputs, a detector's boxes and scores judged apart too, and outputs of
  one value per sample by their error (``run_validates``), and int8 took at least half of the weight Conv/MatMul/Gemm nodes, or,
  in a model without any, nothing was touched (``run_quantizes``).

Failures that the other parts of issue 12 fix are marked ``xfail(strict=True)`` with what
fails, so the suite stays green while each is recorded, and a fix flips it to XPASS (an
error under ``strict``), which is the cue to remove the mark.
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import onnxpress as ox
from onnxpress.cli import main

from .corpus import BY_NAME, CASES, TESTS, Case, Corpus, fitting_feeds

RECIPE = Path(__file__).with_name("recipe.toml")
# A run is stopped by its own --time-limit; this guard catches onnxpress itself hanging.
GUARD_SECONDS = 300
HELD_OUT_SAMPLES = 4
GROUP_COSINE = 0.99      # the cpu profile's cosine tolerance, applied to each channel group
INT8_SHARE = 0.5         # of the weight Conv/MatMul/Gemm nodes
SINGLE_VALUE_ERROR = 0.05  # of the largest magnitude, for outputs of one value per sample

_PASSES = ("simplify", "quantize")
_INTEGER_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConv",
                "QLinearMatMul", "QGemm"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _params(test: str, cases: list[Case] = CASES) -> list:
    """One param per case, marked slow when the case is slow to build or the test runs the
    command line (a process per case), and xfail where the case records a failure."""
    params = []
    for case in cases:
        marks = [pytest.mark.slow] if case.slow or test.startswith("run") else []
        if test in case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[test]))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _built(corpus: Corpus, case: Case) -> Path:
    missing = case.missing()
    if missing:
        pytest.skip(f"{case.name} needs {', '.join(missing)}, which is not importable here")
    return corpus.path(case)


def _npz(feeds: list[dict[str, np.ndarray]], path: Path) -> Path:
    """Samples along axis 0, as ``--calibration`` reads them (batch_size 1: one feed each)."""
    np.savez(path, **{name: np.concatenate([feed[name] for feed in feeds]) for name in feeds[0]})
    return path


def test_the_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 25
    assert len(BY_NAME) == len(CASES)
    for case in CASES:
        assert case.exercises, case.name
        assert set(case.xfail) <= set(TESTS), case.name
        assert all(reason.startswith("issue 12: ") for reason in case.xfail.values()), case.name


@pytest.mark.parametrize("case", _params("inspect"))
def test_inspect(case, corpus, capsys):
    path = _built(corpus, case)
    code = main(["inspect", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "inputs:" in out.out


@pytest.mark.parametrize("case", _params("validate"))
def test_validate_against_itself_on_generated_inputs(case, corpus):
    model = ox.load(_built(corpus, case))
    if case.generated == "data_error":
        with pytest.raises(ox.DataError, match="give data"):
            ox.validate(model, reference=model, target="cpu", measure_memory=False)
        return
    report = ox.validate(model, reference=model, target="cpu", measure_memory=False)
    assert report.passed, report.failures
    assert report.unplaced == []
    if case.generated_note:
        assert any(re.search(case.generated_note, note) for note in report.notes), report.notes


@pytest.mark.parametrize("case", _params("validate_fitting", [c for c in CASES if c.inputs is not None]))
def test_validate_against_itself_on_fitting_inputs(case, corpus):
    path = _built(corpus, case)
    model = ox.load(path)
    feeds = fitting_feeds(case, path, HELD_OUT_SAMPLES, seed=3)
    report = ox.validate(model, reference=model, target="cpu", data=feeds, measure_latency=False,
                         measure_memory=False)
    assert report.passed, report.failures


@dataclass
class _Run:
    """One ``onnxpress run`` of a case: the command's result, where it wrote, the held-out feeds."""

    result: subprocess.CompletedProcess
    output: Path
    held_out: list

    @property
    def errors(self) -> list[str]:
        return [line for line in self.result.stderr.splitlines() if line.startswith("onnxpress: error: ")]


@pytest.fixture(scope="session")
def runs(corpus, tmp_path_factory):
    """``run(case)``: the case's ``onnxpress run`` with the corpus recipe, once per session."""
    done: dict[str, _Run] = {}

    def run(case: Case) -> _Run:
        if case.name not in done:
            path = _built(corpus, case)
            folder = tmp_path_factory.mktemp(f"run-{case.name}")
            calibration = _npz(fitting_feeds(case, path, case.samples, seed=1), folder / "calibration.npz")
            out = folder / "out"
            out.mkdir()
            result = subprocess.run([sys.executable, "-m", "onnxpress.cli", "run", str(path), "--recipe", str(RECIPE),
                                     "--calibration", str(calibration), "-o", str(out / "model.onnx")],
                                    capture_output=True, text=True, timeout=GUARD_SECONDS, errors="replace")
            held_out = fitting_feeds(case, path, min(HELD_OUT_SAMPLES, case.samples), seed=2)
            done[case.name] = _Run(result, out / "model.onnx", held_out)
        return done[case.name]

    return run


def _finished(run: _Run) -> None:
    """Skip a check of the run's model when the run wrote none (``test_run`` judges why)."""
    if run.result.returncode != 0:
        pytest.skip(f"the run wrote no model (exit {run.result.returncode}: {' '.join(run.errors)[:300]})")


@pytest.mark.parametrize("case", _params("run"))
def test_run(case, runs):
    run = runs(case)
    stderr = run.result.stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    if run.result.returncode == 2:  # a clean refusal: one line naming the pass, nothing written
        assert len(run.errors) == 1, stderr[-3000:]
        assert list(run.output.parent.iterdir()) == []
        assert re.search(rf"\b({'|'.join(_PASSES)})\b", run.errors[0]), run.errors[0]
        assert case.refusal and re.search(case.refusal, run.errors[0]), f"refused: {run.errors[0]}"
        return
    assert run.result.returncode == 0, stderr[-3000:]
    assert run.errors == []
    assert run.output.is_file()


@pytest.mark.parametrize("case", _params("run_validates"))
def test_run_validates_on_held_out_inputs(case, corpus, runs):
    run = runs(case)
    _finished(run)
    reference = corpus.path(case)
    report = ox.validate(run.output, reference=reference, target="cpu", data=run.held_out,
                         measure_latency=False, measure_memory=False)
    assert report.passed, report.failures
    expected, got = _outputs(reference, run.held_out), _outputs(run.output, run.held_out)
    _judge_groups(case, expected, got)
    _judge_single_values(expected, got)


@pytest.mark.parametrize("case", _params("run_quantizes"))
def test_run_quantizes(case, runs):
    run = runs(case)
    _finished(run)
    import onnx

    graph = onnx.load(str(run.output)).graph
    if not case.weighted:
        touched = sorted({node.op_type for node in graph.node} & (_QDQ_OPS | _INTEGER_OPS))
        assert touched == [], f"quantize added {touched} to a model it has nothing to quantize in"
        return
    int8, total = _int8_compute(graph)
    share = INT8_SHARE if case.int8_share is None else case.int8_share
    assert total and int8 >= share * total, f"{int8} of {total} weight Conv/MatMul/Gemm nodes are int8"


def _int8_compute(graph) -> tuple[int, int]:
    """(int8, all) weight-carrying Conv/ConvTranspose/MatMul/Gemm nodes of a quantized graph: a node
    counts as int8 when it is an integer kernel or its constant operand comes from DequantizeLinear."""
    constants = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def constant(name: str, depth: int = 0) -> bool:
        if name in constants:
            return True
        node = producer.get(name)
        if node is None or depth > 3:
            return False
        if node.op_type == "Constant":
            return True
        return node.op_type in ("DequantizeLinear", "Transpose", "Reshape", "Cast", "Identity") and \
            constant(node.input[0], depth + 1)

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and constant(node.input[0])

    int8 = total = 0
    for node in graph.node:
        if node.op_type in _INTEGER_OPS:
            int8 += 1
            total += 1
        elif node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1:
            operands = node.input[:2] if node.op_type in ("MatMul", "Gemm") else node.input[1:2]
            if any(constant(name) for name in operands):
                total += 1
                int8 += any(dequantized(name) for name in operands)
    return int8, total


def _judge_groups(case: Case, expected: list[dict], got: list[dict]) -> None:
    """Each named channel range of an output on its own: a detector's class scores (in [0, 1])
    must not hide behind its box coordinates (in pixels) in one overall cosine."""
    from onnxpress.metrics import error_stats

    low = []
    for output, groups in case.groups.items():
        for group, (start, stop) in groups.items():
            def part(outputs):
                return [np.take(o[output], range(start, stop), axis=case.group_axis) for o in outputs]

            value = error_stats(part(expected), part(got)).cosine
            if value < GROUP_COSINE:
                low.append(f"{output}[{group}] cosine {value:.4f}")
    assert not low, f"channel groups below {GROUP_COSINE}: {', '.join(low)}"


def _judge_single_values(expected: list[dict], got: list[dict]) -> None:
    """A float output of one value per sample (a regression, a probability) has a per-sample
    cosine of 1 whenever the signs agree; hold it to ``SINGLE_VALUE_ERROR`` of its largest value."""
    off = []
    for name, value in expected[0].items():
        if value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            continue
        reference = np.array([float(o[name].ravel()[0]) for o in expected])
        candidate = np.array([float(o[name].ravel()[0]) for o in got])
        error = float(np.max(np.abs(candidate - reference)) / max(float(np.max(np.abs(reference))), 1e-12))
        if error > SINGLE_VALUE_ERROR:
            off.append(f"{name}: {reference.round(3).tolist()} -> {candidate.round(3).tolist()}")
    assert not off, f"one-value outputs off by more than {SINGLE_VALUE_ERROR:.0%}: {'; '.join(off)}"


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Outputs by a plain ONNX Runtime session over the model as onnxpress loads it (a file's
    fixed dims of 0 or -1 are unknown dims to onnxpress; ONNX Runtime refuses such a file)."""
    import onnxruntime as ort

    from onnxpress import _proto

    proto = _proto.to_proto(ox.load(path))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed))) for feed in feeds]
