"""``validate``: does the candidate still work on the target? A verdict a CI job can gate on.

The reference and the candidate run on the same inputs through the target's ``Runner``. The
verdict fails on any broken criterion, each named: accuracy against the target's tolerances
(cosine, max-abs, top-1 agreement, a task metric's drop; an output of one value per row, where a
cosine is blind, by its relative error against ``1 - cosine``: see ``onnxpress.metrics``), NaN/Inf
the reference does not have, nodes ONNX Runtime placed on another provider than the target's
(read from a built session), a session that cannot be built, and the latency and size budgets.
``validate`` is a short list of small checks, each adding to the report.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, _weights, kernels, modelinfo, runtime
from onnxpress.calibration import from_feeds
from onnxpress.errors import DataError, ProviderError
from onnxpress.feeds import InputShapes, check_feed, plan_inputs, random_feeds
from onnxpress.metrics import RELATIVE_ERROR, compare, top1_agreement
from onnxpress.progress import Report, track, within
from onnxpress.report import ValidationReport
from onnxpress.targets import Target, load as load_target

logger = logging.getLogger(__name__)

Metric = Callable[[Sequence[Mapping[str, np.ndarray]]], float]

# Generated inputs when no data is given: enough to compare, few enough to be quick.
_GENERATED_SAMPLES = 8
# Outputs of one model past this size wait on disk (memory-mapped) while the other model runs.
OUTPUTS_IN_MEMORY_BYTES = 256 * 2**20


def validate(model: Any, reference: Any = None, *, target: str | os.PathLike | Target = "cpu",
             data: Iterable[Mapping[str, np.ndarray]] | None = None, metric: Metric | None = None,
             metric_name: str = "metric", measure_latency: bool = True, measure_memory: bool = True,
             allow_missing_provider: bool = False, golden: str | os.PathLike | None = None,
             layerwise: bool = False, bundle: str | os.PathLike | None = None,
             data_source: str | None = None, input_shapes: InputShapes | None = None,
             progress: Report | None = None) -> ValidationReport:
    """Validate ``model`` (the candidate) against ``reference`` on ``target``.

    Args:
        model: the candidate (anything ``onnxpress.load`` accepts).
        reference: the model it must agree with; without one only runtime criteria are judged.
        target: a built-in profile name, a profile file or a loaded ``Target``.
        data: feeds to compare on: data no pass was tuned on. Without data, inputs are generated
            from the signature and the accuracy verdict is only a consistency check (the
            report says so).
        metric: a task metric over the list of a model's outputs (higher is better); its drop
            from reference to candidate is held to the profile's ``metric_drop``.
        measure_latency, measure_memory: turn the timing and memory measurements off.
        allow_missing_provider: report a missing provider as a failed criterion instead of
            raising ``ProviderError``.
        golden: a file ``golden.save_golden`` wrote: its inputs are the data and its outputs
            the reference (no reference model needed).
        layerwise: also compare every intermediate tensor the two models share and name the
            first layer where the error jumps.
        bundle: where to write the deployment bundle of a target that asks for the ORT format
            (the edge profile); skipped when omitted.
        data_source: what the report says judged it (default: "given data").
        input_shapes: shapes of generated inputs by input name (``{"images": [1, 3, 640, 640]}``);
            without them unknown sizes are found by trial runs (``feeds.plan_inputs``) and the
            report notes the sizes used. Ignored when data or a golden file is given.
        progress: told how far the long measurements got (``progress.Step``: latency runs of
            each model, layer-wise samples, peak-memory probes).
    """
    from onnxpress.io import load

    profile = load_target(target)
    candidate = load(model)
    ref_model = load(reference) if reference is not None else None
    report = ValidationReport(target=profile.name, providers=list(profile.providers), passed=False,
                              failures=[], data_source="", samples=0)
    if not _providers_available(report, profile, allow_missing_provider):
        return report
    runner = runtime.Runner(profile)
    feeds, golden_outputs = _feeds(report, candidate, data, golden, data_source,
                                   generate=_Generate(candidate if ref_model is None else ref_model, runner,
                                                     input_shapes))
    candidate_outputs = _run_candidate(report, runner, candidate, feeds)
    reference_outputs = golden_outputs
    if ref_model is not None:
        reference_outputs = _run(report, runner, ref_model, feeds, "reference")
    if candidate_outputs is not None and reference_outputs is not None:
        _judge_accuracy(report, profile, reference_outputs, candidate_outputs, metric, metric_name)
    elif candidate_outputs is not None and metric is not None:  # nothing to drop from: report it
        report.task_metric = {"name": metric_name, "reference": None,
                              "candidate": float(metric(candidate_outputs)), "drop": None}
    ran = {"candidate": (candidate, candidate_outputs is not None)}
    if ref_model is not None:
        ran["reference"] = (ref_model, reference_outputs is not None)
    if layerwise and ref_model is not None and candidate_outputs is not None and reference_outputs is not None:
        _layerwise(report, runner, ref_model, candidate, feeds, progress)
    if runner.settings.primary == "CPUExecutionProvider":
        _hardware(report, profile)
    if profile.ort_format and bundle is not None and candidate_outputs is not None:
        _bundle(report, runner, candidate, bundle, feeds)
    if measure_latency and feeds:
        _latency(report, runner, ran, feeds[0], progress)
    _size(report, profile, ran)
    _models(report, ran)
    if measure_memory and feeds:
        for who, (item, ok) in track(ran.items(), progress, "peak memory", unit="models"):
            if ok:
                report.peak_memory[who] = runner.peak_memory(item, feeds[0])
    report.passed = not report.failures
    return report


def _providers_available(report: ValidationReport, profile: Target, allow_missing: bool) -> bool:
    missing = [p for p in profile.providers if p not in runtime.available_providers()]
    if not missing:
        return True
    message = (f"target '{profile.name}' needs {', '.join(missing)}, which this onnxruntime build "
               f"does not have (available: {', '.join(runtime.available_providers())})")
    if not allow_missing:
        raise ProviderError(message)
    report.failures.append(message)
    return False


class _Generate(NamedTuple):
    """How to generate inputs: sizes are tried on ``model`` (the reference when there is one:
    a broken candidate must fail the verdict, not the input generation)."""

    model: ir.Model
    runner: runtime.Runner
    input_shapes: InputShapes | None


def _feeds(report: ValidationReport, model: ir.Model, data, golden, data_source: str | None,
           generate: _Generate):
    """The feeds to judge on, and the golden outputs when a golden file gives them."""
    golden_outputs = None
    if golden is not None:
        from onnxpress.golden import load_golden

        if data is not None:
            raise DataError("validate: give either data or a golden file, not both")
        feeds, golden_outputs = load_golden(golden)
        report.data_source = f"golden file {Path(golden).name}"
    elif data is not None:
        feeds = list(from_feeds(data, name="data"))
        report.data_source = data_source or "given data"
    else:
        plan = plan_inputs(generate.model, input_shapes=generate.input_shapes, runner=generate.runner)
        feeds = random_feeds(model, _GENERATED_SAMPLES, seed=1, plan=plan)
        report.data_source = "inputs generated from the signature"
        report.notes.append("no data given: inputs were generated, so the accuracy verdict is only a "
                            "consistency check between the two models, not a task accuracy")
        report.notes.extend(plan.notes)
    for i, feed in enumerate(feeds):
        check_feed(model, feed, f"data: sample {i}")
    report.samples = len(feeds)
    return feeds, golden_outputs


def _run_candidate(report: ValidationReport, runner: runtime.Runner, model: ir.Model, feeds: list):
    """The candidate's outputs; where ONNX Runtime placed its nodes, from the same session.

    Nodes ONNX Runtime placed on another provider than the target's first are failures; shape
    computations (all outputs int64) that it keeps on the CPU by design are noted. When no
    session can be built, the kernel registry names the nodes the provider has no kernel for.
    """
    result = _run(report, runner, model, feeds, "candidate", placement=bool(feeds))
    primary = runner.settings.primary
    if result is None:
        try:
            unplaced = [u.describe() for u in kernels.unplaced_nodes(model, primary)]
        except kernels.RegistryUnavailable as err:
            report.notes.append(f"{err}: nodes without a kernel could not be named")
            unplaced = []
        _fail_unplaced(report, unplaced, primary)
        return None
    outputs, placed = result
    unplaced, shape_ops = [], {}
    for p in placed or []:
        if p.provider == primary or p.op_type.startswith("Memcpy"):
            continue
        if p.output_types and all(t == "int64" for t in p.output_types):
            shape_ops[p.op_type] = shape_ops.get(p.op_type, 0) + 1
            continue
        unplaced.append(f"{p.node} ({p.op_type}): ran on {p.provider}")
    if shape_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(shape_ops.items()))
        report.notes.append(f"shape computations ran on the CPU, as ONNX Runtime places them: {ops}")
    _fail_unplaced(report, unplaced, primary)
    return outputs


def _fail_unplaced(report: ValidationReport, unplaced: list[str], primary: str) -> None:
    report.unplaced = unplaced
    if unplaced:
        count = len(unplaced)
        shown = "; ".join(unplaced[:5]) + (f"; and {count - 5} more" if count > 5 else "")
        report.failures.append(f"{count} node(s) cannot run on {primary}: {shown}")


def _run(report: ValidationReport, runner: runtime.Runner, model: ir.Model, feeds: list, who: str, *,
         placement: bool = False):
    """Outputs (and placement when asked) of one model, or None with the failure recorded."""
    try:  # under limits in the worker: later in-process runs on these feeds are then safe
        result = runner.run(model, feeds, placement=placement, what=f"the {who}: ONNX Runtime session")
    except (ProviderError, runtime.RunFailed, runtime.CheckFailed, *runtime.ort_errors()) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        report.failures.append(f"the {who} cannot be run on {', '.join(report.providers)}: {text}")
        return None
    segment_bytes = runner.segment_bytes(model)
    if segment_bytes is not None:
        report.notes.append(
            f"the {who} ran piecewise: its {_proto.weight_bytes(model) / 2**20:.0f} MB of weights exceed the "
            f"target's session_memory_mb ({runner.session_bytes / 2**20:.0f} MB), so one ONNX Runtime session "
            f"per segment of at most {segment_bytes / 2**20:.0f} MB ran at a time (its latency is the sum of "
            "the segments')")
    outputs = result.outputs
    held = sum(np.asarray(a).nbytes for values in outputs for a in values.values())
    if held > OUTPUTS_IN_MEMORY_BYTES:
        outputs = _weights.park(outputs)
        report.notes.append(f"the {who}'s outputs ({held / 2**20:.0f} MB) were kept on disk while the other "
                            "model ran")
    return (outputs, result.placement) if placement else outputs


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
        if stats.measure == RELATIVE_ERROR:  # one value per row: a cosine cannot see it move
            if stats.score < cosine:
                report.failures.append(
                    f"output '{name}': relative error {stats.rel_max:.3g} > {1.0 - cosine:.3g} (max-abs error "
                    f"{stats.max_abs:.3g} / largest |reference| {stats.ref_max_abs:.3g}; an output of one value "
                    f"per row is judged by its relative error, held to 1 - the cosine tolerance {cosine:g})")
        elif stats.cosine < cosine:
            report.failures.append(f"output '{name}': cosine {stats.cosine:.6f} < {cosine:g}")
        elif stats.group_cosine < cosine:  # a channel group of another scale, hidden by the rest
            report.failures.append(f"output '{name}' {stats.worst_group}: cosine {stats.group_cosine:.6f} < "
                                   f"{cosine:g} (channels of a different scale than the rest of the output)")
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


def _layerwise(report: ValidationReport, runner: runtime.Runner, reference: ir.Model, candidate: ir.Model,
               feeds: list, progress: Report | None = None) -> None:
    from onnxpress.layerwise import compare_layers

    result = compare_layers(reference, candidate, feeds, cosine_tolerance=runner.target.cosine, runner=runner,
                            progress=progress)
    report.layerwise = result.to_dict()
    if result.first_jump is not None and report.failures:
        report.notes.append(f"layer-wise: the error jumps at '{result.first_jump.tensor}' "
                            f"({result.first_jump.op_type} '{result.first_jump.node}')")


def _hardware(report: ValidationReport, profile: Target) -> None:
    """The host's CPU, and the int8 defaults the target's ``isa`` gives quantization."""
    from onnxpress.hardware import cpu_capabilities, quantization_defaults_for

    caps = cpu_capabilities()
    report.hardware = {"cpu": caps.describe(), "capabilities": caps.to_dict(), "isa": profile.isa,
                       "quantization_defaults": quantization_defaults_for(profile.isa).to_dict()}


def _bundle(report: ValidationReport, runner: runtime.Runner, candidate: ir.Model, folder, feeds: list) -> None:
    from onnxpress.bundle import write_edge_bundle

    written = write_edge_bundle(candidate, folder, runner=runner, feeds=feeds[:4])
    report.bundle = written.to_dict()
    if written.min_cosine is not None and written.min_cosine < runner.target.cosine:
        report.failures.append(f"the ORT-format model disagrees with the ONNX model (cosine "
                               f"{written.min_cosine:.6f})")


def _latency(report: ValidationReport, runner: runtime.Runner, ran: dict, feed, progress: Report | None = None) -> None:
    for who, (item, ok) in ran.items():
        if ok:
            report.latency[who] = runner.latency(item, feed, progress=within(progress, who))
    budget = runner.target.latency_ms
    if "candidate" in report.latency and budget > 0 and report.latency["candidate"].median_ms > budget:
        report.failures.append(f"latency {report.latency['candidate'].median_ms:.3f} ms is over the "
                               f"budget of {budget:g} ms")


def _models(report: ValidationReport, ran: dict) -> None:
    """What each model is made of, for the report's before/after section: nodes, ops, parameters
    and weight bytes by dtype (as ``onnxpress inspect`` counts them), and each layer's precision."""
    from onnxpress.summary import inspect

    for who in ("reference", "candidate"):
        if who in ran:
            model = ran[who][0]
            summary = inspect(model, top=0)
            report.models[who] = {"nodes": summary.nodes, "parameters": summary.parameters,
                                  "weight_bytes": sum(summary.bytes_by_dtype.values()), "ops": summary.ops,
                                  "bytes_by_dtype": summary.bytes_by_dtype, "params_by_dtype": summary.params_by_dtype,
                                  "layers": modelinfo.layer_precisions(model)}


def _size(report: ValidationReport, profile: Target, ran: dict) -> None:
    for who, (item, _) in ran.items():
        report.size[who] = modelinfo.saved_size(item)
    if profile.size_mb > 0 and report.size["candidate"] > profile.size_mb * 2**20:
        report.failures.append(f"size {report.size['candidate'] / 2**20:.4g} MB is over the budget of "
                               f"{profile.size_mb:g} MB")
    shipped = (report.bundle or {}).get("model_bytes")
    if profile.size_mb > 0 and shipped and shipped > profile.size_mb * 2**20:  # what ships is model.ort
        report.failures.append(f"the bundle's model.ort, {shipped / 2**20:.4g} MB, is over the budget of "
                               f"{profile.size_mb:g} MB")
