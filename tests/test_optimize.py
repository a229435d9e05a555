"""``optimize``: the per-layer allocation, the search on the digits CNN, its cache, budget and CLI."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import onnxpress as ox
from onnxpress import _search, runtime
from onnxpress.cache import Cache, model_digest
from onnxpress.cli import main
from onnxpress.metrics import compare
from onnxpress.optimize import _Search, optimize

REPO = Path(__file__).resolve().parent.parent


def _layer(name: str, errors: dict[str, float], macs: float) -> _search.Layer:
    layer = _search.Layer(name, "MatMul", f"{name}_in", f"{name}_out", np.zeros((64, 64), np.float32),
                          tuple(errors), macs=macs)
    layer.errors = errors
    return layer


def test_allocation_is_the_knapsack_optimum():
    rng = np.random.default_rng(3)
    layers = [_layer(f"l{i}", {"float": 0.0, "int8": float(rng.uniform(0.01, 0.1)),
                               "int4": float(rng.uniform(0.05, 0.3))}, float(rng.uniform(1, 10)))
              for i in range(6)]
    saving = {"float": 0.0, "int8": 1.0, "int4": 1.6}

    def cost(layer, decision):
        return layer.errors[decision] ** 2

    def value(layer, decision):
        return saving[decision] * layer.macs

    budget = 0.02
    plan = _search.allocate(layers, cost, value, budget)
    best = max((combo for combo in itertools.product(*(layer.choices for layer in layers))
                if sum(cost(layer, d) for layer, d in zip(layers, combo)) <= budget),
               key=lambda combo: sum(value(layer, d) for layer, d in zip(layers, combo)))
    best_value = sum(value(layer, d) for layer, d in zip(layers, best))
    assert plan.predicted_drop <= budget + 1e-12
    # exact up to the budget's discretisation (each item rounds its cost up by < budget / 400)
    assert plan.value >= best_value * 0.97
    assert plan.value == pytest.approx(sum(value(layer, plan.decisions[layer.name]) for layer in layers))
    assert set(plan.decisions.values()) > {"float"} or best_value == 0


def test_noise_model_switches_noise_per_layer(digits):
    model, calibration, _, _ = digits
    layers = _search.find_layers(model, decisions=_search.DECISIONS)
    assert [layer.op_type for layer in layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    noisy, switches = _search.noise_model(model, layers)
    assert set(switches) == {layer.name for layer in layers[:-1]}  # the last one writes the graph output
    feeds = calibration.take(4)
    off = {name: np.zeros((), np.float32) for name in switches.values()}
    runner = runtime.Runner("cpu")
    clean = runner.outputs(model, feeds)
    quiet = runner.outputs(noisy, [{**feed, **off} for feed in feeds])
    assert all(np.array_equal(a["logits"], b["logits"]) for a, b in zip(clean, quiet))
    _search.measure_gains(runner, model, layers, feeds, clean, lambda stats: min(s.score for s in stats.values()))
    assert all(0 < layer.gain < 100 for layer in layers[:-1])


def test_optimize_resumes_after_a_kill_and_reruns_from_the_cache(digits, tmp_path, monkeypatch):
    model, calibration, held_out, _ = digits
    folder = tmp_path / "cache"

    def killed(self):
        raise KeyboardInterrupt  # the search stops half-way: the methods are measured, nothing allocated

    with monkeypatch.context() as patch:
        patch.setattr(_Search, "_allocations", killed)
        with pytest.raises(KeyboardInterrupt):
            optimize(model, calibration=calibration, data=held_out, min_cosine=0.99995, objective="size",
                     cache=Cache(folder))
    resumed = optimize(model, calibration=calibration, data=held_out, min_cosine=0.99995, objective="size",
                       cache=Cache(folder))
    methods = [c for c in resumed.candidates if c.origin in ("baseline", "method")]
    assert methods and all(c.cached for c in methods)  # measured before the kill, not again
    assert any(c.origin == "allocation" and not c.cached for c in resumed.candidates)
    assert resumed.met and resumed.best.meets
    # judged again here, independently: the chosen model meets the budget on the held-out digits
    reference = runtime.run_model(model, held_out[:64])
    stats = compare(reference, runtime.run_model(resumed.model, held_out[:64]))
    assert min(s.cosine for s in stats.values()) >= 0.99995
    # the smallest measured model within the budget, well under fp32's bytes
    assert resumed.best.size == min(c.size for c in resumed.candidates if c.meets and c.error is None)
    assert resumed.best.size < 0.35 * resumed.baseline["size"]
    assert {row["decision"] for row in resumed.layers} - {"float"}  # per-layer decisions, with reasons
    assert all(row["why"] for row in resumed.layers)

    cache = Cache(folder)
    again = optimize(model, calibration=calibration, data=held_out, min_cosine=0.99995, objective="size", cache=cache)
    assert cache.misses == 0 and cache.hits > 0  # nothing computed twice
    assert all(c.cached for c in again.candidates if c.error is None)
    assert model_digest(again.model) == model_digest(resumed.model)


def test_cli_optimize_writes_model_recipe_lock_and_report(tmp_path, capsys):
    out = tmp_path / "digits_opt.onnx"
    report = tmp_path / "report"
    code = main(["optimize", str(REPO / "samples/digits_cnn.onnx"), "--calibration",
                 str(REPO / "samples/digits_calib.npz"), "--data", str(REPO / "samples/digits_eval.npz"),
                 "--max-drop", "0.005", "--labels", "label", "--objective", "size", "-o", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--report", str(report)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "chosen:" in printed.out and "(metric drop <= 0.005)" in printed.out
    assert "verdict on target 'cpu': PASSED" in printed.out
    recipe = out.with_name("digits_opt.recipe.toml")
    assert out.exists() and recipe.exists() and out.with_name("digits_opt.lock.toml").exists()
    html = (report / "report.html").read_text(encoding="utf-8")
    assert 'id="plot-pareto-latency"' in html and 'id="layers-table"' in html and "Search" in html
    assert "Search (metric drop <= 0.005" in (report / "report.md").read_text(encoding="utf-8")
    assert json.loads((report / "report.json").read_text(encoding="utf-8"))["search"]["best"]
    optimized = ox.load(out)
    assert out.stat().st_size < 0.5 * (REPO / "samples/digits_cnn.onnx").stat().st_size
    # the recipe it wrote, run through `onnxpress run`, gives the same model
    rebuilt = tmp_path / "rebuilt.onnx"
    assert main(["run", str(REPO / "samples/digits_cnn.onnx"), "--recipe", str(recipe), "--calibration",
                 str(REPO / "samples/digits_calib.npz"), "-o", str(rebuilt)]) == 0
    assert model_digest(ox.load(rebuilt)) == model_digest(optimized)


def test_cli_optimize_out_of_time_saves_nothing(tmp_path, capsys):
    out = tmp_path / "never.onnx"
    code = main(["optimize", str(REPO / "samples/digits_cnn.onnx"), "--calibration",
                 str(REPO / "samples/digits_calib.npz"), "--time-budget", "0", "--no-cache", "-o", str(out)])
    assert code == 1
    assert "no candidate meets the budget: nothing saved" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_optimize_bad_options_are_one_line(tmp_path, capsys):
    code = main(["optimize", str(REPO / "samples/digits_cnn.onnx"), "--calibration",
                 str(REPO / "samples/digits_calib.npz"), "--max-drop", "0.01", "-o", str(tmp_path / "x.onnx")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["onnxpress: error: optimize: --max-drop needs --labels KEY (the labels in the --data file)"]


def test_optimize_builds_method_candidates_as_parallel_trials(digits, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    model, calibration, held_out, _ = digits
    serial = optimize(model, calibration=calibration, data=held_out, min_cosine=0.99995, objective="size",
                      cache=Cache(tmp_path / "serial"), decisions=("float",))
    shared = Cache(tmp_path / "parallel")
    parallel = optimize(model, calibration=calibration, data=held_out, min_cosine=0.99995, objective="size",
                        cache=shared, decisions=("float",), workers=2)
    # the trials left every method's pass results in the cache: the search here only read them back
    methods = [c for c in parallel.candidates if c.origin == "method"]
    assert shared.hits >= sum(len(c.steps) for c in methods)
    names = [c.name for c in serial.candidates]
    assert names == [c.name for c in parallel.candidates]
    # latency-aware int8 keeps op groups float by timing (its pass is not deterministic): two runs
    # may differ there by design; every other candidate must be the same measurement
    timed = {c.name for c in serial.candidates if any(s.get("latency_aware") for s in c.steps)}
    assert timed == {"int8 latency-aware"}
    for a, b in zip(serial.candidates, parallel.candidates):
        if a.name not in timed:
            assert (a.name, a.score, a.size) == (b.name, b.score, b.size)
    if serial.best.name not in timed and parallel.best.name not in timed:
        assert model_digest(serial.model) == model_digest(parallel.model)
