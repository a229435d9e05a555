"""The pass pipeline: runs passes in order, checks the model after each, tracks accuracy.

After every pass the pipeline records wall time, node count, weight bytes and parameters before
and after, and the pass's own statistics; it runs the ONNX checker and builds an ONNX Runtime
session on the target (unless ``check=False``), and compares the outputs on a few golden inputs
with the input model's outputs, all in one session through the ``Runner``. A pass that declares itself ``lossless`` fails the run when it changes
outputs beyond a tight tolerance.

Under ``sandbox.limited`` (always in the CLI) those checks run in the limited worker, and
before any pass the input model runs there on every calibration and evaluation feed: the
passes' in-process runs of it then only repeat what is proven to end within the limits.

With a ``cache`` (``onnxpress.cache.Cache``) a pass whose result is already stored under the same
input model, configuration, data, library versions, target and seed is not run again: its stored
model, ``modified`` and statistics are used (``statistics["cached"]`` is True), and the checks,
accuracy comparison and floor after it run as for a fresh result.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, _weights, runtime, sandbox
from onnxpress.cache import Cache, data_digest, make_key, model_digest, pass_config, versions
from onnxpress.calibration import Calibration, from_feeds
from onnxpress.context import Metric, Pass, PassContext, PassResult, pass_name, pass_statistics
from onnxpress.errors import (AccuracyFloorError, DataError, ModelError, OnnxpressError, PassError,
                              PipelineError)
from onnxpress.feeds import check_feed, declare_ranks, random_feeds, unshaped_inputs
from onnxpress.metrics import COSINE, RELATIVE_ERROR, ErrorStats, compare
from onnxpress.modelinfo import format_bytes, node_count, parameter_count, text_table
from onnxpress.progress import Step

logger = logging.getLogger(__name__)

Progress = Callable[["ProgressEvent"], None]


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress display is told: a pass starts (no record, no message), says something
    (``message``), tells how far one of its long steps got (``message`` is a
    ``progress.Step``: see ``step``) or ends (``record``)."""

    index: int
    total: int
    name: str
    record: "PassRecord | None" = None
    message: str = ""

    @property
    def step(self) -> Step | None:
        """How far a step of the pass got (statistics 37/256 feeds), when this event says that."""
        return self.message if isinstance(self.message, Step) else None


@dataclass
class PassRecord:
    """What one pass did to the model."""

    name: str
    seconds: float
    modified: bool
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    params_before: int
    params_after: int
    statistics: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, ErrorStats] | None = None
    checked: bool = False
    latency_ms: float | None = None
    kernels: dict[str, Any] | None = None
    floor: dict[str, Any] | None = None

    @property
    def max_abs(self) -> float | None:
        return max((s.max_abs for s in self.accuracy.values()), default=0.0) if self.accuracy else None

    @property
    def cosine(self) -> float | None:
        return min((s.cosine for s in self.accuracy.values()), default=1.0) if self.accuracy else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "seconds": self.seconds, "modified": self.modified,
            "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "statistics": self.statistics, "checked": self.checked, "latency_ms": self.latency_ms,
            "kernels": self.kernels, "floor": self.floor,
            "accuracy": None if self.accuracy is None else {k: v.to_dict() for k, v in self.accuracy.items()},
        }


@dataclass
class PipelineResult:
    """The output model and one record per pass."""

    model: ir.Model
    records: list[PassRecord]
    golden_source: str | None
    golden_note: str = ""
    input_latency_ms: float | None = None
    checked_on: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {"golden_source": self.golden_source, "golden_note": self.golden_note,
                "input_latency_ms": self.input_latency_ms, "checked_on": self.checked_on,
                "records": [r.to_dict() for r in self.records]}

    def table(self) -> str:
        """A plain-text table of the records."""
        header = ("pass", "time", "nodes", "weights", "params", "latency", "int8/float", "max-abs", "cosine")
        rows = [header]
        for r in self.records:
            rows.append((
                r.name, f"{r.seconds:.2f}s", f"{r.nodes_before}->{r.nodes_after}",
                f"{format_bytes(r.bytes_before)}->{format_bytes(r.bytes_after)}",
                f"{r.params_before}->{r.params_after}",
                "-" if r.latency_ms is None else f"{r.latency_ms:.3f}ms",
                "-" if r.kernels is None else f"{r.kernels['int8']}/{r.kernels['float']}",
                "-" if r.max_abs is None else f"{r.max_abs:.2e}",
                "-" if r.cosine is None else f"{r.cosine:.6f}",
            ))
        lines = text_table(rows)
        lines += [f"note: {note}" for note in self.notes()]
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """What the passes want a reader to know, one line each: a pass's ``note`` statistic
        (weight-only int4 that is a size method on this target, a model already quantized)."""
        return [f"{r.name}: {r.statistics['note']}" for r in self.records
                if isinstance(r.statistics.get("note"), str) and r.statistics["note"]]


class Pipeline:
    """Runs passes in order on a copy of the model.

    Args:
        passes: pass instances (``onnx_ir`` passes; onnxpress passes derive from
            ``onnxpress.Pass`` and get a ``PassContext``, see ``onnxpress.context``).
        check: after each pass run the ONNX checker and build an ONNX Runtime session.
        golden_samples: inputs on which outputs are compared after each pass (0 disables the
            accuracy contract); calibration samples when given, else generated.
        lossless_rtol, lossless_atol: how far a ``lossless`` pass may move an output:
            ``max|diff| <= atol + rtol * max|reference|``.
        latency_runs: timed runs of the first golden input after each pass (a quick latency
            for the per-pass table and plots; 0 disables). ``validate`` measures latency properly.
        calibration: default calibration source (a recipe's); ``run`` may override it.
        evaluation: the source verdicts are judged on (a recipe's ``[evaluation]``); the passes
            never see it.
        target: target profile name or path: the passes' context runs and times models there.
        input_shapes: input name -> shape for inputs generated when there is no calibration
            data (see ``feeds.random_feeds``).
        accuracy_floor: the lowest cosine (per output, and per channel group of different scale
            within an output) a lossy pass may leave, measured against the input model on
            held-out data (the passes' evaluation split) after every lossy pass. An output of one
            value per row (a regression, a probability), where a cosine is blind, is held to a
            relative error of ``1 - accuracy_floor`` instead (``metrics.ErrorStats.score``). A
            pass below it gets its remedy (``Pass.remedy``: quantize keeps the costliest nodes
            float); if it is still below, the run fails with ``AccuracyFloorError``. None: the target
            profile's cosine tolerance when a target is named (recipes always name one, ``cpu``
            by default), else no floor; 0 turns it off.
        cache: where pass results are reused and stored (``onnxpress.cache.Cache``), or None.
            A result is keyed by the full digests of the pass's input model, its options, the
            calibration and evaluation data, the pipeline's input model (the teacher), the library
            versions, the target profile's resolved settings and ``seed``. Passes whose options
            have no canonical form (``cache.pass_config`` gives None), and runs given a ``metric``
            (a callable cannot be keyed), run uncached.
        seed: part of every cache key: runs that differ only in seed (a search's trials) never
            share results.
    """

    def __init__(self, passes: Sequence[ir.passes.PassBase], *, check: bool = True, golden_samples: int = 4,
                 lossless_rtol: float = 1e-4, lossless_atol: float = 1e-5, latency_runs: int = 10,
                 calibration: Any = None, evaluation: Any = None, target: str | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 accuracy_floor: float | None = None, cache: Cache | None = None, seed: int = 0) -> None:
        if golden_samples < 0:
            raise ValueError(f"pipeline: golden_samples must be >= 0, got {golden_samples}")
        if latency_runs < 0:
            raise ValueError(f"pipeline: latency_runs must be >= 0, got {latency_runs}")
        for item in passes:
            if not isinstance(item, ir.passes.PassBase):
                raise TypeError(f"pipeline: {item!r} is not an onnx_ir pass")
        self.passes = list(passes)
        self.check = check
        self.golden_samples = golden_samples
        self.latency_runs = latency_runs
        self.lossless_rtol = lossless_rtol
        self.lossless_atol = lossless_atol
        self.calibration = calibration
        self.evaluation = evaluation
        self.target = target
        self.input_shapes = dict(input_shapes or {})
        if accuracy_floor is not None and not 0.0 <= accuracy_floor <= 1.0:
            raise ValueError(f"pipeline: accuracy_floor must be in [0, 1], got {accuracy_floor}")
        self.accuracy_floor = accuracy_floor
        self.cache = cache
        self.seed = seed

    @classmethod
    def from_recipe(cls, recipe: str | os.PathLike | Any, *, cache: Cache | None = None,
                    seed: int = 0) -> "Pipeline":
        """The pipeline a TOML recipe describes (a path, or a ``Recipe`` already parsed).

        The one builder of pipelines from recipes: the CLI and the Python API use it alike.
        ``cache`` and ``seed`` are passed to the pipeline.
        """
        from onnxpress.recipe import Recipe, load_recipe

        parsed = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        base = parsed.path.parent if parsed.path is not None else None
        options = dict(parsed.pipeline_options)
        options.setdefault("accuracy_floor", None)
        target = parsed.target or "cpu"  # a recipe's floor comes from its target's tolerances
        return cls(parsed.passes, calibration=_Source(parsed.calibration, base, "calibration"),
                   evaluation=_Source(parsed.evaluation, base, "evaluation"), target=target, cache=cache,
                   seed=seed, **options)

    @staticmethod
    def pass_name(item: ir.passes.PassBase) -> str:
        return pass_name(item)

    def runner(self) -> runtime.Runner:
        """The runner on this pipeline's target (the CPU when it names none).

        Compressing for a target this machine does not have (a CUDA profile on a laptop) is
        allowed: the checks after each pass and the passes' measurements then run on the CPU,
        with a warning, and the result says where it was checked. Verdicts on the target itself
        are ``validate``'s, which never falls back.
        """
        runner = runtime.Runner(self.target or "cpu")
        missing = [name for name, _ in runner.settings.providers if name not in runtime.available_providers()]
        if missing:
            logger.warning("target '%s' needs %s, which this onnxruntime build lacks: the pipeline checks "
                           "and measures on the CPU", runner.target.name, ", ".join(missing))
            return runtime.Runner("cpu")
        return runner

    def data(self, model: ir.Model, which: str = "calibration") -> Calibration | None:
        """The pipeline's own ``calibration`` or ``evaluation`` source read for ``model``
        (only the model's inputs are fed), or None."""
        return _read(getattr(self, which), model, which)

    def run(self, model: ir.Model, calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
            *, evaluation: Iterable[Mapping[str, np.ndarray]] | None = None, metric: Metric | None = None,
            progress: Progress | None = None) -> PipelineResult:
        """Run every pass on a copy of ``model``; the input model is left as it was.

        Args:
            calibration: feeds for passes that calibrate, and for the golden outputs (default:
                the pipeline's own source).
            evaluation: held-out feeds for the passes' accuracy decisions (default: a fifth of
                calibration). Verdict data belongs to ``validate``, never here.
            metric: a task metric over a model's outputs on the evaluation feeds (higher is better).
            progress: called when a pass starts and ends, with messages from long passes, and with
                how far their long steps got (``ProgressEvent.step``; about once a second at most).
        """
        from onnxpress.io import load

        source = load(model)
        # A large model streams: each pass's new tensors go to the workspace's spill file as they
        # are made, and every weight read is released after use (``_weights``).
        with _weights.streaming(_weights.is_large(source)):
            return self._run(source, calibration, evaluation, metric, progress)

    def _run(self, source: ir.Model, calibration, evaluation, metric: Metric | None,
             progress: Progress | None) -> PipelineResult:
        calib = _read(calibration if calibration is not None else self.calibration, source, "calibration")
        held_out = _read(evaluation, source, "evaluation")
        runner = self.runner()
        golden_feeds, golden_source, golden_note = self._golden_feeds(source, calib)
        source = self._declare_ranks(source, calib, golden_feeds)
        # teacher: the input model as checked (distill's target); the passes work on a clone of it.
        context = PassContext.build(runner=runner, calibration=calib, evaluation=held_out, metric=metric,
                                    teacher=source)
        golden_outputs = input_latency = None
        limited = sandbox.current() is not None
        if golden_feeds or limited:
            # Under limits the untrusted input model first runs, in the limited worker, on every
            # feed the passes will give it: in-process runs of it are safe from then on.
            proof = [f for part in (context.calibration, context.evaluation) if part is not None
                     for f in part] if limited else []
            checked = self._run_checked(runner, source, golden_feeds + proof, "the input model",
                                        keep=len(golden_feeds))
            golden_outputs = checked.outputs if golden_feeds else None
            input_latency = checked.quick_latency_ms
        floor = self._floor(runner, source, context, golden_feeds)  # runs the input model: after its proof
        current = source.clone()
        parts = self._cache_parts(runner, context, current, metric)
        # The digest of ``current`` when known: the output digest of one pass is the next one's input.
        digest = parts["teacher"] if parts is not None else None
        records = []
        total = len(self.passes)
        for index, item in enumerate(self.passes):
            name = pass_name(item)
            if progress:
                progress(ProgressEvent(index, total, name))
            context.progress = (lambda message, i=index, n=name: progress(ProgressEvent(i, total, n, message=message))
                                ) if progress else None
            before = (node_count(current), _proto.weight_bytes(current), parameter_count(current))
            start = time.perf_counter()
            held = floor is not None and not getattr(item, "lossless", False)
            # A lossy pass followed by one that recovers (distill) is judged after the recovery.
            deferred = held and index + 1 < total and getattr(self.passes[index + 1], "recovers", False)
            previous = current.clone() if held and item.in_place else current
            digest_in = digest  # the remedy runs on the same input
            try:
                result, produced = self._apply(item, context, current, digest, parts)
            except PassError:
                raise
            except ir.passes.PreconditionError as err:
                raise PipelineError(f"pass '{name}' cannot run on this model: {err}") from err
            except OnnxpressError:
                raise
            except ir.passes.PassError as err:
                raise PipelineError(f"pass '{name}' failed: {err}") from err
            seconds = time.perf_counter() - start
            current, digest = result.model, produced
            if _weights.is_streaming():
                _weights.spill(current)
            record = PassRecord(
                name=name, seconds=seconds, modified=result.modified,
                nodes_before=before[0], nodes_after=node_count(current),
                bytes_before=before[1], bytes_after=_proto.weight_bytes(current),
                params_before=before[2], params_after=parameter_count(current),
                statistics=pass_statistics(result),
            )
            quantized = self.check and any(n.op_type in runtime.QUANTIZATION_OPS for n in current.graph.all_nodes())
            if self.check or golden_outputs is not None:
                checked = self._run_checked(runner, current, golden_feeds or [], f"pass '{name}'",
                                            check=self.check, census=quantized)
                record.latency_ms = checked.quick_latency_ms
                record.kernels = checked.census
                record.checked = self.check
                if golden_outputs is not None:
                    record.accuracy = self._compare(golden_outputs, checked.outputs, name)
                    if getattr(item, "lossless", False):
                        self._enforce_lossless(name, record.accuracy)
            if deferred and result.modified:
                record.floor = {**floor.measure(current), "met": True,
                                "deferred": f"judged after '{pass_name(self.passes[index + 1])}', which recovers"}
            elif held and result.modified:
                def recheck(model: ir.Model, name: str = name) -> tuple[runtime.RunResult, Any]:
                    again = self._run_checked(runner, model, golden_feeds or [], f"pass '{name}'",
                                              check=self.check, census=quantized)
                    return again, (None if golden_outputs is None
                                   else self._compare(golden_outputs, again.outputs, name))

                remedied: list = []

                def apply(remedy: Pass, model: ir.Model, before: str | None = digest_in) -> ir.passes.PassResult:
                    outcome, out = self._apply(remedy, context, model, before, parts)
                    remedied[:] = [outcome.model, out]
                    return outcome

                current, record = floor.hold(item, name, context, previous, current, record, recheck, apply)
                if remedied and current is remedied[0]:
                    digest = remedied[1]
                if not record.floor["met"]:
                    records.append(record)
                    raise AccuracyFloorError(
                        f"pass '{name}' breaks the accuracy floor: {record.floor['reason']}",
                        PipelineResult(current, records, golden_source, golden_note, input_latency,
                                       runner.target.name))
            records.append(record)
            logger.info("pass %s: %.2fs, %d -> %d nodes", name, seconds, record.nodes_before, record.nodes_after)
            if progress:
                progress(ProgressEvent(index, total, name, record))
        return PipelineResult(current, records, golden_source, golden_note, input_latency, runner.target.name)

    def _cache_parts(self, runner: runtime.Runner, context: PassContext, model: ir.Model,
                     metric: Metric | None) -> dict[str, Any] | None:
        """What every cache key of this run holds besides the pass and its input model, or None
        when this run does not use the cache. ``teacher`` is the digest of ``model``, the
        pipeline's input (``distill`` learns from it)."""
        if self.cache is None:
            return None
        if _weights.is_large(model):
            logger.info("cache: not used: the model is large (storing each pass's result would copy its weights)")
            return None
        if metric is not None:
            logger.info("cache: not used: a task metric is given, and a callable cannot be keyed")
            return None
        start = time.perf_counter()
        parts = {"teacher": model_digest(model), "calibration": data_digest(context.calibration),
                 "evaluation": data_digest(context.evaluation), "versions": versions(),
                 "target": _target_part(runner), "seed": self.seed}
        logger.debug("cache: run digests in %.3fs (input model %s)", time.perf_counter() - start, parts["teacher"])
        return parts

    def _apply(self, item: ir.passes.PassBase, context: PassContext, model: ir.Model, digest: str | None,
               parts: dict[str, Any] | None) -> tuple[ir.passes.PassResult, str | None]:
        """Run ``item`` on ``model`` through the cache, when this run uses one and the pass has a
        canonical configuration: returns the result and the digest of its model (None when not
        computed). ``digest`` is ``model``'s digest, if known."""
        config = pass_config(item) if parts is not None else None
        if config is None:
            result = item.run_in(context, model) if isinstance(item, Pass) else item(model)
            _type_initializers(result.model)
            return result, None
        assert self.cache is not None
        if digest is None:
            digest = model_digest(model)
        key = make_key(kind="pass", model=digest, config=config, **parts)
        found = self.cache.get_model(key)
        if found is not None:
            cached, meta = found
            if isinstance(meta, dict) and isinstance(meta.get("statistics"), dict) and \
                    isinstance(meta.get("digest"), str) and isinstance(meta.get("modified"), bool):
                logger.debug("cache: hit for pass %s (%s)", config["pass"], key)
                return PassResult(cached, modified=meta["modified"],
                                  statistics={**meta["statistics"], "cached": True}), meta["digest"]
            logger.warning("cache: entry %s holds no pass result: recomputed", key)
        result = item.run_in(context, model) if isinstance(item, Pass) else item(model)
        _type_initializers(result.model)
        start = time.perf_counter()
        produced = model_digest(result.model)
        statistics = _json_safe(pass_statistics(result))
        if statistics is _UNSAFE:
            logger.debug("cache: pass %s statistics are not JSON data: not stored", config["pass"])
            return result, produced
        try:
            self.cache.put_model(key, result.model, {"pass": config["pass"], "modified": bool(result.modified),
                                                     "statistics": statistics, "digest": produced})
        except (OSError, ModelError) as err:
            logger.warning("cache: result of pass %s not stored: %s", config["pass"], err)
        logger.debug("cache: stored pass %s (%s) in %.3fs", config["pass"], key, time.perf_counter() - start)
        return result, produced

    def _floor(self, runner: runtime.Runner, source: ir.Model, context: PassContext,
               golden_feeds: list) -> _Floor | None:
        """The accuracy floor in force for this run, with the data it is judged on, or None."""
        value = self.accuracy_floor
        if value is None and self.target is not None:
            value = runner.target.cosine
        if not value:
            return None
        if context.evaluation is not None:
            feeds, data = context.evaluation.take(_FLOOR_SAMPLES), f"held-out data ({context.evaluation.name})"
        elif golden_feeds:
            feeds, data = golden_feeds, "the golden inputs (no held-out data: a consistency check)"
        else:
            return None
        return _Floor(value, feeds, data, runner, source)

    def _declare_ranks(self, source: ir.Model, calib: Calibration | None, golden_feeds: list) -> ir.Model:
        """``source``, or a copy of it whose inputs declared without a shape have the rank of the
        data and unknown dims (``feeds.declare_ranks``): the ONNX checker refuses an input
        without a shape, so the checks after each pass and the output model need one.

        Raises:
            DataError: the checks are on and an input without a shape has no data to read its
                rank from.
        """
        missing = unshaped_inputs(source)
        if not missing:
            return source
        source = source.clone()  # the caller's model is left as it was
        feeds = golden_feeds or (calib.take(1) if calib is not None else [])
        declared = declare_ranks(source, feeds, self.input_shapes)
        for name, rank in declared.items():
            logger.warning("input '%s' declares no shape, which the ONNX checker refuses: checked and written "
                           "with the rank of the data (%d), every dim unknown", name, rank)
        left = [name for name in missing if name not in declared]
        if left and self.check:
            raise DataError(f"input '{left[0]}' declares no shape, which the ONNX checker refuses: give "
                            "calibration data (its rank is read from it), or its shape with --input-shape "
                            "NAME=1x3x224x224 (input_shapes= in the API)")
        return source

    def _golden_feeds(self, model: ir.Model, calib: Calibration | None):
        if self.golden_samples == 0:
            return [], None, "accuracy not tracked (golden_samples = 0)"
        if calib is not None:
            golden = calib.take(self.golden_samples)
            for i, feed in enumerate(golden):
                check_feed(model, feed, f"{calib.name}: sample {i}")
            return golden, "calibration", f"{len(golden)} calibration samples"
        try:
            golden = random_feeds(model, self.golden_samples, seed=0, input_shapes=self.input_shapes)
        except DataError as err:
            logger.warning("accuracy not tracked: %s", err)
            return [], None, f"accuracy not tracked: {err}"
        return golden, "generated", f"{len(golden)} inputs generated from the signature"

    def _run_checked(self, runner: runtime.Runner, model: ir.Model, feeds: list, who: str, *,
                     check: bool = True, keep: int | None = None, census: bool = False) -> runtime.RunResult:
        try:
            return runner.run(model, feeds, keep=keep, check=check, quick_runs=self.latency_runs if feeds else 0,
                              census=census, what=f"{who}: ONNX Runtime session")
        except runtime.CheckFailed as err:
            raise PipelineError(f"{who} fails the ONNX checker: {err}") from err
        except (runtime.RunFailed, *runtime.ort_errors()) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(f"{who}: ONNX Runtime cannot load or run the model: {first}") from err

    @staticmethod
    def _compare(golden: list[dict], outputs: list[dict], name: str) -> dict[str, ErrorStats]:
        try:
            return compare(golden, outputs)
        except KeyError as err:
            raise PipelineError(f"pass '{name}' removed graph output {err}") from None
        except ValueError as err:
            raise PipelineError(f"pass '{name}' changed an output: {err}") from None

    def _enforce_lossless(self, name: str, accuracy: dict[str, ErrorStats]) -> None:
        for output, stats in accuracy.items():
            if not stats.within(atol=self.lossless_atol, rtol=self.lossless_rtol):
                limit = self.lossless_atol + self.lossless_rtol * stats.ref_max_abs
                raise PipelineError(
                    f"pass '{name}' is lossless but changed output '{output}': max-abs error "
                    f"{stats.max_abs:.3g} > {limit:.3g} (cosine {stats.cosine:.6f})")


def _type_initializers(model: ir.Model) -> None:
    """Give every initializer the type and shape of its tensor where a pass left them unset.

    Passes register new weights as bare values; a saved and loaded model has them typed (and
    serialises them with their ``value_info``). Typing them after each pass makes a pass's
    result the same model, byte for byte, whether it was computed or read back from the cache
    or a file: what the cache's digests and ``replay``'s bit-identical check rest on.
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            if value.type is None:
                value.type = ir.TensorType(tensor.dtype)
            if value.shape is None:
                value.shape = ir.Shape(tensor.shape)


# Held-out feeds the accuracy floor is measured on, at most.
_FLOOR_SAMPLES = 32


class _Floor:
    """The pipeline's accuracy floor: the input model's outputs on the floor's data, and the check
    (and remedy) after a lossy pass."""

    def __init__(self, value: float, feeds: list, data: str, runner: runtime.Runner, source: ir.Model) -> None:
        self.value = value
        self.feeds = feeds
        self.data = data
        self.runner = runner
        # The input model ran on these feeds in the limited worker already (the proof run).
        self.reference = runner.outputs(source, feeds, sandboxed=False)

    def measure(self, model: ir.Model) -> dict[str, Any]:
        """The worst output (or channel group) against the input model, as the record keeps it.

        Outputs are ranked by ``ErrorStats.score``: the worst cosine, or for an output of one
        value per row ``1 - relative error`` (a cosine is blind there), so the floor ``f`` holds
        such an output to a relative error of ``1 - f``. ``cosine`` is that figure, ``measure``
        and ``judged`` say which measure gave it, with its own value.
        """
        stats = compare(self.reference, self.runner.outputs(model, self.feeds, sandboxed=False))
        name = min(stats, key=lambda output: stats[output].score)
        worst = stats[name]
        grouped = worst.measure == COSINE and worst.group_cosine < worst.cosine
        where = f"output '{name}'" + (f" {worst.worst_group}" if grouped else "")
        return {"floor": self.value, "cosine": round(worst.score, 6), "measure": worst.measure,
                "judged": worst.judged(), "where": where, "data": self.data, "met": worst.score >= self.value}

    def _below(self, measured: dict[str, Any]) -> str:
        """``output 'y' cosine 0.912345 < floor 0.99``, or the relative error against ``1 - floor``."""
        if measured["measure"] == RELATIVE_ERROR:
            return (f"{measured['where']} {measured['judged']} > {1.0 - self.value:.3g} (1 - floor {self.value:g}: "
                    "an output of one value per row is judged by its relative error)")
        return f"{measured['where']} {measured['judged']} < floor {self.value:g}"

    def hold(self, item, name: str, context: PassContext, previous: ir.Model, current: ir.Model,
             record: PassRecord, recheck, apply) -> tuple[ir.Model, PassRecord]:
        """Check ``current``; below the floor, run the pass's remedy on ``previous`` (through
        ``apply(remedy, model)``, the pipeline's cached runner) and keep it if it does better.
        Returns the model to go on with and its record (``record.floor`` says)."""
        record.floor = first = self.measure(current)
        if first["met"]:
            return current, record
        remedy = item.remedy(self.value) if isinstance(item, Pass) else None
        if remedy is None:
            first["reason"] = f"{self._below(first)} on {self.data}; the pass has no remedy"
            return current, record
        context.say(f"{self._below(first)}: trying its remedy")
        result = apply(remedy, previous)
        second = self.measure(result.model)
        if second["cosine"] < first["cosine"]:
            first["reason"] = (f"{self._below(first)} on {self.data}; its remedy did worse "
                               f"({second['where']} {second['judged']})")
            return current, record
        checked, accuracy = recheck(result.model)
        record.statistics = {**pass_statistics(result), "remedy": {"floor": self.value, "before": first}}
        record.modified = result.modified
        record.nodes_after, record.bytes_after = node_count(result.model), _proto.weight_bytes(result.model)
        record.params_after = parameter_count(result.model)
        record.latency_ms, record.kernels, record.accuracy = checked.quick_latency_ms, checked.census, accuracy
        record.floor = second
        if not second["met"]:
            second["reason"] = (f"{self._below(second)} on {self.data}, even after its remedy (before it: "
                                f"{first['where']} {first['judged']})")
        return result.model, record


def _target_part(runner: runtime.Runner) -> dict[str, Any]:
    """The target of a cache key: the profile's name and the digest of its resolved settings (every
    field but its file's path, and the instruction set ``isa = "host"`` resolves to here)."""
    from onnxpress.hardware import quantization_defaults_for

    settings = {f.name: getattr(runner.target, f.name) for f in fields(runner.target) if f.name != "path"}
    settings["isa_resolved"] = quantization_defaults_for(runner.target.isa).to_dict()
    return {"name": runner.target.name, "digest": make_key(**settings)}


_UNSAFE = object()


def _json_safe(value: Any) -> Any:
    """``value`` as JSON data (numpy scalars and arrays as Python values, tuples as lists, number
    keys as strings), or ``_UNSAFE``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        items = [_json_safe(v) for v in value]
        return _UNSAFE if any(v is _UNSAFE for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, (str, int, float)) for k in value):
        items = {str(k): _json_safe(v) for k, v in value.items()}
        return _UNSAFE if any(v is _UNSAFE for v in items.values()) else items
    return _UNSAFE


@dataclass(frozen=True)
class _Source:
    """A recipe's data-source spec, read when the model is known (its inputs pick the arrays)."""

    spec: Any
    base: Any
    name: str


def _read(source: Any, model: ir.Model, name: str) -> Calibration | None:
    if source is None or (isinstance(source, _Source) and source.spec is None):
        return None
    if isinstance(source, _Source):
        from onnxpress.calibration import read_source

        return read_source(source.spec, model=model, base=source.base, name=name)
    return from_feeds(source, name=name)
