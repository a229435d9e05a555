"""``optimize``: the smallest or fastest model within an accuracy budget, searched across passes.

The search, on data the passes never see (``data``, else a held-out fifth of ``calibration``):

1. **Methods.** The input model is simplified (lossless), then every single method the target
   can use is built on all layers and measured: accuracy on the held-out data, latency on the
   target's provider (serially, never beside another trial; on the held-out feed of median
   size), bytes. Which methods exist depends
   on the target's ``[recipe] precision`` and ops: int8 (``quantize``, static or dynamic as the
   model suits), dynamic int8, weight-only int4, low-rank factoring (float, and then int8), fp16
   (GPU targets).
2. **Sensitivity.** Each weight layer's inputs are captured on calibration data and every
   decision (int8, int4, low rank) is simulated on them: the relative error it makes in that
   layer's output; each layer's effect on the model's outputs is measured by adding noise to
   it alone (``_search``). Each method's measured drop calibrates its predictions.
3. **Allocation.** Per layer, one decision (float, int8, int4, lowrank, lowrank+int8) is chosen by a
   multiple-choice knapsack: the most latency (or bytes) saved with the predicted drop within
   a budget. Latency per decision is each method's *measured* saving on the target, shared
   among the layers by their multiply-accumulates.
4. **Verification.** Every allocation is built through the passes (``weightonly`` → ``lowrank``
   → ``quantize``, each with the ``exclude`` list of the layers it must leave) and measured end to end. The budget of the
   knapsack is widened while the measured model meets the accuracy budget and narrowed when it
   does not; an allocation that misses is reverted layer by layer (costliest first) until it meets.

The result is the measured candidate meeting the budget with the best objective (latency, ties
within 5 % to the more accurate; or size), the recipe that rebuilds it from the input model,
the Pareto front of every measured candidate, the decision per layer and why, and the search's
wall time. Pass results and measurements go through the content-addressed cache
(``onnxpress.cache``): a second run, or a search resumed after being killed, reuses them.
A ``time_budget`` is honoured between steps: when it runs out the best candidate so far is
returned. The input model is never changed.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, _search, registry
from onnxpress.cache import Cache, data_digest, make_key, model_digest, versions
from onnxpress.calibration import Calibration, from_feeds, holdout
from onnxpress.errors import DataError, OnnxpressError
from onnxpress.metrics import compare
from onnxpress.modelinfo import text_table
from onnxpress.pipeline import Pipeline
from onnxpress.progress import Report, Tracker, logged, pipeline_steps, track, within
from onnxpress.recipe import recipe_text

logger = logging.getLogger(__name__)

Objective = Literal["latency", "size"]
Metric = Callable[[Sequence[Mapping[str, np.ndarray]]], float]

_EVAL_SAMPLES = 64
_SENSITIVITY_SAMPLES = 8
_CAPTURE_SAMPLES = 8
_TIE = 0.05  # latencies within 5 % are a tie, decided by accuracy
_MARGIN = 0.8  # the knapsack first aims at this share of the budget
_ROUNDS = 6
# Weight-only int4 as the search builds it: the compute level fixed (``auto`` times both levels,
# and a timed choice would make the same search give different models).
_INT4 = {"bits": 4, "embeddings": False, "accuracy_level": 4, "measure_latency": False}
# The method candidate that measured each per-layer decision on every layer it admits.
_MEASURED_BY = {_search.INT8: "int8", _search.INT4: "int4 weight-only", _search.LOWRANK: "lowrank 50%",
                _search.LOWRANK_INT8: "lowrank 50% + int8"}
# Low rank as the search builds it: half the parameters of the layers it is given, shared among
# them by output error per parameter (the search has measured the layers' sensitivity itself).
_LOWRANK = {"method": "activation", "budget": _search.LOWRANK_KEPT, "measure_sensitivity": False,
            "op_types": ["MatMul", "Gemm"]}


@dataclass
class Candidate:
    """One measured model of the search."""

    name: str
    steps: list[dict[str, Any]]
    origin: str
    decisions: dict[str, str] | None = None
    score: float | None = None
    metric: float | None = None
    latency_ms: float | None = None
    size: int | None = None
    seconds: float = 0.0
    meets: bool = False
    error: str | None = None
    cached: bool = False
    model: ir.Model | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for decision in (self.decisions or {}).values():
            counts[decision] = counts.get(decision, 0) + 1
        return {"name": self.name, "origin": self.origin, "steps": self.steps, "decisions": counts or None,
                "score": self.score, "metric": self.metric, "latency_ms": self.latency_ms, "size": self.size,
                "seconds": round(self.seconds, 3), "meets": self.meets, "error": self.error, "cached": self.cached}


@dataclass
class OptimizeResult:
    """What ``optimize`` found. ``model`` is None when nothing met the budget."""

    model: ir.Model | None
    best: Candidate | None
    candidates: list[Candidate]
    recipe: str
    budget: dict[str, Any]
    baseline: dict[str, Any]
    layers: list[dict[str, Any]]
    seconds: float
    stopped: str
    cache: dict[str, int]
    objective: str
    calibration: Calibration | None = field(default=None, repr=False)  # the feeds the passes received

    @property
    def met(self) -> bool:
        return self.best is not None

    def pareto(self) -> list[Candidate]:
        """Measured candidates no other one beats on accuracy, latency and size at once."""
        done = [c for c in self.candidates if c.error is None and c.score is not None]

        def beaten(c: Candidate) -> bool:
            return any(o is not c and o.score >= c.score and o.latency_ms <= c.latency_ms and o.size <= c.size
                       and (o.score, -o.latency_ms, -o.size) != (c.score, -c.latency_ms, -c.size) for o in done)

        return [c for c in done if not beaten(c)]

    def table(self) -> str:
        """The candidates as a plain-text table, the chosen one marked ``*``."""
        base_latency = self.baseline.get("latency_ms") or 0.0
        base_size = self.baseline.get("size") or 1
        header = ("", "candidate", "origin", "score", "metric", "latency", "x fp32", "size", "x fp32", "meets")
        rows = [header]
        for c in self.candidates:
            if c.error is not None:
                rows.append(("", c.name, c.origin, "-", "-", "-", "-", "-", "-", f"error: {c.error[:40]}"))
                continue
            rows.append(("*" if c is self.best else "", c.name, c.origin, f"{c.score:.6f}",
                         "-" if c.metric is None else f"{c.metric:.4f}", f"{c.latency_ms:.3f}ms",
                         f"{c.latency_ms / base_latency:.2f}" if base_latency else "-",
                         f"{c.size / 2**20:.3f}MB", f"{c.size / base_size:.3f}", "yes" if c.meets else "no"))
        lines = text_table(rows)
        chosen = (f"chosen: {self.best.name}" if self.best else "no candidate meets the budget") + \
                 f" ({self.budget['text']}); search {self.seconds:.1f}s, {self.stopped}"
        return "\n".join(lines + [chosen])

    def to_dict(self) -> dict[str, Any]:
        return {"best": None if self.best is None else self.best.name, "objective": self.objective,
                "budget": self.budget, "baseline": self.baseline, "seconds": round(self.seconds, 2),
                "stopped": self.stopped, "cache": self.cache,
                "candidates": [c.to_dict() for c in self.candidates],
                "pareto": [c.name for c in self.pareto()], "layers": self.layers, "recipe": self.recipe}


def optimize(model: ir.Model | str, *, target: str = "cpu", calibration: Iterable[Mapping[str, np.ndarray]],
             data: Iterable[Mapping[str, np.ndarray]] | None = None, min_cosine: float | None = None,
             max_drop: float | None = None, metric: Metric | None = None, objective: Objective = "latency",
             time_budget: float | None = None, cache: Cache | None = None, seed: int = 0,
             decisions: Sequence[str] | None = None, workers: int = 1, address: str | None = None,
             progress: Report | None = None) -> OptimizeResult:
    """Search per-layer compression decisions for the best model within an accuracy budget.

    Args:
        model: the input model (an ``ir.Model`` or anything ``onnxpress.load`` takes).
        target: the target profile: which methods exist, where latency is measured.
        calibration: feeds the passes calibrate on.
        data: held-out feeds the budget is judged on (default: the last fifth of calibration,
            which the passes then never see).
        min_cosine: the lowest output cosine allowed (per output, as the accuracy floor judges);
            default the target's cosine tolerance when no ``max_drop`` is given.
        max_drop: the largest drop of ``metric`` (higher is better) allowed against the input model.
        metric: a task metric over a model's outputs on ``data`` (needed by ``max_drop``).
        objective: ``latency`` (median on the target) or ``size`` (bytes of weights).
        time_budget: seconds; when spent, the best candidate so far is returned.
        cache: content-addressed cache of pass results and measurements (None: no cache).
        decisions: the per-layer decisions to search (default: what the target allows).
        workers, address: build the method candidates as parallel trials (``trials``); latency
            is still measured serially here.
        progress: called with one line per step of the search, and with how far its long steps
            got (``progress.Step`` lines: method candidates, simulations, sensitivity,
            allocation rounds, latency runs, and the passes' own steps inside each candidate).
    """
    from onnxpress.io import load

    started = time.perf_counter()
    say = progress if progress is not None else logged(None, logger)
    if objective not in ("latency", "size"):
        raise OnnxpressError(f"optimize: objective must be 'latency' or 'size', got {objective!r}")
    if max_drop is not None and metric is None:
        raise DataError("optimize: max_drop needs a metric (--labels KEY in the command line)")
    source = load(model)
    search = _Search(source, target=target, calibration=calibration, data=data, min_cosine=min_cosine,
                     max_drop=max_drop, metric=metric, objective=objective, cache=cache, seed=seed, say=say,
                     deadline=None if time_budget is None else started + time_budget, workers=workers,
                     address=address)
    search.run(decisions)
    return search.result(time.perf_counter() - started)


class _OutOfTime(Exception):
    pass


class _Search:
    def __init__(self, source: ir.Model, *, target, calibration, data, min_cosine, max_drop, metric, objective,
                 cache, seed, say, deadline, workers, address) -> None:
        self.source = source
        self.target = target
        self.runner = Pipeline([], target=target).runner()
        calib = from_feeds(calibration, name="calibration")
        if data is None:
            calib, held = holdout(calib)
            self.data_note = f"held-out fifth of the calibration data ({len(held)} samples the passes never saw)"
        else:
            held = from_feeds(data, name="data")
            self.data_note = f"evaluation data ({len(held)} samples)"
        self.calibration: Calibration = calib
        # a metric sees every held-out feed (its labels follow them); a cosine needs no more than 64
        self.eval_feeds = list(held) if metric is not None else held.take(_EVAL_SAMPLES)
        if not self.eval_feeds:
            raise DataError("optimize: no held-out data to judge the budget on")
        # latency is timed on the held-out feed of median size (sentences of many lengths: the middle one)
        by_size = sorted(self.eval_feeds, key=lambda feed: sum(np.asarray(a).size for a in feed.values()))
        self.latency_feed = by_size[len(by_size) // 2]
        if min_cosine is None and max_drop is None:
            min_cosine = self.runner.target.cosine
        self.min_cosine, self.max_drop, self.metric = min_cosine, max_drop, metric
        self.objective = objective
        self.cache = cache
        self.seed = seed
        self.say = say
        self.tell = within(say, "optimize")  # the search's steps, as steps of "optimize"
        self.deadline = deadline
        self.workers, self.address = workers, address
        self.candidates: list[Candidate] = []
        self.layers: list[_search.Layer] = []
        self.plans_tried: set[tuple] = set()
        self.stopped = "finished"
        self.base: ir.Model | None = None
        self.key_parts = {"calibration": data_digest(self.calibration), "data": data_digest(self.eval_feeds),
                          "versions": versions(), "target": self.runner.target.name, "seed": seed,
                          "host": platform.node() + "|" + platform.processor()}

    # -- budget

    @property
    def budget(self) -> dict[str, Any]:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.max_drop is not None:
            parts.append(f"metric drop <= {self.max_drop:g}")
        return {"min_cosine": self.min_cosine, "max_drop": self.max_drop, "text": " and ".join(parts),
                "data": self.data_note}

    def _cosine_drop(self) -> float:
        """The drop in ``1 - cosine`` the knapsack aims under. A metric budget is mapped there
        from the methods' measurements: the largest cosine drop a measured model had while its
        metric stayed within the budget (at least 0.001)."""
        if self.min_cosine is not None:
            return max(1.0 - self.min_cosine, 1e-6)
        within = [1.0 - c.score for c in self.candidates if c.meets and c.error is None and c.score is not None]
        return max(within + [1e-3])

    def _check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _OutOfTime

    # -- the search

    def run(self, decisions: Sequence[str] | None) -> None:
        try:
            self._prepare()
            self._methods()
            self._check_time()
            self._sensitivity(decisions)
            self._allocations()
        except _OutOfTime:
            self.stopped = "stopped by the time budget"
            self.say("optimize: time budget spent; returning the best candidate so far")

    def _prepare(self) -> None:
        self.say("optimize: simplify and measure the input model")
        result = self._pipeline([{"name": "simplify"}], self.source, "fp32")
        self.base = result
        self.reference = self.runner.outputs(self.source, self.eval_feeds)
        self.reference_metric = None if self.metric is None else float(self.metric(self.reference))
        baseline = Candidate("fp32 (simplified)", [{"name": "simplify"}], "baseline")
        self._add(baseline, model=self.base)
        self.baseline = {"latency_ms": baseline.latency_ms, "size": _proto.weight_bytes(self.source),
                         "metric": self.reference_metric}

    def _methods(self) -> None:
        """Build and measure each single method the target can use, on every layer."""
        precision = self.runner.target.precision
        has_matmul = any(n.op_type in ("MatMul", "Gemm") for n in self.base.graph)
        methods: list[tuple[str, list[dict[str, Any]]]] = []
        if precision == "fp16":
            methods.append(("fp16", [{"name": "fp16"}]))
        methods.append(("int8", [{"name": "quantize"}]))
        if precision == "int8":  # op groups where int8 does not pay on this CPU stay float, by timing
            methods.append(("int8 latency-aware", [{"name": "quantize", "latency_aware": True}]))
        if has_matmul and precision != "int8-pow2":
            methods.append(("int8 dynamic", [{"name": "quantize", "mode": "dynamic"}]))
            methods.append(("int4 weight-only", [{"name": "weightonly", **_INT4}]))
        if has_matmul:
            methods.append(("lowrank 50%", [{"name": "lowrank", **_LOWRANK}]))
            methods.append(("lowrank 50% + int8", [{"name": "lowrank", **_LOWRANK}, {"name": "quantize"}]))
        self.methods = {}
        if self.workers != 1 or self.address is not None:
            self._build_in_trials([[{"name": "simplify"}] + steps for _, steps in methods])
        for name, steps in track(methods, self.tell, "methods", unit="candidates"):
            self._check_time()
            self.methods[name] = self._candidate(name, [{"name": "simplify"}] + steps, "method")

    def _build_in_trials(self, jobs: list[list[dict[str, Any]]]) -> None:
        """Build the candidates' pass results as parallel trials (``trials.run_trials``) into the
        shared cache folder; the search then reads them back and measures them one at a time."""
        from onnxpress.trials import run_trials

        if self.cache is None:  # the trials hand their results over through a cache folder
            import tempfile

            self.scratch = tempfile.TemporaryDirectory(prefix="onnxpress-optimize-")
            self.cache = Cache(self.scratch.name)
        source = make_key(kind="source", model=model_digest(self.source))
        self.cache.put_model(source, self.source, {})
        feeds = list(self.calibration)
        items = [_Trial(str(self.cache.folder), source, steps, feeds, self.target, self.seed) for steps in jobs]
        self.say(f"optimize: building {len(items)} method candidates as parallel trials")
        failures = [error for error in run_trials(_build_trial, items, workers=self.workers, address=self.address,
                                                  progress=self.tell, what="method candidate") if error]
        for error in failures:
            self.say(f"optimize: a trial failed ({error}); it is built again here")

    def _sensitivity(self, decisions: Sequence[str] | None) -> None:
        allowed = list(decisions or self._decisions_for_target())
        self.layers = _search.find_layers(self.base, decisions=allowed)
        if not self.layers:
            self.say("optimize: no weight layers to decide on; the methods alone are the candidates")
            return
        feeds = self.calibration.take(_CAPTURE_SAMPLES)
        self.say(f"optimize: simulate {len(allowed) - 1} decisions on {len(self.layers)} layers")
        key = self._key("sensitivity", self.base, {"decisions": allowed})
        stored = self.cache.get_json(key) if self.cache else None
        if stored is not None and set(stored) == {layer.name for layer in self.layers}:
            for layer in self.layers:
                layer.errors, layer.gain, layer.macs = (stored[layer.name]["errors"], stored[layer.name]["gain"],
                                                        stored[layer.name]["macs"])
            return
        _search.capture(self.runner, self.base, self.layers, feeds, self.tell)
        self._check_time()
        held_back = self.calibration.take(_CAPTURE_SAMPLES + _SENSITIVITY_SAMPLES)[-_SENSITIVITY_SAMPLES:]
        reference = self.runner.outputs(self.base, held_back)
        self.say(f"optimize: measure the sensitivity of {len(self.layers)} layers (noise on one at a time)")
        _search.measure_gains(self.runner, self.base, self.layers, held_back, reference, _score, self.tell)
        for layer in self.layers:
            if layer.output in {v.name for v in self.base.graph.outputs}:
                layer.gain = 0.5  # noise e on an output itself costs e^2 / 2 of its cosine
        if self.cache:
            self.cache.put_json(key, {layer.name: {"errors": layer.errors, "gain": layer.gain, "macs": layer.macs}
                                      for layer in self.layers})

    def _decisions_for_target(self) -> tuple[str, ...]:
        if self.runner.target.precision == "int8-pow2":
            return (_search.FLOAT, _search.INT8, _search.LOWRANK, _search.LOWRANK_INT8)
        return _search.DECISIONS

    # -- allocation

    def _allocations(self) -> None:
        if not self.layers:
            return
        cost, value = self.cost, self.value = self._cost(), self._value()
        budget = self._cosine_drop() * _MARGIN
        best: Candidate | None = None
        last_failed: tuple[_search.Plan, Candidate] | None = None
        for round_index in track(range(_ROUNDS), self.tell, "allocation", unit="rounds"):
            self._check_time()
            plan = _search.allocate(self.layers, cost, value, budget)
            signature = tuple(sorted(plan.decisions.items()))
            if plan.value <= 0 or signature in self.plans_tried:
                budget *= 0.5 if (best is None) else 1.6
                if plan.value <= 0 and best is None:
                    break  # nothing pays within any budget the knapsack can see
                continue
            self.plans_tried.add(signature)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(plan.counts().items()))
            candidate = self._candidate(f"allocation {round_index + 1} ({counts})", self._steps(plan.decisions),
                                        "allocation", decisions=plan.decisions)
            self.say(f"optimize: allocation {round_index + 1}: predicted drop {plan.predicted_drop:.2e}, "
                     f"measured score {candidate.score if candidate.score is not None else 'error'}, "
                     f"{'meets' if candidate.meets else 'misses'} the budget")
            if candidate.meets:
                best = candidate if best is None or self._better(candidate, best) else best
                budget *= 1.6
            else:
                last_failed = (plan, candidate)
                ratio = self._measured_ratio(plan, candidate)
                budget *= min(0.7, max(0.2, ratio))
        if best is None and last_failed is not None:
            self._revert(*last_failed, cost, value)

    def _measured_ratio(self, plan: _search.Plan, candidate: Candidate) -> float:
        """How far under the prediction the next budget goes: predicted / measured drop."""
        if candidate.score is None or plan.predicted_drop <= 0:
            return 0.5
        measured = max(1.0 - candidate.score, 1e-9)
        return plan.predicted_drop / measured * 0.9

    def _revert(self, plan: _search.Plan, failed: Candidate, cost, value) -> None:
        """Revert the costliest layers to float, half of the remaining ones at a time, until the
        measured model meets the budget."""
        changed = sorted((name for name, d in plan.decisions.items() if d != _search.FLOAT),
                         key=lambda name: -cost(self._layer(name), plan.decisions[name]))
        decisions = dict(plan.decisions)
        step = max(1, len(changed) // 2)
        with Tracker(self.tell, "revert", None, "candidates") as reverting:
            while changed:
                self._check_time()
                for name in changed[:step]:
                    decisions[name] = _search.FLOAT
                changed = changed[step:]
                counts: dict[str, int] = {}
                for d in decisions.values():
                    counts[d] = counts.get(d, 0) + 1
                label = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                candidate = self._candidate(f"revert ({label})", self._steps(decisions), "revert",
                                            decisions=decisions)
                reverting.advance()
                if candidate.meets:
                    return
                step = max(1, step // 2)

    def _layer(self, name: str) -> _search.Layer:
        return next(layer for layer in self.layers if layer.name == name)

    def _cost(self) -> Callable[[_search.Layer, str], float]:
        """Predicted drop of ``1 - cosine`` from one decision on one layer, each method's predictions
        scaled to what its all-layers build measured."""
        correction = {}
        for decision, method in _MEASURED_BY.items():
            measured = self.methods.get(method)
            predicted = sum(layer.gain * layer.errors.get(decision, 0.0) ** 2 for layer in self.layers
                            if decision in layer.choices)
            if measured is None or measured.score is None or predicted <= 0:
                correction[decision] = 1.0
                continue
            correction[decision] = float(np.clip(max(1.0 - measured.score, 1e-9) / predicted, 0.1, 10.0))
        self.correction = correction

        def cost(layer: _search.Layer, decision: str) -> float:
            if decision == _search.FLOAT:
                return 0.0
            error = layer.errors.get(decision)
            if error is None:
                return float("inf")
            return correction.get(decision, 1.0) * layer.gain * error ** 2

        return cost

    def _value(self) -> Callable[[_search.Layer, str], float]:
        """What a decision saves on one layer: bytes, or the method's measured latency saving on
        the target shared among the layers it changed by their multiply-accumulates."""
        if self.objective == "size":
            per_param = {_search.FLOAT: 0.0, _search.INT8: 3.0, _search.INT4: 3.3, _search.LOWRANK: 2.0,
                         _search.LOWRANK_INT8: 3.5}
            return lambda layer, decision: per_param[decision] * layer.params
        base = self.baseline["latency_ms"]
        saving = {}
        for decision, method in _MEASURED_BY.items():
            measured = self.methods.get(method)
            eligible = sum(layer.macs for layer in self.layers if decision in layer.choices) or 1.0
            total = 0.0 if measured is None or measured.latency_ms is None else base - measured.latency_ms
            saving[decision] = total / eligible
        self.saving_per_mac = saving
        return lambda layer, decision: 0.0 if decision == _search.FLOAT else saving[decision] * layer.macs

    def _rows(self, best: Candidate | None) -> list[dict[str, Any]]:
        """The per-layer table of the report: the chosen decision, its predicted cost and saving, and why."""
        if not self.layers or not hasattr(self, "cost"):
            return []
        chosen = best.decisions if best is not None and best.decisions else {}
        if best is not None and best.origin == "method":  # one method on every layer that admits it
            method = {"int8 dynamic": _search.INT8, "int8 latency-aware": _search.INT8,
                      **{m: d for d, m in _MEASURED_BY.items()}}.get(best.name)
            fallback = _search.INT8 if method == _search.LOWRANK_INT8 else _search.FLOAT
            chosen = {layer.name: method if method in layer.choices else fallback for layer in self.layers}
        unit = "ms" if self.objective == "latency" else "bytes"
        rows = []
        for layer in self.layers:
            decision = chosen.get(layer.name, _search.FLOAT)
            row = _search.describe(layer, decision, self.cost(layer, decision), self.value(layer, decision), unit)
            row["why"] = self._why(layer, decision, self.cost, self.value)
            rows.append(row)
        return rows

    def _why(self, layer: _search.Layer, decision: str, cost, value) -> str:
        options = [d for d in layer.choices if d != _search.FLOAT]
        if decision == _search.FLOAT:
            paying = [d for d in options if value(layer, d) > 0]
            if not paying:
                return "no decision saves " + ("latency" if self.objective == "latency" else "bytes") + " here"
            cheapest = min(paying, key=lambda d: cost(layer, d))
            return f"{cheapest} would cost {cost(layer, cheapest):.2e} of the budget for {value(layer, cheapest):.3g}"
        return (f"saves {value(layer, decision):.3g} for a predicted {cost(layer, decision):.2e} "
                f"(local error {layer.errors.get(decision, 0):.3g} x sensitivity {layer.gain:.3g})")

    @staticmethod
    def _steps(decisions: dict[str, str]) -> list[dict[str, Any]]:
        """The passes that build an allocation from the input model."""
        by = {d: sorted(name for name, chosen in decisions.items() if chosen == d) for d in _search.DECISIONS}
        steps: list[dict[str, Any]] = [{"name": "simplify"}]
        if by[_search.INT4]:
            steps.append({"name": "weightonly", **_INT4, "min_elements": 0,
                          "exclude": [n for n in decisions if decisions[n] != _search.INT4]})
        factored = by[_search.LOWRANK] + by[_search.LOWRANK_INT8]
        if factored:
            steps.append({"name": "lowrank", **_LOWRANK,
                          "exclude": [n for n in decisions if n not in factored]})
        if by[_search.INT8] or by[_search.LOWRANK_INT8]:
            # float: the float layers, and the factors of the layers factored without int8
            floats = by[_search.FLOAT] + [f"{n}_lowrank_{i}" for n in by[_search.LOWRANK] for i in (1, 2)]
            steps.append({"name": "quantize", "exclude": floats} if floats else {"name": "quantize"})
        return steps

    # -- candidates

    def _candidate(self, name: str, steps: list[dict[str, Any]], origin: str,
                   decisions: dict[str, str] | None = None) -> Candidate:
        candidate = Candidate(name, steps, origin, decisions)
        started = time.perf_counter()
        try:
            model = self._pipeline(steps, self.source, name)
        except OnnxpressError as err:
            candidate.error = str(err).splitlines()[0]
            candidate.seconds = time.perf_counter() - started
            self.candidates.append(candidate)
            self.say(f"optimize: {name}: {candidate.error}")
            return candidate
        candidate.seconds = time.perf_counter() - started
        self._add(candidate, model=model)
        return candidate

    def _pipeline(self, steps: list[dict[str, Any]], model: ir.Model, label: str) -> ir.Model:
        passes = [registry.create(step["name"], {k: v for k, v in step.items() if k != "name"},
                                  where="optimize") for step in steps]
        pipeline = Pipeline(passes, target=self.target, check=False, golden_samples=0, latency_runs=0,
                            accuracy_floor=0, cache=self.cache, seed=self.seed)
        return pipeline.run(model, self.calibration, progress=pipeline_steps(self.tell, label)).model

    def _add(self, candidate: Candidate, *, model: ir.Model) -> None:
        """Measure ``model`` (cached by its digest) and record the candidate."""
        self._check_time()
        key = self._key("measure", model, {})
        stored = self.cache.get_json(key) if self.cache else None
        if stored is None:
            outputs = self.runner.outputs(model, self.eval_feeds)
            stats = compare(self.reference, outputs)
            stored = {"score": _score(stats), "metric": None if self.metric is None else float(self.metric(outputs)),
                      "latency_ms": self._latency(model, candidate.name), "size": _proto.weight_bytes(model)}
            if self.cache:
                self.cache.put_json(key, stored)
        else:
            candidate.cached = True
        candidate.score, candidate.metric = stored["score"], stored["metric"]
        candidate.latency_ms, candidate.size = stored["latency_ms"], stored["size"]
        candidate.meets = self._meets(candidate)
        candidate.model = model
        self.candidates.append(candidate)
        self.say(f"optimize: {candidate.name}: score {candidate.score:.6f}, {candidate.latency_ms:.3f} ms, "
                 f"{candidate.size / 2**20:.3f} MB{' (cached)' if candidate.cached else ''}")

    def _meets(self, candidate: Candidate) -> bool:
        if self.min_cosine is not None and candidate.score < self.min_cosine:
            return False
        if self.max_drop is not None and candidate.metric is not None and self.reference_metric is not None:
            return self.reference_metric - candidate.metric <= self.max_drop
        return True

    def _latency(self, model: ir.Model, name: str) -> float:
        return float(self.runner.latency(model, self.latency_feed, progress=within(self.tell, name)).median_ms)

    def _key(self, kind: str, model: ir.Model, extra: dict[str, Any]) -> str:
        return make_key(kind=kind, model=model_digest(model), **self.key_parts, **extra)

    def _better(self, a: Candidate, b: Candidate) -> bool:
        """Whether ``a`` beats ``b`` on the objective (latency within 5 % is a tie, broken by accuracy)."""
        if self.objective == "size":
            return (a.size, a.latency_ms) < (b.size, b.latency_ms)
        if abs(a.latency_ms - b.latency_ms) <= _TIE * min(a.latency_ms, b.latency_ms):
            return a.score > b.score
        return a.latency_ms < b.latency_ms

    def description(self, best: Candidate) -> str:
        return f"found by onnxpress optimize: {best.name}, {self.budget['text']}"

    def result(self, seconds: float) -> OptimizeResult:
        best = None
        for candidate in self.candidates:
            if candidate.error is None and candidate.meets and (best is None or self._better(candidate, best)):
                best = candidate
        text = ""
        if best is not None:
            passes = [registry.create(step["name"], {k: v for k, v in step.items() if k != "name"}, where="optimize")
                      for step in best.steps]
            text = recipe_text(passes, target=self.target, description=self.description(best),
                               pipeline_options={"accuracy_floor": self.min_cosine or 0.0})
        cache_stats = {} if self.cache is None else {"hits": self.cache.hits, "misses": self.cache.misses,
                                                      "corrupted": self.cache.corrupted}
        return OptimizeResult(best.model if best else None, best, self.candidates, text, self.budget,
                              getattr(self, "baseline", {}), self._rows(best), seconds, self.stopped,
                              cache_stats, self.objective, self.calibration)


@dataclass(frozen=True)
class _Trial:
    """One candidate build for a trial: plain data (the model is read from the shared cache)."""

    cache: str
    source: str
    steps: list[dict[str, Any]]
    feeds: list[dict[str, np.ndarray]]
    target: str
    seed: int

    def __str__(self) -> str:
        return " -> ".join(step["name"] for step in self.steps)


def _build_trial(trial: _Trial) -> str | None:
    """Run ``trial``'s passes with the shared cache (where their results are left); the error's
    first line, or None."""
    cache = Cache(trial.cache)
    found = cache.get_model(trial.source)
    if found is None:
        return "the input model is not in the shared cache folder"
    passes = [registry.create(step["name"], {k: v for k, v in step.items() if k != "name"}, where="optimize")
              for step in trial.steps]
    try:
        Pipeline(passes, target=trial.target, check=False, golden_samples=0, latency_runs=0, accuracy_floor=0,
                 cache=cache, seed=trial.seed).run(found[0], trial.feeds)
    except OnnxpressError as err:
        return str(err).splitlines()[0]
    return None


def _score(stats: Mapping[str, Any]) -> float:
    """The worst output's score (cosine, or 1 - relative error for one value per row)."""
    return float(min(s.score for s in stats.values()))
