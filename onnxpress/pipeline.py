"""The pass pipeline: runs passes in order, checks the model after each, tracks accuracy.

After every pass the pipeline records wall time, node count, weight bytes and parameters before
and after, and the pass's own statistics; it runs the ONNX checker and builds an ONNX Runtime
CPU session (unless ``check=False``), and compares the outputs on a few golden inputs with the
input model's outputs. A pass that declares itself ``lossless`` fails the run when it changes
outputs beyond a tight tolerance.

Under ``sandbox.limited`` (always in the CLI) those checks run in a limited child process, and
before any pass the input model runs there on every calibration and evaluation feed: the
passes' in-process runs of it then only repeat what is proven to end within the limits.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, feeds, runtime, sandbox
from onnxpress.calibration import Calibration, from_feeds
from onnxpress.errors import DataError, OnnxpressError, PassError, PipelineError
from onnxpress.metrics import ErrorStats, compare
from onnxpress.modelinfo import format_bytes, node_count, parameter_count

logger = logging.getLogger(__name__)

Progress = Callable[["ProgressEvent"], None]


@dataclass(frozen=True)
class ProgressEvent:
    """What a progress display is told: a pass starts (no record, no message), reports
    progress (``message``) or ends (``record``)."""

    index: int
    total: int
    name: str
    record: "PassRecord | None" = None
    message: str = ""


Metric = Callable[[Sequence[Mapping[str, np.ndarray]]], float]


@dataclass
class Context:
    """What the pipeline hands to passes that ask for it (a ``context`` attribute).

    Passes never build sessions: they ask the context to collect statistics, run or time a
    model. ``evaluation`` is held-out data for accuracy decisions; when none is given it is the
    last fifth of the calibration source (which then calibrates on the rest).
    """

    calibration: Calibration | None = None
    evaluation: Calibration | None = None
    metric: Metric | None = None
    target: Any = None
    notify: Callable[[str], None] | None = None

    @classmethod
    def build(cls, calibration: Calibration | None, evaluation: Calibration | None = None, **kwargs) -> "Context":
        if calibration is not None and evaluation is None and len(calibration) >= 10:
            calibration, evaluation = calibration.split(0.8)
        return cls(calibration=calibration, evaluation=evaluation, **kwargs)

    def say(self, message: str) -> None:
        logger.info("%s", message)
        if self.notify:
            self.notify(message)

    def collect(self, model: ir.Model, **options: Any):
        """Activation statistics of ``model`` over the calibration data (see ``onnxpress.statistics``)."""
        from onnxpress.statistics import collect

        if self.calibration is None:
            raise DataError("this pass needs calibration data")
        return collect(model, self.calibration, providers=self._providers(), **options)

    def outputs(self, model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> list[dict]:
        """The model's outputs on ``feeds`` (default: the evaluation data)."""
        feeds = list(feeds if feeds is not None else (self.evaluation or self.calibration or []))
        with runtime.Session(model, providers=self._providers()) as session:
            return session.run_all(feeds)

    def score(self, reference_outputs: list[dict], candidate: ir.Model) -> dict[str, float]:
        """``cosine``: the worst output's mean cosine vs the reference outputs on the evaluation
        data; ``metric_drop``: the task metric's drop, when a metric is set."""
        outputs = self.outputs(candidate)
        stats = compare(reference_outputs, outputs)
        result = {"cosine": min(s.cosine for s in stats.values())}
        if self.metric is not None:
            result["metric_drop"] = float(self.metric(reference_outputs)) - float(self.metric(outputs))
        return result

    def latency(self, model: ir.Model) -> float:
        """Median latency (ms) of one evaluation feed with the target's session options."""
        from onnxpress import targets
        from onnxpress.validate import measure

        source = self.evaluation or self.calibration
        feed = source.take(1)[0] if source is not None else feeds.random_feeds(model, 1)[0]
        return measure(model, feed, targets.load(self.target or "cpu")).median_ms

    def compare_layers(self, reference: ir.Model, candidate: ir.Model, samples: int = 4):
        from onnxpress.layerwise import compare_layers

        feeds = (self.evaluation or self.calibration).take(samples)
        return compare_layers(reference, candidate, feeds, providers=self._providers())

    def _providers(self):
        return ("CPUExecutionProvider",)


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
            "kernels": self.kernels,
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

    def to_dict(self) -> dict[str, Any]:
        return {"golden_source": self.golden_source, "golden_note": self.golden_note,
                "input_latency_ms": self.input_latency_ms, "records": [r.to_dict() for r in self.records]}

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
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


class Pipeline:
    """Runs passes in order on a copy of the model.

    Args:
        passes: pass instances (``onnx_ir`` passes; see ``onnxpress.passes``).
        check: after each pass run the ONNX checker and build an ONNX Runtime CPU session.
        golden_samples: inputs on which outputs are compared after each pass (0 disables the
            accuracy contract); calibration samples when given, else generated.
        lossless_rtol, lossless_atol: how far a ``lossless`` pass may move an output:
            ``max|diff| <= atol + rtol * max|reference|``.
        latency_runs: timed runs of the first golden input after each pass (a quick CPU
            latency for the per-pass table and plots; 0 disables). ``validate`` measures
            latency properly.
        calibration: default calibration source (a recipe's); ``run`` may override it.
        target: target profile name or path a recipe named (used by ``validate``).
    """

    def __init__(self, passes: Sequence[ir.passes.PassBase], *, check: bool = True, golden_samples: int = 4,
                 lossless_rtol: float = 1e-4, lossless_atol: float = 1e-5, latency_runs: int = 10,
                 calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
                 target: str | None = None) -> None:
        if golden_samples < 0:
            raise ValueError(f"pipeline: golden_samples must be >= 0, got {golden_samples}")
        for item in passes:
            if not isinstance(item, ir.passes.PassBase):
                raise TypeError(f"pipeline: {item!r} is not an onnx_ir pass")
        self.passes = list(passes)
        self.check = check
        if latency_runs < 0:
            raise ValueError(f"pipeline: latency_runs must be >= 0, got {latency_runs}")
        self.golden_samples = golden_samples
        self.latency_runs = latency_runs
        self.lossless_rtol = lossless_rtol
        self.lossless_atol = lossless_atol
        self.calibration = calibration
        self.target = target

    @classmethod
    def from_recipe(cls, path: str | os.PathLike) -> "Pipeline":
        """Build the pipeline a TOML recipe describes (see ``onnxpress.recipe``)."""
        from onnxpress.recipe import load_recipe

        return load_recipe(path).pipeline()

    @staticmethod
    def pass_name(item: ir.passes.PassBase) -> str:
        from onnxpress import registry

        for name, cls in registry.available().items():
            if type(item) is cls:
                return name
        return type(item).__name__

    def run(self, model: ir.Model, calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
            *, evaluation: Iterable[Mapping[str, np.ndarray]] | None = None, metric: Metric | None = None,
            progress: Progress | None = None) -> PipelineResult:
        """Run every pass on a copy of ``model``; the input model is left as it was.

        Args:
            calibration: feeds for passes that calibrate, and for the golden outputs.
            evaluation: held-out feeds for accuracy decisions (default: a fifth of calibration).
            metric: a task metric over a model's outputs on the evaluation feeds (higher is better).
            progress: called when a pass starts and ends, and with messages from long passes.
        """
        from onnxpress.io import load

        source = load(model)
        calibration = calibration if calibration is not None else self.calibration
        calib = from_feeds(calibration, name="calibration") if calibration is not None else None
        held_out = from_feeds(evaluation, name="evaluation") if evaluation is not None else None
        context = Context.build(calib, held_out, metric=metric, target=self.target)
        golden_feeds, golden_source, golden_note = self._golden_feeds(source, calib)
        golden_outputs = input_latency = None
        limited = sandbox.current() is not None
        if golden_feeds or limited:
            # Under limits the untrusted input model first runs, in a limited child, on every
            # feed the passes will give it: in-process runs of it are safe from then on.
            proof = [f for part in (calib, context.evaluation) if part is not None for f in part] if limited else []
            outputs, input_latency = self._run_checked(source, golden_feeds + proof, "the input model",
                                                       keep=len(golden_feeds))
            golden_outputs = outputs if golden_feeds else None
        current = source.clone()
        records = []
        total = len(self.passes)
        for index, item in enumerate(self.passes):
            name = self.pass_name(item)
            if progress:
                progress(ProgressEvent(index, total, name))
            if hasattr(item, "context"):
                item.context = context
            context.notify = (lambda message, i=index, n=name: progress(ProgressEvent(i, total, n, message=message))
                              ) if progress else None
            before = (node_count(current), _proto.weight_bytes(current), parameter_count(current))
            start = time.perf_counter()
            try:
                result = item(current)
            except PassError:
                raise
            except ir.passes.PreconditionError as err:
                raise PipelineError(f"pass '{name}' cannot run on this model: {err}") from err
            except OnnxpressError:
                raise
            except ir.passes.PassError as err:
                raise PipelineError(f"pass '{name}' failed: {err}") from err
            seconds = time.perf_counter() - start
            current = result.model
            record = PassRecord(
                name=name, seconds=seconds, modified=result.modified,
                nodes_before=before[0], nodes_after=node_count(current),
                bytes_before=before[1], bytes_after=_proto.weight_bytes(current),
                params_before=before[2], params_after=parameter_count(current),
                statistics=dict(getattr(item, "statistics", {}) or {}),
            )
            if self.check or golden_outputs is not None:
                outputs, record.latency_ms = self._run_checked(current, golden_feeds or [], f"pass '{name}'",
                                                               check=self.check)
                record.checked = self.check
                if golden_outputs is not None:
                    record.accuracy = self._compare(golden_outputs, outputs, name)
                    if getattr(item, "lossless", False):
                        self._enforce_lossless(name, record.accuracy)
            if self.check and any(n.op_type in runtime.QUANTIZATION_OPS for n in current.graph.all_nodes()):
                record.kernels = runtime.kernel_census(current)
            records.append(record)
            logger.info("pass %s: %.2fs, %d -> %d nodes", name, seconds, record.nodes_before, record.nodes_after)
            if progress:
                progress(ProgressEvent(index, total, name, record))
        return PipelineResult(current, records, golden_source, golden_note, input_latency)

    def _golden_feeds(self, model: ir.Model, calib: Calibration | None):
        if self.golden_samples == 0:
            return [], None, "accuracy not tracked (golden_samples = 0)"
        if calib is not None:
            feeds = calib.take(self.golden_samples)
            for i, feed in enumerate(feeds):
                feeds.check_feed(model, feed, f"{calib.name}: sample {i}")
            return feeds, "calibration", f"{len(feeds)} calibration samples"
        try:
            feeds = feeds.random_feeds(model, self.golden_samples, seed=0)
        except DataError as err:
            logger.warning("accuracy not tracked: %s", err)
            return [], None, f"accuracy not tracked: {err}"
        return feeds, "generated", f"{len(feeds)} inputs generated from the signature"

    def _run_checked(self, model: ir.Model, feeds: list, who: str, *, check: bool = True,
                     keep: int | None = None) -> tuple[list[dict], float | None]:
        try:
            return runtime.run_limited(model, feeds, what=f"{who}: ONNX Runtime session", keep=keep,
                                       latency_runs=self.latency_runs, check=check)
        except runtime.CheckFailed as err:
            raise PipelineError(f"{who} fails the ONNX checker: {err}") from err
        except runtime.ort_errors() as err:
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
