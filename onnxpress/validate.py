"""``validate``: does the candidate still work on the target? A verdict a CI job can gate on.

The reference and the candidate run on the same inputs with the target's providers and session
options. The verdict fails on any broken criterion, each named: accuracy against the target's
tolerances (cosine, max-abs, top-1 agreement, a task metric's drop), NaN/Inf the reference does
not have, nodes the target's provider has no kernel for (no silent CPU fallback), a session
that cannot be built, and the latency and size budgets.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, feeds as feeds_, kernels, modelinfo, runtime
from onnxpress.calibration import from_feeds
from onnxpress.errors import DataError, ProviderError
from onnxpress.metrics import ErrorStats, compare, top1_agreement
from onnxpress.targets import Target, load as load_target

logger = logging.getLogger(__name__)

Metric = Callable[[Sequence[Mapping[str, np.ndarray]]], float]

# Generated inputs when no data is given: enough to compare, few enough to be quick.
_GENERATED_SAMPLES = 8


@dataclass
class Latency:
    """Latency of one model on one feed, in milliseconds, after warm-up."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidationReport:
    """What ``validate`` found; ``passed`` is the verdict, ``failures`` names every broken criterion."""

    target: str
    providers: list[str]
    passed: bool
    failures: list[str]
    data_source: str
    samples: int
    metrics: dict[str, ErrorStats] = field(default_factory=dict)
    top1_agreement: float | None = None
    task_metric: dict[str, float] | None = None
    latency: dict[str, Latency] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pipeline: dict[str, Any] | None = None
    layerwise: dict[str, Any] | None = None
    hardware: dict[str, Any] | None = None
    bundle: dict[str, Any] | None = None

    @property
    def speedup(self) -> float | None:
        if "reference" in self.latency and "candidate" in self.latency and self.latency["candidate"].median_ms > 0:
            return self.latency["reference"].median_ms / self.latency["candidate"].median_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "providers": self.providers, "passed": self.passed,
            "failures": self.failures, "data_source": self.data_source, "samples": self.samples,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "top1_agreement": self.top1_agreement, "task_metric": self.task_metric,
            "latency": {k: v.to_dict() for k, v in self.latency.items()}, "speedup": self.speedup,
            "size": self.size, "peak_memory": self.peak_memory, "unplaced": self.unplaced,
            "notes": self.notes, "pipeline": self.pipeline, "layerwise": self.layerwise,
            "hardware": self.hardware, "bundle": self.bundle,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(quantity, reference, candidate) rows: size, latency, peak memory, task metric."""
        rows = []
        if self.size:
            rows.append(("size", _mb(self.size.get("reference")), _mb(self.size.get("candidate"))))
        if self.latency:
            rows.append(("latency median", _ms(self.latency.get("reference")), _ms(self.latency.get("candidate"))))
            rows.append(("latency p90", _ms(self.latency.get("reference"), "p90_ms"),
                         _ms(self.latency.get("candidate"), "p90_ms")))
        if self.peak_memory:
            rows.append(("session peak memory", _mb(self.peak_memory.get("reference")),
                         _mb(self.peak_memory.get("candidate"))))
        if self.task_metric:
            name = self.task_metric.get("name", "metric")
            reference = self.task_metric["reference"]
            rows.append((str(name), "-" if reference is None else f"{reference:.4f}",
                         f"{self.task_metric['candidate']:.4f}"))
        return rows

    def to_markdown(self) -> str:
        lines = [f"# Validation on `{self.target}`: {'PASSED' if self.passed else 'FAILED'}", ""]
        if self.failures:
            lines += ["Failed criteria:", ""] + [f"- {f}" for f in self.failures] + [""]
        lines += [f"Data: {self.data_source} ({self.samples} feeds). Providers: {', '.join(self.providers)}.", ""]
        rows = self.summary_rows()
        if rows:
            lines += ["| | reference | candidate |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in rows] + [""]
        if self.metrics:
            lines += ["| output | cosine | max-abs | mean-abs | p99-abs | NaN/Inf |", "|---|---|---|---|---|---|"]
            for name, s in self.metrics.items():
                lines.append(f"| {name} | {s.cosine:.6f} | {s.max_abs:.3g} | {s.mean_abs:.3g} | {s.p99_abs:.3g} | {s.nonfinite} |")
            lines.append("")
        if self.top1_agreement is not None:
            lines += [f"Top-1 agreement: {self.top1_agreement:.4f}", ""]
        if self.layerwise and self.layerwise.get("first_jump"):
            jump = self.layerwise["first_jump"]
            lines += [f"Layer-wise: the error jumps at `{jump['tensor']}` ({jump['op_type']} "
                      f"`{jump['node']}`, cosine {jump['cosine']:.6f}): {self.layerwise['reason']}.", ""]
        if self.pipeline:
            lines += ["| pass | time | nodes | weights | max-abs | cosine |", "|---|---|---|---|---|---|"]
            for r in self.pipeline["records"]:
                worst = [v for v in (r["accuracy"] or {}).values()]
                lines.append(f"| {r['name']} | {r['seconds']:.2f}s | {r['nodes_before']} -> {r['nodes_after']} | "
                             f"{r['bytes_before']} -> {r['bytes_after']} | "
                             + (f"{max(w['max_abs'] for w in worst):.3g} | {min(w['cosine'] for w in worst):.6f} |"
                                if worst else "- | - |"))
            lines.append("")
        if self.bundle:
            lines += [f"Edge bundle: `{self.bundle['folder']}` (model.ort {self.bundle['model_bytes']} bytes, "
                      "required_operators.config).", ""]
        if self.hardware:
            q = self.hardware["quantization_defaults"]
            lines += [f"Host CPU: {self.hardware['cpu']}; int8 defaults: activations {q['activation_type']}, "
                      f"weights {q['weight_type']}, reduce_range {q['reduce_range']} ({q['reason']}).", ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self) -> str:
        """One self-contained HTML page: verdict, tables and plots (see ``onnxpress.report``)."""
        from onnxpress.report import render_html

        return render_html(self)

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.html`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for suffix, text in (("json", self.to_json()), ("md", self.to_markdown()), ("html", self.to_html())):
            path = out / f"report.{suffix}"
            staged = out / f".report.{suffix}.tmp"
            staged.write_text(text, encoding="utf-8")
            os.replace(staged, path)
            paths[suffix] = path
        return paths


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.3f} MB"


def _ms(latency: Latency | None, key: str = "median_ms") -> str:
    return "-" if latency is None else f"{getattr(latency, key):.3f} ms"


def validate(model: Any, reference: Any = None, *, target: str | os.PathLike | Target = "cpu",
             data: Iterable[Mapping[str, np.ndarray]] | None = None, metric: Metric | None = None,
             metric_name: str = "metric", measure_latency: bool = True, measure_memory: bool = True,
             allow_missing_provider: bool = False, golden: str | os.PathLike | None = None,
             layerwise: bool = False, bundle: str | os.PathLike | None = None) -> ValidationReport:
    """Validate ``model`` (the candidate) against ``reference`` on ``target``.

    Args:
        model: the candidate (anything ``onnxpress.load`` accepts).
        reference: the model it must agree with; without one only runtime criteria are judged.
        target: a built-in profile name or a profile file.
        data: feeds to compare on; without data, inputs are generated from the signature and
            the accuracy verdict is only a consistency check (the report says so).
        metric: a task metric over the list of a model's outputs (higher is better); its drop
            from reference to candidate is held to the profile's ``metric_drop``.
        measure_latency, measure_memory: turn the timing and memory measurements off.
        allow_missing_provider: report a missing provider as a failed criterion instead of
            raising ``ProviderError``.
        golden: a file ``save_golden`` wrote: its inputs are the data and its outputs the
            reference (no reference model needed).
        layerwise: also compare every intermediate tensor the two models share and name the
            first layer where the error jumps.
        bundle: where to write the deployment bundle of a target that asks for the ORT format
            (the edge profile); skipped when omitted.
    """
    from onnxpress.io import load

    profile = load_target(target)
    candidate = load(model)
    ref_model = load(reference) if reference is not None else None
    report = ValidationReport(target=profile.name, providers=list(profile.providers), passed=False,
                              failures=[], data_source="", samples=0)
    missing = [p for p in profile.providers if p not in runtime.available_providers()]
    if missing:
        message = (f"target '{profile.name}' needs {', '.join(missing)}, which this onnxruntime build "
                   f"does not have (available: {', '.join(runtime.available_providers())})")
        if not allow_missing_provider:
            raise ProviderError(message)
        report.failures.append(message)
        return report

    golden_outputs = None
    if golden is not None:
        if data is not None:
            raise DataError("validate: give either data or a golden file, not both")
        feeds, golden_outputs = load_golden(golden)
        report.data_source = f"golden file {Path(golden).name}"
    elif data is not None:
        feeds = list(from_feeds(data, name="data"))
        report.data_source = "given data"
    else:
        feeds = feeds_.random_feeds(candidate, _GENERATED_SAMPLES, seed=1)
        report.data_source = "inputs generated from the signature"
        report.notes.append("no data given: inputs were generated, so the accuracy verdict is only a "
                            "consistency check between the two models, not a task accuracy")
    for i, feed in enumerate(feeds):
        feeds_.check_feed(candidate, feed, f"data: sample {i}")
    report.samples = len(feeds)

    primary = profile.providers[0]
    session_options = _session_options(profile)
    unreadable = None
    try:
        report.unplaced = [u.describe() for u in kernels.unplaced_nodes(candidate, primary)]
    except kernels.RegistryUnavailable as err:
        unreadable = err
    candidate_outputs = _run(candidate, feeds, session_options, "candidate", report)
    if unreadable is not None:
        report.notes.append(f"{unreadable}: node placement was read from a profiled run instead")
        if candidate_outputs is not None and feeds:  # the limited run proved these feeds safe
            report.unplaced = _unplaced_at_run_time(candidate, feeds[0], primary, session_options, report)
    if report.unplaced:
        count = len(report.unplaced)
        shown = "; ".join(report.unplaced[:5]) + (f"; and {count - 5} more" if count > 5 else "")
        report.failures.append(f"{count} node(s) cannot run on {primary}: {shown}")
    reference_outputs = _run(ref_model, feeds, session_options, "reference", report) if ref_model else None
    if golden_outputs is not None:
        reference_outputs = golden_outputs

    if candidate_outputs is not None and reference_outputs is not None:
        _judge_accuracy(report, profile, reference_outputs, candidate_outputs, metric, metric_name)
    elif candidate_outputs is not None and metric is not None:  # nothing to drop from: report it
        report.task_metric = {"name": metric_name, "reference": None,
                              "candidate": float(metric(candidate_outputs)), "drop": None}
    if layerwise and ref_model is not None and candidate_outputs is not None and reference_outputs is not None:
        from onnxpress.layerwise import compare_layers

        result = compare_layers(ref_model, candidate, feeds, cosine_tolerance=profile.cosine,
                                providers=profile.provider_list())
        report.layerwise = result.to_dict()
        if result.first_jump is not None and report.failures:
            report.notes.append(f"layer-wise: the error jumps at '{result.first_jump.tensor}' "
                                f"({result.first_jump.op_type} '{result.first_jump.node}')")
    if "CPUExecutionProvider" == primary:
        from onnxpress.hardware import cpu_capabilities, quantization_defaults

        caps = cpu_capabilities()
        report.hardware = {"cpu": caps.describe(), "capabilities": caps.to_dict(),
                           "quantization_defaults": quantization_defaults(caps).to_dict()}
    if profile.ort_format and bundle is not None and candidate_outputs is not None:
        from onnxpress.bundle import write_edge_bundle

        written = write_edge_bundle(candidate, bundle, optimization=profile.optimization, feeds=feeds[:4])
        report.bundle = written.to_dict()
        if written.min_cosine is not None and written.min_cosine < profile.cosine:
            report.failures.append(f"the ORT-format model disagrees with the ONNX model (cosine "
                                   f"{written.min_cosine:.6f})")
    if candidate_outputs is not None and measure_latency and feeds:
        report.latency["candidate"] = measure(candidate, feeds[0], profile)
        if ref_model is not None and reference_outputs is not None:
            report.latency["reference"] = measure(ref_model, feeds[0], profile)
        if profile.latency_ms > 0 and report.latency["candidate"].median_ms > profile.latency_ms:
            report.failures.append(f"latency {report.latency['candidate'].median_ms:.3f} ms is over the "
                                   f"budget of {profile.latency_ms:g} ms")
    report.size["candidate"] = modelinfo.saved_size(candidate)
    if ref_model is not None:
        report.size["reference"] = modelinfo.saved_size(ref_model)
    if profile.size_mb > 0 and report.size["candidate"] > profile.size_mb * 2**20:
        report.failures.append(f"size {report.size['candidate'] / 2**20:.2f} MB is over the budget of "
                               f"{profile.size_mb:g} MB")
    if measure_memory and candidate_outputs is not None and feeds:
        report.peak_memory["candidate"] = session_peak_memory(candidate, feeds[0], profile)
        if ref_model is not None and reference_outputs is not None:
            report.peak_memory["reference"] = session_peak_memory(ref_model, feeds[0], profile)
    report.passed = not report.failures
    return report


def _session_options(profile: Target) -> dict[str, Any]:
    return dict(providers=profile.provider_list(), threads=profile.intra_op_threads,
                inter_threads=profile.inter_op_threads, optimization=profile.optimization)


def _unplaced_at_run_time(model: ir.Model, feed: Mapping[str, np.ndarray], primary: str, options: dict,
                          report: ValidationReport) -> list[str]:
    """Nodes a profiled run put on another provider than ``primary``. Shape computations (all
    outputs int64) that ONNX Runtime keeps on the CPU by design are noted, not counted."""
    placed = runtime.placement(model, feed, **options)
    unplaced, shape_ops = [], {}
    for p in placed:
        if p.provider == primary or p.op_type.startswith("Memcpy"):
            continue
        if p.output_types and all(t == "int64" for t in p.output_types):
            shape_ops[p.op_type] = shape_ops.get(p.op_type, 0) + 1
            continue
        unplaced.append(f"{p.node} ({p.op_type}): ran on {p.provider}")
    if shape_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(shape_ops.items()))
        report.notes.append(f"shape computations ran on the CPU, as ONNX Runtime places them: {ops}")
    return unplaced


def _run(model: ir.Model, feeds: list, options: dict, who: str, report: ValidationReport):
    try:  # under limits in a limited child: later in-process runs on these feeds are then safe
        return runtime.run_limited(model, feeds, what=f"the {who}: ONNX Runtime session", **options)[0]
    except (ProviderError, *runtime.ort_errors()) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        report.failures.append(f"the {who} cannot be run on {', '.join(report.providers)}: {text}")
        return None


def _judge_accuracy(report: ValidationReport, profile: Target, reference: list, candidate: list,
                    metric: Metric | None, metric_name: str) -> None:
    try:
        report.metrics = compare(reference, candidate)
    except KeyError as err:
        report.failures.append(f"the candidate has no output {err}")
        return
    except ValueError as err:
        report.failures.append(f"an output changed shape: {err}")
        return
    for name, stats in report.metrics.items():
        if stats.nonfinite > stats.ref_nonfinite:
            report.failures.append(f"output '{name}': {stats.nonfinite} NaN/Inf values (reference: "
                                   f"{stats.ref_nonfinite})")
        cosine, max_abs = profile.tolerance(name, "cosine"), profile.tolerance(name, "max_abs")
        if stats.cosine < cosine:
            report.failures.append(f"output '{name}': cosine {stats.cosine:.6f} < {cosine:g}")
        if max_abs > 0 and stats.max_abs > max_abs:
            report.failures.append(f"output '{name}': max-abs error {stats.max_abs:.3g} > {max_abs:g}")
    first = next(iter(reference[0]))
    if profile.top1_agreement > 0 and _class_scores(reference, first, report):
        report.top1_agreement = top1_agreement(reference, candidate, first)
        if report.top1_agreement < profile.top1_agreement:
            report.failures.append(f"top-1 agreement {report.top1_agreement:.4f} < {profile.top1_agreement:g}")
    if metric is not None:
        ref_value, cand_value = float(metric(reference)), float(metric(candidate))
        report.task_metric = {"name": metric_name, "reference": ref_value, "candidate": cand_value,
                              "drop": ref_value - cand_value}
        if ref_value - cand_value > profile.metric_drop:
            report.failures.append(f"{metric_name} dropped by {ref_value - cand_value:.4f} "
                                   f"({ref_value:.4f} -> {cand_value:.4f}) > {profile.metric_drop:g}")


def _class_scores(outputs: list, name: str, report: ValidationReport) -> bool:
    """Whether an output looks like class scores (rank 2, several columns, rows not unit-norm).

    Rows of unit L2 norm are embeddings (sentence encoders normalise them): their arg-max means
    nothing, so top-1 agreement is not judged there, and the report says so.
    """
    first = np.asarray(outputs[0][name])
    if first.ndim != 2 or first.shape[-1] < 2:
        return False
    norms = np.concatenate([np.linalg.norm(np.asarray(o[name], np.float64), axis=-1) for o in outputs])
    if np.allclose(norms, 1.0, atol=1e-3):
        report.notes.append(f"output '{name}' has unit-norm rows (embeddings): top-1 agreement not judged")
        return False
    return True


def measure(model: ir.Model, feed: Mapping[str, np.ndarray], profile: Target) -> Latency:
    """Median and p90 latency: warm-up, then runs until both ``min_runs`` and ``min_seconds``."""
    with runtime.Session(model, **_session_options(profile)) as session:
        for _ in range(profile.warmup):
            session.run(feed)
        times = []
        started = time.perf_counter()
        while len(times) < profile.max_runs and (len(times) < profile.min_runs
                                                 or time.perf_counter() - started < profile.min_seconds):
            tick = time.perf_counter()
            session.run(feed)
            times.append((time.perf_counter() - tick) * 1e3)
    ordered = sorted(times)
    return Latency(median_ms=statistics.median(ordered), p90_ms=float(np.quantile(ordered, 0.9)),
                   mean_ms=statistics.fmean(ordered), runs=len(ordered))


_MEMORY_PROBE = r"""
import sys, numpy as np, onnxruntime as ort
def status(key):
    # VmHWM (peak resident) belongs to this process image; ru_maxrss would carry the
    # parent's peak over fork and exec.
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
folder, threads, inter, level = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
feed = dict(np.load(folder + '/feed.npz'))
before = status('VmRSS')
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = inter
options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
options.log_severity_level = 3
import json
providers = json.loads(sys.argv[5])
session = ort.InferenceSession(folder + '/model.onnx', options, providers=[p for p, _ in providers],
                               provider_options=[o for _, o in providers])
session.run(None, feed)
peak = status('VmHWM')
print(max(0, peak - before))
"""


def session_peak_memory(model: ir.Model, feed: Mapping[str, np.ndarray], profile: Target) -> int:
    """Peak resident host memory (bytes) a session adds: built and run once in a fresh process.

    On a GPU provider this is host memory (the CUDA context and libraries are most of it), not
    device memory.
    """
    from onnxpress.io import save

    with tempfile.TemporaryDirectory(prefix="onnxpress-memory-") as folder:
        save(model, Path(folder) / "model.onnx")
        np.savez(Path(folder) / "feed.npz", **{k: np.asarray(v) for k, v in feed.items()})
        level = runtime._OPT_LEVELS[profile.optimization]
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, folder, str(profile.intra_op_threads),
             str(profile.inter_op_threads), level, json.dumps(profile.provider_list())],
            capture_output=True, text=True, timeout=600, cwd=folder)
    if result.returncode != 0:
        logger.warning("peak memory not measured: %s", result.stderr.strip().splitlines()[-1:] or "probe failed")
        return 0
    return int(result.stdout.strip().splitlines()[-1])


_GOLDEN_META = "__onnxpress_golden__"


def save_golden(model: Any, data: Iterable[Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Run ``model`` on ``data`` (CPU) and store inputs and outputs in one ``.npz`` for later checks."""
    from onnxpress.io import load

    model = load(model)
    feeds = list(from_feeds(data, name="data"))
    for i, feed in enumerate(feeds):
        feeds_.check_feed(model, feed, f"data: sample {i}")
    outputs = runtime.run_model(model, feeds)
    arrays: dict[str, np.ndarray] = {}
    for i, (feed, output) in enumerate(zip(feeds, outputs)):
        arrays.update({f"in{i}:{k}": np.asarray(v) for k, v in feed.items()})
        arrays.update({f"out{i}:{k}": v for k, v in output.items()})
    arrays[_GOLDEN_META] = np.array(json.dumps({"samples": len(feeds), "format": 1}))
    target = Path(path)
    staged = target.with_name(f".{target.name}.tmp.npz")
    np.savez_compressed(staged, **arrays)
    os.replace(staged, target)
    return target


def load_golden(path: str | os.PathLike) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """The (inputs, outputs) a golden file holds."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            if _GOLDEN_META not in data.files:
                raise DataError(f"{source}: not a golden file written by onnxpress (no {_GOLDEN_META})")
            count = json.loads(str(data[_GOLDEN_META]))["samples"]
            feeds: list[dict] = [{} for _ in range(count)]
            outputs: list[dict] = [{} for _ in range(count)]
            for key in data.files:
                if key == _GOLDEN_META:
                    continue
                kind, _, name = key.partition(":")
                index = int(kind[3:] if kind.startswith("out") else kind[2:])
                (outputs if kind.startswith("out") else feeds)[index][name] = data[key]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{source}: cannot read the golden file ({err})") from err
    return feeds, outputs
