"""Accuracy recovery after low-rank factorization and pruning: none, closed-form compensation,
compensation + distillation, and onnxsim's nearest methods, side by side in one run.

For each model and compression setting the rows are:

- ``no recovery``: the onnxpress pass with ``compensate=False``;
- ``compensation``: the pass with its default ``compensate="auto"``: with calibration data it
  refits the compressed layers in closed form to the original layers' outputs
  (``passes/_compensate.py``; the pass statistics carry ``compensation`` per layer);
- ``compensation + distill``: the same pass followed by ``Distill`` (``time_budget`` seconds of
  fine-tuning toward the uncompressed model, with its default input augmentation) in one
  ``Pipeline``; "distill: not available" when this onnxpress has no ``passes.Distill``;
- ``comp. + distill, no augment``: the same with ``Distill(augment=False)`` (training on the
  calibration feeds only);
- onnxsim 0.8's closest equivalents, given the same calibration feeds: for unstructured and 2:4
  pruning ``onnxsim.pruning.apply_sparsegpt_pruning`` (Hessian-compensated, the method our
  compensation is measured against) and ``apply_wanda_pruning`` (|W|·||X||, no weight update);
  for structured pruning ``apply_structured_pruning`` (L2 filter norms) and
  ``apply_structured_wanda_pruning`` (calibrated), each alone and followed by
  ``onnxsim.finetune.apply_pruning_finetune`` (a ridge refit of the surviving MatMul/Gemm
  layers; it does not refit Conv). onnxsim has no low-rank factorization of float weights: its
  ``apply_low_rank_compensation`` (LoRC) adds a rank-r correction of int4 quantization error
  to ``quantize_weight_only_int4``'s output, another compression, so the lowrank settings list
  onnxsim as not comparable and do not run it.

The models and settings:

- MiniLM (``onnxpress.samples.minilm``; calibration: the 100 calibration sentences, or 20 with
  ``--quick``; accuracy: mean cosine of the sentence embeddings to fp32's on the 40 held-out
  sentences), the MatMul weights only (``op_types=["MatMul"]``): ``lowrank75`` and
  ``lowrank50`` (``LowRank(method="activation", budget=0.75 / 0.5, min_saving=0.0)``),
  ``prune50`` (unstructured, 50 %, ``criterion="importance"``), ``prune24`` (2:4,
  ``granularity="n:m"``, importance).
- The digits CNN (``samples.DIGITS_MODEL``; calibration: the 200 calibration images, or 50 with
  ``--quick``; accuracy: top-1 on the 397 held-out images), its Conv, Gemm and MatMul weights
  (the passes' defaults): the same four (lowrank factors only Gemm/MatMul and 1x1 Conv weights:
  when it factors nothing the row's note says so) and ``structured30`` / ``structured50``
  (``Prune(granularity="structured", sparsity=0.3 / 0.5, criterion="importance")``).

Each method runs alone in a fresh child process (``benchmarks/_measure.py``, as
``quantize.py`` does): it reads the fp32 model and the calibration feeds from a private
temporary folder, compresses, and writes its result there; the parent scores every result on
the held-out data with ONNX Runtime (``onnxpress.runtime.run_model``). A method that fails
prints its error in its row and the run goes on.

Columns: ``setting``; ``method``; the accuracy (``cosine`` for MiniLM, ``top-1`` for the digits
CNN); ``kept``: the Conv/Gemm/MatMul constant weights' non-zero elements over the fp32 model's
count of them (a sparsity of 50 % keeps 0.50; factors U and V count as stored); ``file MB``: the
saved model; ``zip MB``: the saved model after deflate (level 6), where unstructured sparsity
pays; ``wall s``: the child's time to load the fp32 file, compress (and recover) and save;
``peak MB``: the child's peak resident memory (VmHWM); ``step MB``: what the work added to the
child's resident memory after its imports and feeds; ``note``: what the method reports
(layers factored or pruned, compensation refits with the median relative output error of the
refit layers before -> after on calibration rows held back from the fit, distillation's steps
and held-out loss). MB are 2**20 bytes.

The summary at the end judges MiniLM against the issue's goals (embedding cosine: lowrank 75 %
>= 0.98, lowrank 50 % >= 0.95, unstructured 50 % >= 0.98, 2:4 >= 0.96; met when compensation,
or compensation + distill, reaches it) and compares our compensation with onnxsim SparseGPT's
accuracy, wall time and peak memory on each pruning setting of both models.

Run: ``.venv/bin/python benchmarks/recover.py [--quick] [--models minilm,digits]
[--settings lowrank75,lowrank50,prune50,prune24,structured30,structured50]
[--methods none,compensation,distill,distill-plain,onnxsim]
[--distill-minilm SECONDS] [--distill-digits SECONDS]`` (``--methods`` runs only those rows). The full run takes about 40 minutes
on two busy cores, all but 3 of them MiniLM's (compensation and onnxsim's SparseGPT take 2-4
minutes each there); ``--quick`` (fewer calibration samples, a 10 s / 5 s distillation) about
2 minutes for the digits CNN and 6 per MiniLM setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import _measure  # benchmarks/_measure.py: this script runs as a file, so its folder is on sys.path

# Heavy libraries are imported inside functions: a method's child process then loads only what
# that method needs, so its peak memory is its own.

MODELS = ("minilm", "digits")
_DISPLAY = {"minilm": "MiniLM", "digits": "digits CNN"}
_CHILD_TIMEOUT_S = 1800
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
_CALIBRATION = {"minilm": (100, 20), "digits": (200, 50)}  # (full, --quick) calibration samples
_DISTILL_S = {"minilm": (60.0, 10.0), "digits": (20.0, 5.0)}  # (full, --quick) distillation seconds
_NOT_COMPARABLE = ("not comparable, not run: onnxsim 0.8 has no low-rank factorization of float weights; its "
                   "apply_low_rank_compensation (LoRC) adds a rank-r SVD correction of int4 quantization error "
                   "to quantize_weight_only_int4's output")
_ONNXSIM_STRUCTURED = (("onnxsim structured L2", {"wanda": False, "finetune": False}),
                       ("onnxsim structured L2 + finetune", {"wanda": False, "finetune": True}),
                       ("onnxsim structured Wanda", {"wanda": True, "finetune": False}),
                       ("onnxsim structured Wanda + finetune", {"wanda": True, "finetune": True}))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One compression setting: the onnxpress pass and its options, and onnxsim's counterpart."""

    key: str
    label: str
    compress: str  # "lowrank" or "prune"
    options: dict[str, Any]
    models: tuple[str, ...] = MODELS
    onnxsim: str = ""  # "unstructured", "n:m", "structured"; empty: onnxsim has nothing comparable
    goal: float | None = None  # the MiniLM embedding-cosine goal


SETTINGS = (
    Setting("lowrank75", "lowrank 75 %", "lowrank", {"method": "activation", "budget": 0.75, "min_saving": 0.0},
            goal=0.98),
    Setting("lowrank50", "lowrank 50 %", "lowrank", {"method": "activation", "budget": 0.5, "min_saving": 0.0},
            goal=0.95),
    Setting("prune50", "prune unstructured 50 %", "prune",
            {"granularity": "unstructured", "sparsity": 0.5, "criterion": "importance"}, onnxsim="unstructured",
            goal=0.98),
    Setting("prune24", "prune 2:4", "prune", {"granularity": "n:m", "n": 2, "m": 4, "criterion": "importance"},
            onnxsim="n:m", goal=0.96),
    Setting("structured30", "structured 30 %", "prune",
            {"granularity": "structured", "sparsity": 0.3, "criterion": "importance"}, models=("digits",),
            onnxsim="structured"),
    Setting("structured50", "structured 50 %", "prune",
            {"granularity": "structured", "sparsity": 0.5, "criterion": "importance"}, models=("digits",),
            onnxsim="structured"),
)
BY_KEY = {setting.key: setting for setting in SETTINGS}
METHOD_KINDS = ["none", "compensation", "distill", "distill-plain", "onnxsim"]


@dataclasses.dataclass
class Case:
    """One model: its fp32 file, calibration feeds (on disk for the children) and held-out data."""

    name: str
    folder: Path
    calibration_count: int
    evaluation: list[dict[str, np.ndarray]]
    labels: np.ndarray | None  # digits: classes; MiniLM: None (scored against ``reference``)
    reference: list[dict[str, np.ndarray]]
    op_types: list[str] | None  # the passes' ``op_types``; None keeps their defaults
    distill_s: float

    @property
    def fp32(self) -> Path:
        return self.folder / "fp32.onnx"

    @property
    def feeds_file(self) -> Path:
        return self.folder / "calibration.npz"

    @property
    def metric(self) -> str:
        return "top-1" if self.labels is not None else "cosine"


@dataclasses.dataclass
class Row:
    """One method's result on one setting; ``error`` when it failed, ``skipped`` when not run."""

    setting: str
    label: str
    path: Path | None = None
    seconds: float | None = None
    peak_mb: float | None = None
    step_mb: float | None = None
    note: str = ""
    error: str = ""
    skipped: str = ""
    accuracy: float | None = None
    kept: float | None = None
    size_mb: float | None = None
    zip_mb: float | None = None


# ----------------------------------------------------------------------------- child process

def child(job: dict[str, Any]) -> None:
    """Run one method as ``job`` says, alone in this process, and print its measurements.

    The timer covers loading the fp32 file, compressing (and recovering) and saving; the memory
    baseline is taken after the method's imports (torch too for distillation) and the
    calibration feeds are in memory. onnxpress's clean refusals (``OnnxpressError``) are printed
    as the result's ``error``; anything else crashes the child and the parent reports its last
    line.
    """
    method, options = job["method"], job["options"]
    modules = ["onnxpress"] if method == "onnxpress" else ["onnx", "onnxsim.pruning", "onnxsim.finetune"]
    if options.get("distill"):
        modules.append("torch")
    for module in modules:
        importlib.import_module(module)
    feeds = _measure.read_feeds(Path(job["feeds"]))
    work = {"onnxpress": _onnxpress, "onnxsim_sparsegpt": _onnxsim_sparsegpt, "onnxsim_wanda": _onnxsim_wanda,
            "onnxsim_structured": _onnxsim_structured}[method]
    refusals: tuple[type[BaseException], ...] = ()
    if method == "onnxpress":
        import onnxpress as ox

        refusals = (ox.OnnxpressError,)
    _measure.measure(lambda: work(Path(job["source"]), Path(job["target"]), feeds, options), refusals)


def _onnxpress(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """The onnxpress pass ``options["compress"]`` with ``options["options"]``, then ``Distill``
    when ``options["distill"]`` gives its options, in one pipeline without its checks."""
    import onnxpress as ox

    compress = {"lowrank": ox.passes.LowRank, "prune": ox.passes.Prune}[options["compress"]](**options["options"])
    passes = [compress]
    if options.get("distill"):
        passes.append(ox.passes.Distill(**options["distill"]))
    result = ox.Pipeline(passes, check=False, golden_samples=0, latency_runs=0).run(ox.load(source), calibration=feeds)
    ox.save(result.model, target)
    notes = [_describe_compression(options["compress"], result.records[0].statistics)]
    if options.get("distill"):
        notes.append(_describe_distill(result.records[1].statistics))
    return {"note": "; ".join(note for note in notes if note)}


def _describe_compression(compress: str, stats: dict[str, Any]) -> str:
    """What the lowrank or prune pass did, and its compensation, from its statistics."""
    if compress == "lowrank":
        factored = stats.get("factored", 0)
        if not factored:
            reasons = sorted(set(stats.get("skipped", {}).values()))
            return "factored nothing" + (f" ({'; '.join(reasons[:2])})" if reasons else "")
        parts = [f"{_count(factored, 'layer')} factored, candidates' params kept {stats.get('params_kept', 0):.2f}"]
    else:
        parts = [f"{_count(stats.get('pruned_layers', 0), 'layer')} pruned, sparsity {stats.get('sparsity', 0):.2f}"]
    compensation = stats.get("compensation") or {}
    refits = [layer for layer in compensation.values() if "output_error_after" in layer]
    if refits:
        before = statistics.median(layer["output_error_before"] for layer in refits)
        after = statistics.median(layer["output_error_after"] for layer in refits)
        parts.append(f"{_count(len(refits), 'layer')} refit (median output error {before:.4f} -> {after:.4f})")
        if len(refits) < len(compensation):
            parts.append(f"{len(compensation) - len(refits)} not refit (no refit beat them on held-back rows)")
    elif compensation:
        parts.append(f"no layer refit ({len(compensation)} tried: no refit beat them on held-back rows)")
    return ", ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _describe_distill(stats: dict[str, Any]) -> str:
    """Distill's steps, time and held-out loss, from its statistics."""
    if stats.get("reason") and not stats.get("steps"):
        return f"distill: {stats['reason']}"
    text = (f"distill: {stats.get('steps', '?')} steps in {stats.get('seconds', 0):.0f} s, held-out loss "
            f"{stats.get('held_out_loss_before', float('nan')):.4g} -> {stats.get('held_out_loss_after', float('nan')):.4g}")
    if stats.get("improved") is False:
        text += " (no gain: kept its input)"
    return text


def _onnxsim_sparsegpt(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """onnxsim's SparseGPT: Hessian-compensated unstructured (``sparsity``) or N:M pruning."""
    import onnx
    from onnxsim import pruning

    onnx.save(pruning.apply_sparsegpt_pruning(onnx.load(str(source)), calibration_data=feeds, **options),
              str(target))
    return {}


def _onnxsim_wanda(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """onnxsim's Wanda: zero the entries of least |W|·||X||, no update of the kept ones."""
    import onnx
    from onnxsim import pruning

    onnx.save(pruning.apply_wanda_pruning(onnx.load(str(source)), calibration_data=feeds, **options), str(target))
    return {}


def _onnxsim_structured(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """onnxsim's structured channel pruning (L2 norms, or Wanda's calibrated norms), then, when
    ``options["finetune"]``, its ridge refit of the surviving MatMul/Gemm layers."""
    import onnx
    from onnxsim import finetune, pruning

    if options["wanda"]:
        pruned = pruning.apply_structured_wanda_pruning(onnx.load(str(source)), calibration_data=feeds,
                                                        sparsity=options["sparsity"])
    else:
        pruned = pruning.apply_structured_pruning(onnx.load(str(source)), sparsity=options["sparsity"])
    note = ""
    if options["finetune"]:
        # onnxsim's pruning edits the model it is given: finetune gets the original loaded afresh.
        tuned = finetune.apply_pruning_finetune(onnx.load(str(source)), pruned, calibration_data=feeds)
        changed = _changed_initializers(pruned, tuned)
        note = f"finetune changed {changed} weight tensors" if changed else "finetune changed no weight"
        pruned = tuned
    onnx.save(pruned, str(target))
    return {"note": note}


def _changed_initializers(before: Any, after: Any) -> int:
    """How many initializers of ``after`` differ from ``before``'s of the same name."""
    from onnx import numpy_helper

    old = {tensor.name: numpy_helper.to_array(tensor) for tensor in before.graph.initializer}
    return sum(1 for tensor in after.graph.initializer
               if tensor.name not in old or not np.array_equal(old[tensor.name], numpy_helper.to_array(tensor)))


# ----------------------------------------------------------------------------- parent process

def say(step: str) -> None:
    """One progress line on stderr."""
    print(f"[recover] {step} ...", file=sys.stderr, flush=True)


def prepare(name: str, quick: bool, distill_s: float, folder: Path) -> Case:
    """Export or load the fp32 model into ``folder``, store its calibration feeds there and
    score the fp32 model on the held-out data."""
    import onnxpress as ox
    from onnxpress import runtime, samples

    folder.mkdir()
    count = _CALIBRATION[name][quick]
    if name == "digits":
        model = ox.load(samples.DIGITS_MODEL)
        calibration = samples.digits_calibration().take(count)
        evaluation, labels = samples.digits_eval()
        evaluation, op_types = list(evaluation), None
    else:
        from onnxpress.samples import minilm

        say("MiniLM: export")
        model = minilm.export()
        calibration = minilm.feeds(minilm.CALIBRATION_SENTENCES[:count])
        evaluation, labels, op_types = minilm.feeds(minilm.EVAL_SENTENCES), None, ["MatMul"]
    ox.save(model, folder / "fp32.onnx")
    _measure.write_feeds(list(calibration), folder / "calibration.npz")
    reference = runtime.run_model(model, evaluation)
    return Case(name, folder, len(calibration), evaluation, labels, reference, op_types, distill_s)


def methods(case: Case, setting: Setting, distill: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of every row of ``setting`` on ``case``; method "" is a row
    that is not run, its options' ``skipped`` says why."""
    options = dict(setting.options)
    if case.op_types is not None:
        options["op_types"] = case.op_types
    ours = {"compress": setting.compress, "options": options}
    rows = [("no recovery", "onnxpress", {**ours, "options": {**options, "compensate": False}}),
            ("compensation", "onnxpress", ours)]
    if distill:
        rows.append(("compensation + distill", "onnxpress", {**ours, "distill": {"time_budget": case.distill_s}}))
        rows.append(("comp. + distill, no augment", "onnxpress",
                     {**ours, "distill": {"time_budget": case.distill_s, "augment": False}}))
    else:
        rows.append(("compensation + distill", "", {"skipped": "distill: not available"}))
    if setting.onnxsim == "unstructured":
        sparsity = {"sparsity": setting.options["sparsity"]}
        rows += [("onnxsim SparseGPT", "onnxsim_sparsegpt", sparsity), ("onnxsim Wanda", "onnxsim_wanda", sparsity)]
    elif setting.onnxsim == "n:m":
        pattern = {"n": setting.options["n"], "m": setting.options["m"]}
        rows += [("onnxsim SparseGPT", "onnxsim_sparsegpt", pattern), ("onnxsim Wanda", "onnxsim_wanda", pattern)]
    elif setting.onnxsim == "structured":
        rows += [(label, "onnxsim_structured", {"sparsity": setting.options["sparsity"], **flags})
                 for label, flags in _ONNXSIM_STRUCTURED]
    else:
        rows.append(("onnxsim", "", {"skipped": _NOT_COMPARABLE}))
    return rows


def run_method(case: Case, setting: Setting, label: str, method: str, options: dict[str, Any]) -> Row:
    """Run one method in a fresh process on ``case``'s fp32 file; the row holds what it reported."""
    if not method:
        return Row(setting.label, label, skipped=options["skipped"])
    slug = f"{setting.key}-{label}".replace(" ", "_").replace("+", "plus")
    target = case.folder / f"{slug}.onnx"
    job = {"method": method, "source": str(case.fp32), "target": str(target), "options": options,
           "feeds": str(case.feeds_file)}
    result = _measure.run_child(Path(__file__).resolve(), job, case.folder, _CHILD_TIMEOUT_S)
    if "error" in result:
        return Row(setting.label, label, error=result["error"])
    return Row(setting.label, label, path=target, seconds=result["seconds"], peak_mb=result["peak_mb"],
               step_mb=result["step_mb"], note=result.get("note", ""))


def score(case: Case, row: Row, fp32_weights: int) -> None:
    """Accuracy on the held-out data, weights kept, file and deflated sizes of ``row``'s model."""
    import onnxpress as ox
    from onnxpress import metrics, modelinfo, runtime

    model = ox.load(row.path)
    row.size_mb = row.path.stat().st_size / _measure.MB
    deflated = modelinfo.deflated_size(model)
    row.zip_mb = None if deflated is None else deflated / _measure.MB
    row.kept = _weights(model)[1] / fp32_weights if fp32_weights else None
    try:
        outputs = runtime.run_model(model, case.evaluation)
    except runtime.ort_errors() as err:
        row.error = f"ONNX Runtime cannot run the result: {str(err).strip().splitlines()[0]}"
        return
    if case.labels is not None:
        row.accuracy = metrics.accuracy(outputs, case.labels)
    else:
        row.accuracy = min(stats.cosine for stats in metrics.compare(case.reference, outputs).values())


def _weights(model: Any) -> tuple[int, int]:
    """Elements and non-zero elements of the constant weights (input 1) of Conv/Gemm/MatMul nodes."""
    total = nonzero = 0
    for node in model.graph.all_nodes():
        if node.op_type not in _WEIGHT_OPS or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        tensor = node.inputs[1].const_value
        if tensor is None:
            continue
        array = tensor.numpy()
        total += array.size
        nonzero += int(np.count_nonzero(array))
    return total, nonzero


_COLUMNS = (("setting", 24, "<"), ("method", 36, "<"), ("accuracy", 8, ">"), ("kept", 6, ">"), ("file MB", 8, ">"),
            ("zip MB", 7, ">"), ("wall s", 7, ">"), ("peak MB", 8, ">"), ("step MB", 8, ">"), ("note", 0, "<"))


def _line(cells: list[str]) -> str:
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, _COLUMNS)).rstrip()


def header(case: Case) -> str:
    """The table's title and column names for ``case``."""
    names = [case.metric if name == "accuracy" else name for name, _, _ in _COLUMNS]
    held_out = (f"{len(case.labels)} held-out images" if case.labels is not None
                else f"{len(case.evaluation)} held-out sentences")
    title = (f"== {_DISPLAY[case.name]} (calibration: {case.calibration_count} samples; accuracy on {held_out}; "
             f"distill budget {case.distill_s:g} s)")
    columns = _line(names)
    return "\n".join([title, columns, "-" * len(columns)])


def format_row(row: Row) -> str:
    """One table line: the figures, or the reason the method failed or was not run."""
    if row.error or row.skipped:
        return _line([row.setting, row.label, *["-"] * 7, f"failed: {row.error[:300]}" if row.error else row.skipped])
    return _line([row.setting, row.label, f"{row.accuracy:.4f}", "-" if row.kept is None else f"{row.kept:.2f}",
                  f"{row.size_mb:.2f}", "-" if row.zip_mb is None else f"{row.zip_mb:.2f}",
                  "-" if row.seconds is None else f"{row.seconds:.1f}",
                  "-" if row.peak_mb is None else f"{row.peak_mb:.0f}",
                  "-" if row.step_mb is None else f"{row.step_mb:.0f}", row.note])


def summary(results: dict[str, dict[str, list[Row]]], quick: bool) -> list[str]:
    """The issue's MiniLM goals, then our compensation against onnxsim SparseGPT per pruning setting."""
    lines = ["== summary"]
    if quick:
        lines.append("(--quick: fewer calibration samples and a short distillation; judge the goals on a full run)")
    minilm = results.get("minilm", {})
    for key, rows in minilm.items():
        setting = BY_KEY[key]
        if setting.goal is None:
            continue
        by_label = {row.label: row for row in rows}
        figures = ", ".join(f"{label} {_accuracy(by_label.get(label))}"
                            for label in ("no recovery", "compensation", "compensation + distill"))
        met = [label for label in ("compensation", "compensation + distill")
               if _ok(by_label.get(label)) and by_label[label].accuracy >= setting.goal]
        verdict = f"goal met by {' and '.join(met)}" if met else "goal NOT met"
        lines.append(f"MiniLM {setting.label} (goal cosine >= {setting.goal}): {figures} -> {verdict}")
    if not any(BY_KEY[key].goal is not None for key in minilm):
        lines.append("MiniLM goals: not judged (MiniLM or its goal settings were not run)")
    for model, settings in results.items():
        for key, rows in settings.items():
            by_label = {row.label: row for row in rows}
            ours, theirs = by_label.get("compensation"), by_label.get("onnxsim SparseGPT")
            if theirs is None:
                continue
            name = f"{_DISPLAY[model]} {BY_KEY[key].label}: our compensation vs onnxsim SparseGPT"
            if not (_ok(ours) and _ok(theirs)):
                lines.append(f"{name}: not compared ({'ours' if not _ok(ours) else 'SparseGPT'} failed)")
                continue
            accurate = "higher" if ours.accuracy > theirs.accuracy else "equal" if ours.accuracy == theirs.accuracy \
                else "lower"
            lines.append(f"{name}: accuracy {ours.accuracy:.4f} vs {theirs.accuracy:.4f} ({accurate}); "
                         f"wall {ours.seconds:.1f} s vs {theirs.seconds:.1f} s ({ours.seconds / theirs.seconds:.1f}x); "
                         f"peak {ours.peak_mb:.0f} MB vs {theirs.peak_mb:.0f} MB")
    return lines


def _ok(row: Row | None) -> bool:
    return row is not None and not row.error and not row.skipped and row.accuracy is not None


def _accuracy(row: Row | None) -> str:
    if row is None:
        return "not run"
    if row.skipped:
        return "n/a"
    return f"{row.accuracy:.4f}" if _ok(row) else "failed"


def _kind(label: str) -> str:
    """The ``--methods`` name of a row: none, compensation, distill, distill-plain or onnxsim."""
    if label.startswith("onnxsim"):
        return "onnxsim"
    return {"no recovery": "none", "compensation": "compensation", "compensation + distill": "distill",
            "comp. + distill, no augment": "distill-plain"}[label]


def main(models: list[str], settings: list[Setting], quick: bool, distill_s: dict[str, float],
         kinds: list[str] = METHOD_KINDS) -> None:
    """Each model's table on stdout, setting by setting as they finish; the summary at the end."""
    import onnxpress as ox

    distill = hasattr(ox.passes, "Distill")
    results: dict[str, dict[str, list[Row]]] = {}
    with tempfile.TemporaryDirectory(prefix="onnxpress-bench-recover-") as scratch:
        for name in models:
            chosen = [setting for setting in settings if name in setting.models]
            if not chosen:
                print(f"== {name}: none of the chosen settings applies\n", flush=True)
                continue
            say(f"{name}: prepare")
            case = prepare(name, quick, distill_s[name], Path(scratch) / name)
            fp32 = Row("fp32", "fp32", path=case.fp32)
            fp32_weights = _weights(ox.load(case.fp32))[0]
            score(case, fp32, fp32_weights)
            print(header(case), flush=True)
            print(format_row(fp32), flush=True)
            results[name] = {}
            for setting in chosen:
                rows = []
                for label, method, options in methods(case, setting, distill):
                    if _kind(label) not in kinds:
                        continue
                    say(f"{name}: {setting.label}: {label}")
                    row = run_method(case, setting, label, method, options)
                    if row.path is not None and not row.error:
                        score(case, row, fp32_weights)
                    print(format_row(row), flush=True)
                    rows.append(row)
                results[name][setting.key] = rows
            skipped = [setting.key for setting in settings if name not in setting.models]
            if skipped:
                print(f"({', '.join(skipped)}: digits CNN only)", flush=True)
            print(flush=True)
    print("\n".join(summary(results, quick)), flush=True)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--settings", default=",".join(BY_KEY),
                        help=f"comma-separated, of {', '.join(BY_KEY)} (structured*: digits only)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer calibration samples (20 sentences, 50 digits) and a short distillation")
    parser.add_argument("--distill-minilm", type=float, help="distillation seconds on MiniLM (default 60, quick 10)")
    parser.add_argument("--distill-digits", type=float, help="distillation seconds on digits (default 20, quick 5)")
    parser.add_argument("--methods", default=",".join(METHOD_KINDS),
                        help=f"comma-separated rows to run, of {', '.join(METHOD_KINDS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one method's job, as JSON
    args = parser.parse_args()
    args.methods = list(dict.fromkeys(args.methods.split(",")))
    unknown = sorted(set(args.methods) - set(METHOD_KINDS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_KINDS)}")
    args.models = list(dict.fromkeys(args.models.split(",")))
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    keys = list(dict.fromkeys(args.settings.split(",")))
    unknown = sorted(set(keys) - set(BY_KEY))
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(BY_KEY)}")
    args.settings = [BY_KEY[key] for key in keys]
    args.distill_s = {name: given if given is not None else _DISTILL_S[name][args.quick]
                      for name, given in (("minilm", args.distill_minilm), ("digits", args.distill_digits))}
    return args


if __name__ == "__main__":
    arguments = _parse()
    if arguments.child:
        child(json.loads(arguments.child))
    else:
        main(arguments.models, arguments.settings, arguments.quick, arguments.distill_s, arguments.methods)
