"""Quantize side by side with ONNX Runtime's and NNCF's quantizers on four models.

For each model (the bundled digits CNN, ResNet-18 and MobileNetV3-small with seeded random
weights, the MiniLM sentence encoder) one table compares the fp32 model, ONNX Runtime's
``quantize_static`` (QDQ, per channel, MinMax) and ``quantize_dynamic`` (int8 weights),
``nncf.quantize``, and onnxpress's ``Quantize`` pass with default options (and, for the digits
CNN and MobileNetV3-small, where int8 may not pay on a CPU, ``latency_aware=True``). Every
quantizer gets the same calibration feeds and reads the fp32 model from a private temporary
folder.

Columns: file size and its ratio to fp32; CPU latency (median, batch 1, one representative
feed) at 1 and 2 intra-op threads and the speed-ups over fp32; ONNX Runtime's int8 and float
compute kernels after its graph optimisation; the quantization's wall time (load, quantize,
save) and peak resident memory (VmHWM), each quantizer alone in a fresh process, with the
part the step added over the process after its imports; accuracy against fp32 (digits: top-1
accuracy on the held-out images and top-1 agreement; CNNs: output cosine and top-1 agreement
on held-out random images; MiniLM: mean embedding cosine and Spearman correlation of the
pairwise sentence similarities). For MiniLM one more line gives the peak memory of
onnxpress's quantize child with the calibration sentences repeated 10x. Latencies are medians
over interleaved rounds, so slow drift of a noisy machine hits every method alike. MB are
2**20 bytes.

Run: `.venv/bin/python benchmarks/quantize.py [--models digits,resnet18,mobilenet_v3_small,minilm] [--quick]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Heavy libraries are imported inside functions: a quantizer's child process then loads only
# what that quantizer needs, so its peak memory is its own.

MODELS = ("digits", "resnet18", "mobilenet_v3_small", "minilm")
_RESULT = "RESULT "  # marks the child's stdout line that carries its measurements (JSON)
_CHILD_TIMEOUT_S = 600
_MB = 2 ** 20
# Module each quantizer needs, imported before its timer and memory baseline start.
_MODULES = {"ort_static": "onnxruntime.quantization", "ort_dynamic": "onnxruntime.quantization",
            "nncf": "nncf", "onnxpress": "onnxpress"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much data and how many timed runs a benchmark run uses."""

    digits_calibration: int
    image_calibration: int
    image_evaluation: int
    sentences: int
    rounds: int
    min_runs: int
    min_seconds: float


FULL = Settings(digits_calibration=200, image_calibration=32, image_evaluation=16, sentences=100,
                rounds=3, min_runs=50, min_seconds=1.0)
QUICK = Settings(digits_calibration=50, image_calibration=4, image_evaluation=4, sentences=10,
                 rounds=1, min_runs=5, min_seconds=0.1)


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

    def median_ms(self, threads: int) -> float:
        return statistics.median(self.latency_ms[threads])


# ----------------------------------------------------------------------------- child process

def child(job: dict[str, Any]) -> None:
    """Run one quantizer as ``job`` says, alone in this process, and print its measurements.

    The timer covers loading the fp32 file, quantizing and saving; the memory baseline is taken
    after the quantizer's imports and the calibration feeds are in memory.
    """
    importlib.import_module(_MODULES[job["method"]])
    feeds = _read_feeds(Path(job["feeds"])) * job["repeat"] if job["feeds"] else []
    quantizer = {"ort_static": _ort_static, "ort_dynamic": _ort_dynamic, "nncf": _nncf,
                 "onnxpress": _onnxpress}[job["method"]]
    base_mb = _status_mb("VmRSS")
    start = time.perf_counter()
    note = quantizer(Path(job["source"]), Path(job["target"]), feeds, job["options"])
    seconds = time.perf_counter() - start
    peak_mb = _status_mb("VmHWM")
    print(_RESULT + json.dumps({"seconds": seconds, "peak_mb": peak_mb, "step_mb": peak_mb - base_mb, "note": note}),
          flush=True)


def _status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB.

    VmHWM (peak resident) belongs to this process image; ru_maxrss would carry a parent's peak
    over fork and exec.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / _MB
    raise KeyError(key)


def _ort_static(source: Path, target: Path, feeds: list, options: dict) -> str:
    """ONNX Runtime's static quantization: QDQ, per-channel weights, MinMax activation ranges."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        """Hands the calibration feeds to ONNX Runtime's calibrator, one per call."""

        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    return ""


def _ort_dynamic(source: Path, target: Path, feeds: list, options: dict) -> str:
    """ONNX Runtime's dynamic quantization with its defaults and int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return ""


def _nncf(source: Path, target: Path, feeds: list, options: dict) -> str:
    """NNCF's post-training quantization of the ONNX model, on every calibration feed."""
    import nncf
    import onnx

    model_type = {"model_type": nncf.ModelType.TRANSFORMER} if options.get("transformer") else {}
    quantized = nncf.quantize(onnx.load(str(source)), nncf.Dataset(feeds), subset_size=len(feeds), **model_type)
    onnx.save(quantized, str(target))
    return ""


def _onnxpress(source: Path, target: Path, feeds: list, options: dict) -> str:
    """onnxpress's Quantize pass in a default pipeline; returns what the pass chose."""
    import onnxpress as ox

    result = ox.Pipeline([ox.passes.Quantize(latency_aware=options.get("latency_aware", False))]).run(
        ox.load(source), calibration=feeds)
    ox.save(result.model, target)
    return _describe(result.records[0].statistics)


def _describe(stats: dict[str, Any]) -> str:
    """A short account of the Quantize pass's statistics: mode, preset, what stayed float."""
    parts = [f"{stats.get('mode')}/{stats.get('preset')}", f"{stats.get('quantized_nodes', 0)} nodes int8"]
    if stats.get("smoothquant_alpha") is not None:
        parts.append(f"smoothquant {stats['smoothquant_alpha']}")
    latency = stats.get("latency")
    if latency:
        parts.append(f"own timing fp32 {latency['fp32_ms']:#.4g} ms, int8 {latency['int8_ms']:#.4g} ms, "
                     f"kept {latency['final_ms']:#.4g} ms")
        if latency.get("kept_fp32"):
            parts.append("int8 slower: kept fp32")
        elif latency["groups_left_float"]:
            parts.append("float: " + ", ".join(latency["groups_left_float"]))
    return "; ".join(parts)


def _write_feeds(feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    """Store feeds of any shapes in one ``.npz`` file (keys ``index:input``)."""
    np.savez(path, **{f"{i}:{name}": array for i, feed in enumerate(feeds) for name, array in feed.items()})


def _read_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """The feeds ``_write_feeds`` stored, in order."""
    feeds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            index, name = key.split(":", 1)
            feeds.setdefault(int(index), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


# ----------------------------------------------------------------------------- parent process

def say(case: str, step: str) -> None:
    """One progress line on stderr."""
    print(f"[{case}] {step} ...", file=sys.stderr, flush=True)


def prepare(name: str, settings: Settings, folder: Path) -> Case:
    """Export or load the fp32 model into ``folder`` and build its calibration and evaluation data."""
    import onnxpress as ox
    from onnxpress import samples
    from onnxpress.feeds import input_specs

    folder.mkdir()
    if name == "digits":
        model = ox.load(samples.DIGITS_MODEL)
        evaluation, labels = samples.digits_eval(batch_size=1)
        evaluation = list(evaluation)
        case = Case(name, folder, samples.digits_calibration().take(settings.digits_calibration), evaluation,
                    evaluation[0], labels=labels, latency_aware_row=True)
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
    _write_feeds(case.calibration, case.feeds_file)
    return case


def _images(count: int, seed: int, input_name: str) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of seeded standard-normal images [1, 3, 224, 224]."""
    rng = np.random.default_rng(seed)
    return [{input_name: rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(count)]


def methods(case: Case) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, quantizer, options) of every method run on ``case``."""
    rows = [("ORT static", "ort_static", {}), ("ORT dynamic", "ort_dynamic", {}),
            ("NNCF", "nncf", {"transformer": case.transformer}), ("onnxpress", "onnxpress", {})]
    if case.latency_aware_row:
        rows.append(("onnxpress latency-aware", "onnxpress", {"latency_aware": True}))
    return rows


def quantize(case: Case, label: str, method: str, options: dict[str, Any], repeat: int = 1) -> Row:
    """Run one quantizer in a fresh process on ``case``'s fp32 file; the row holds what it reported."""
    target = case.folder / f"{label.replace(' ', '_')}-x{repeat}.onnx"
    job = {"method": method, "source": str(case.fp32), "target": str(target), "options": options,
           "feeds": None if method == "ort_dynamic" else str(case.feeds_file), "repeat": repeat}
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)],
                              capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, cwd=case.folder)
    except subprocess.TimeoutExpired:
        return Row(label, error=f"timed out after {_CHILD_TIMEOUT_S} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT):
            result = json.loads(line[len(_RESULT):])
            return Row(label, path=target, seconds=result["seconds"], peak_mb=result["peak_mb"],
                       step_mb=result["step_mb"], note=result["note"])
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return Row(label, error=lines[-1] if lines else f"exit status {done.returncode}")


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
    return {"cosine": cosine, "agree": metrics.top1_agreement(reference, outputs)}


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
    text = [f"== {case.name} (calibration: {len(case.calibration)} feeds; accuracy on {len(case.evaluation)} "
            "held-out feeds)"]
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
            case = prepare(name, settings, Path(scratch) / name)
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
            verdicts += summary(case, rows)
    print("\n".join(verdicts))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="less data and fewer timed runs (< 3 minutes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one quantizer's job, as JSON
    args = parser.parse_args()
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


if __name__ == "__main__":
    arguments = _parse()
    if arguments.child:
        child(json.loads(arguments.child))
    else:
        main(arguments.models.split(","), QUICK if arguments.quick else FULL)
