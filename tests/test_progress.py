"""Progress: the steps the library reports, and the command line's bars and lines."""
from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import pytest

import onnxpress as ox
from onnxpress import _console, progress
from onnxpress.cli import main
from onnxpress.optimize import _Search, optimize
from onnxpress.pipeline import PassRecord, ProgressEvent
from onnxpress.progress import Step, Tracker, track

REPO = Path(__file__).resolve().parent.parent
# Static int8 without the slow refinements: one statistics sweep over the calibration feeds.
QUICK_QUANTIZE = dict(smoothquant=False, gptq=False, bias_correction=False)


def _quick_recipe(folder: Path) -> Path:
    recipe = folder / "quick.toml"
    recipe.write_text('description = "simplify, then plain static int8"\n\n[[passes]]\nname = "simplify"\n\n'
                      '[[passes]]\nname = "quantize"\nsmoothquant = false\ngptq = false\n'
                      'bias_correction = false\n', encoding="utf-8")
    return recipe


def _run_args(tmp_path: Path) -> list[str]:
    return ["run", str(REPO / "samples/digits_cnn.onnx"), "--recipe", str(_quick_recipe(tmp_path)),
            "--calibration", str(REPO / "samples/digits_calib.npz"), "-o", str(tmp_path / "out.onnx")]


def test_a_step_is_a_line_that_carries_its_numbers():
    step = Step("statistics", 37, 256, "feeds")
    assert step == "statistics 37/256 feeds" and step.count == "37/256 feeds" and not step.ended
    inner = Step("latency", 3, None, "runs", note="warm").within("candidate")
    assert inner == "candidate: latency 3 runs, warm" and inner.task == "candidate: latency"
    import pickle

    again = pickle.loads(pickle.dumps(step))
    assert again == step and (again.task, again.done, again.total) == ("statistics", 37, 256)


def test_the_statistics_sweep_reports_steps_up_to_its_total(digits):
    model, calibration, _, _ = digits
    events: list[ProgressEvent] = []
    ox.Pipeline([ox.passes.Quantize(**QUICK_QUANTIZE)], check=False, golden_samples=0).run(
        model, calibration=calibration, progress=events.append)
    steps = [e.step for e in events if e.step is not None and e.step.task == "statistics"]
    assert steps and all(e.name == "quantize" and e.index == 0 for e in events)
    assert steps[0].done == 0 and steps[0].total == len(calibration) * 4 // 5  # a fifth is held out
    assert [s.done for s in steps] == sorted(s.done for s in steps)
    assert steps[-1].ended and steps[-1].done == steps[-1].total
    assert not any(s.ended for s in steps[:-1])
    assert all(e.message == "" for e in events if e.step is None)  # the pass said nothing else


def test_the_emitter_is_throttled_and_always_ends():
    lines: list[str] = []
    assert sum(track(range(200_000), lines.append, "loop", unit="items")) == sum(range(200_000))
    assert 2 <= len(lines) <= 6  # the start, about one a second, the end
    assert lines[0] == "loop 0/200000 items" and lines[-1] == "loop 200000/200000 items" and lines[-1].ended
    told: list[str] = []
    for index in track(iter(range(10)), told.append, "search", unit="trials"):  # no length: no total
        if index == 3:
            break
    assert told[-1].ended and told[-1].done == 3 and told[-1].total is None
    with Tracker(None, "nobody listens", 5) as silent:  # no callback: nothing to do
        silent.advance()


def test_plain_lines_are_paced_per_step():
    now = [0.0]
    stream = StringIO()
    console = _console.Console(stream, clock=lambda: now[0])
    assert not console.rich  # a StringIO is no terminal
    console(ProgressEvent(1, 3, "quantize"))
    for done in range(2001):  # 20 s of events, ten a second
        now[0] = done / 100
        console(ProgressEvent(1, 3, "quantize", message=Step("statistics", done, 2000, "feeds", seconds=now[0],
                                                               ended=done == 2000)))
    console(Step("latency", 0, 50, "runs"))  # a quick step: silent
    console(Step("latency", 50, 50, "runs", seconds=0.2, ended=True))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[2/3] quantize ..."
    assert lines[1] == "[2/3] quantize: statistics 100/2000 feeds"  # after a second
    assert 4 <= len(lines) <= 7  # then every five seconds, and the end
    assert lines[-1] == "[2/3] quantize: statistics 2000/2000 feeds (20.0s)"


def test_run_prints_step_lines_when_piped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_console, "FIRST_LINE", 0.0)  # every step prints, however quick
    assert main(_run_args(tmp_path)) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[1/2] simplify ..." and err[1].startswith("[1/2] simplify done in ")
    assert err[2] == "[2/2] quantize ..." and err[-1].startswith("[2/2] quantize done in ")
    found = [re.fullmatch(r"\[2/2\] quantize: statistics (\d+)/(\d+) feeds \((\d+\.\d)s\)", line) for line in err]
    ends = [m for m in found if m]
    assert len(ends) == 1 and ends[0][1] == ends[0][2] == "160"


def test_quiet_prints_nothing_on_stderr(tmp_path, capsys):
    assert main(["-q", *_run_args(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "saved" in captured.out  # results still print
    assert main([*_run_args(tmp_path), "--quiet"]) == 0  # after the command's name too
    assert capsys.readouterr().err == ""


def test_bars_on_a_terminal():
    rich_console = pytest.importorskip("rich.console")
    screen = StringIO()
    console = _console.Console(rich_console=rich_console.Console(file=screen, force_terminal=True, width=100))
    assert console.rich
    console(ProgressEvent(1, 2, "quantize"))
    console(ProgressEvent(1, 2, "quantize", message=Step("statistics", 0, 256, "feeds")))
    console(ProgressEvent(1, 2, "quantize", message="smoothquant alpha 0.5: cosine 0.99900"))
    console(Step("candidate: latency", 3, None, "runs"))  # a step of optimize or validate
    console(ProgressEvent(1, 2, "quantize", message=Step("statistics", 256, 256, "feeds", ended=True)))
    console(Step("candidate: latency", 40, 40, "runs", ended=True))
    console(ProgressEvent(1, 2, "quantize", record=PassRecord("quantize", 1.5, True, 12, 36, 100, 40, 25, 25)))
    console.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "━" in text  # bars were drawn
    assert "[2/2] quantize: statistics" in text and "0/256 feeds" in text and "candidate: latency" in text
    assert "[2/2] quantize: smoothquant alpha 0.5: cosine 0.99900\n" in text  # above the bars
    assert text.rstrip().endswith("[2/2] quantize done in 1.50s: 12 -> 36 nodes")
    assert console._bars is None  # the display stopped once no bar was left


def test_optimize_reports_its_sensitivity_steps(digits, monkeypatch):
    model, calibration, held_out, _ = digits
    monkeypatch.setattr(_Search, "_methods", lambda self: setattr(self, "methods", {}))
    monkeypatch.setattr(_Search, "_allocations", lambda self: None)  # the simulation and sensitivity only
    told: list[str] = []
    optimize(model, calibration=calibration, data=held_out[:32], progress=told.append)
    steps = [line for line in told if isinstance(line, progress.Step)]
    by_task = {task: [s for s in steps if s.task == task] for task in ("optimize: simulate", "optimize: sensitivity")}
    for task, seen in by_task.items():
        assert seen, f"no {task} step"
        assert seen[0].done == 0 and seen[-1].ended and seen[-1].done == seen[-1].total > 0
    assert any(line.startswith("optimize: measure the sensitivity") for line in told)  # messages as before
    assert any(s.task == "optimize: fp32 (simplified): latency" for s in steps)  # each model's latency runs
