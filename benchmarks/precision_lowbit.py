"""Low-bit precision side by side: fp32, int8 with free and with power-of-two (fixed-point) scales,
binary (1-bit) weights with the mean and the data-aware scale, and binary followed by distillation.

Models:

- the digits CNN (``onnxpress.samples``; calibration: the 200 calibration images, 50 with
  ``--quick``; accuracy: top-1 on the 397 held-out images with their labels);
- ResNet-18 (``samples/architectures.py``'s ``resnet18()``, seeded random weights and batch-norm
  statistics, exported with ``ox.export``; calibration: 8 seeded standard-normal images
  [1, 3, 224, 224], 4 with ``--quick``; 32 other such images judge it, 4 with ``--quick``).
  Random weights have no task, and such a network gives every random image nearly the same
  logits (top-1 agreement is 1.0 for any method): its ``accuracy`` column is the cosine to
  fp32 of the image-dependent part of the logits (both centred on fp32's mean over the images).
  A random network is harder on low-bit weights than a trained one (no outlier-free,
  well-conditioned filters).

Rows, each one ``ox.Pipeline`` over the fp32 model with the calibration feeds:

- ``fp32``: the exported / bundled model;
- ``int8 free``: ``Quantize()`` (static, per channel, free float scales: the default);
- ``int8 pow2``: ``Quantize(scale="pow2")`` (fixed point: every scale a power of two);
- ``binary mean``: ``WeightOnly(bits=1)`` (α = mean|W| per output channel; first and last weight
  layers kept float);
- ``binary optimal``: ``WeightOnly(bits=1, binary_scale="optimal")`` (α fitted per channel to the
  layer's outputs on the calibration feeds);
- ``binary optimal + distill``: the same, then ``Distill(time_budget=...)`` (20 s on the digits CNN,
  60 s on ResNet-18; 10 / 15 s with ``--quick``; one torch thread): the float layers (first, last), the biases and
  normalisations train toward the fp32 model; the binarized signs stay as they are.

Columns: file size (MB = 2**20 bytes) and its ratio to fp32; ``accuracy`` (digits: top-1 on the
held-out labels; ResNet-18: the centred cosine above); ``cosine``: mean cosine of each output
row to fp32's; ``drop fp32`` / ``drop int8``: the accuracy lost against fp32 and against int8 with
free scales, in points; ``wall s``: the pipeline's time; ``note``: what the pass reported (layers
binarized, the mean relative output error of the binarized layers on calibration rows the fit held
back, distillation's steps). A method that fails prints its error in its row and the run goes on.

Run: ``.venv/bin/python benchmarks/precision_lowbit.py [--quick] [--models digits,resnet18]``.
About 6 minutes on two busy cores (ResNet-18's export, its calibration sessions and the
distillation take most of it); ``--quick`` about 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MODELS = ("digits", "resnet18")
MB = 2 ** 20
_DISTILL_S = {"digits": (20.0, 10.0), "resnet18": (60.0, 15.0)}  # (full, --quick) seconds
_IMAGES = {"calibration": (8, 4), "evaluation": (32, 4)}  # ResNet-18 images (full, --quick)


@dataclasses.dataclass
class Case:
    """A model, its calibration and held-out feeds, and the labels where it has them."""

    name: str
    model: Any
    calibration: list[dict[str, np.ndarray]]
    evaluation: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None


@dataclasses.dataclass
class Row:
    label: str
    size_mb: float | None = None
    accuracy: float | None = None
    cosine: float | None = None
    seconds: float | None = None
    note: str = ""
    error: str = ""


def say(message: str) -> None:
    print(f"[precision_lowbit] {message} ...", file=sys.stderr, flush=True)


def prepare(name: str, quick: bool) -> Case:
    import onnxpress as ox
    from onnxpress import samples
    from onnxpress.feeds import input_specs

    if name == "digits":
        data, labels = samples.digits_eval(batch_size=50)
        calibration = samples.digits_calibration().take(50 if quick else 200)
        return Case(name, ox.load(samples.DIGITS_MODEL), list(calibration), list(data), labels)
    import torch

    from onnxpress.samples import architectures

    say("export ResNet-18")
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = ox.export(architectures.resnet18(), example)
    input_name = input_specs(model)[0].name
    pick = 1 if quick else 0
    return Case(name, model, _images(_IMAGES["calibration"][pick], 0, input_name),
                _images(_IMAGES["evaluation"][pick], 1, input_name))


def _images(count: int, seed: int, input_name: str) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{input_name: rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(count)]


def methods(name: str, quick: bool) -> list[tuple[str, Callable[[], list]]]:
    """(label, a function giving the pipeline's passes) of every row after fp32."""
    import onnxpress as ox

    budget = _DISTILL_S[name][1 if quick else 0]
    return [
        ("int8 free", lambda: [ox.passes.Quantize()]),
        ("int8 pow2", lambda: [ox.passes.Quantize(scale="pow2")]),
        ("binary mean", lambda: [ox.passes.WeightOnly(bits=1)]),
        ("binary optimal", lambda: [ox.passes.WeightOnly(bits=1, binary_scale="optimal")]),
        (f"binary optimal + distill {budget:g}s",
         lambda: [ox.passes.WeightOnly(bits=1, binary_scale="optimal"),
                  ox.passes.Distill(time_budget=budget, threads=1, learning_rate=1e-3)]),
    ]


def outputs(model: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The first output on every feed, one row per sample."""
    from onnxpress import runtime

    results = runtime.run_model(model, feeds)
    return np.concatenate([next(iter(result.values())).reshape(len(next(iter(feed.values()))), -1)
                           for result, feed in zip(results, feeds)])


def score(case: Case, logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean row cosine against ``reference``): digits top-1 on labels; for the
    random-weight ResNet the mean cosine of the image-dependent part of the logits (both centred
    on fp32's mean logits over the images): such a network gives every random image the same
    top class and nearly the same logits, so top-1 agreement is 1.0 for any method, and the raw
    cosine is mostly the shared part."""
    if case.labels is not None:
        accuracy = float(np.mean(logits.argmax(axis=1) == case.labels))
    else:
        centre = reference.mean(axis=0)
        moved, base = logits - centre, reference - centre
        accuracy = float(np.mean(np.sum(moved * base, axis=1) / np.maximum(
            np.linalg.norm(moved, axis=1) * np.linalg.norm(base, axis=1), 1e-30)))
    norms = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = float(np.mean(np.sum(logits * reference, axis=1) / np.maximum(norms, 1e-30)))
    return accuracy, cosine


def size_mb(model: Any, folder: Path) -> float:
    """The saved model's bytes (with any external data file), in MB."""
    import onnxpress as ox

    folder.mkdir()
    ox.save(model, folder / "model.onnx")
    return sum(path.stat().st_size for path in folder.iterdir()) / MB


def note(records: list) -> str:
    parts = []
    for record in records:
        stats = record.statistics
        if record.name == "weightonly":
            errors = [layer["output_error"] for layer in stats.get("layers", {}).values() if "output_error" in layer]
            text = f"{stats.get('binarized', 0)} layers 1-bit, {len(stats.get('skipped', {}))} float"
            if errors:
                text += f", output error {np.mean(errors):.3f}"
            parts.append(text)
        elif record.name == "distill":
            parts.append(f"distill {stats.get('steps', '?')} steps" + ("" if record.modified else " (kept input)"))
        elif record.name == "quantize":
            parts.append(f"{stats.get('quantized_nodes', '?')} nodes int8")
    return "; ".join(parts)


def run_case(case: Case, quick: bool, folder: Path) -> list[Row]:
    import onnxpress as ox

    reference = outputs(case.model, case.evaluation)
    accuracy, cosine = score(case, reference, reference)
    rows = [Row("fp32", size_mb(case.model, folder / "fp32"), accuracy, cosine)]
    for index, (label, passes) in enumerate(methods(case.name, quick)):
        say(f"{case.name}: {label}")
        start = time.perf_counter()
        try:
            result = ox.Pipeline(passes()).run(case.model, calibration=case.calibration)
        except TypeError as err:
            if "scale" in str(err) and "pow2" in label:
                rows.append(Row(label, error="not available yet (Quantize has no scale option)"))
                continue
            rows.append(Row(label, error=f"{type(err).__name__}: {err}"))
            continue
        except Exception as err:  # a failing method prints its error in its row; the run goes on
            rows.append(Row(label, error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
            continue
        seconds = time.perf_counter() - start
        accuracy, cosine = score(case, outputs(result.model, case.evaluation), reference)
        rows.append(Row(label, size_mb(result.model, folder / f"m{index}"), accuracy, cosine, seconds,
                        note(result.records)))
    return rows


def table(case: Case, rows: list[Row]) -> str:
    fp32 = rows[0]
    int8 = next((row for row in rows if row.label == "int8 free" and row.accuracy is not None), None)
    what = "top-1 (held-out labels)" if case.labels is not None else \
        "cosine to fp32 of the image-dependent logits (centred on fp32's mean over the images)"
    title = {"digits": "digits CNN", "resnet18": "ResNet-18 (random weights)"}[case.name]
    lines = [f"\n{title}: accuracy = {what}, {len(case.evaluation)} held-out feeds, "
             f"{len(case.calibration)} calibration feeds",
             f"{'method':<32} {'size MB':>8} {'x fp32':>7} {'accuracy':>8} {'cosine':>7} {'drop fp32':>9} "
             f"{'drop int8':>9} {'wall s':>7}  note"]
    for row in rows:
        if row.error:
            lines.append(f"{row.label:<32} {row.error}")
            continue
        drop = f"{100 * (fp32.accuracy - row.accuracy):+.1f}"
        drop_int8 = f"{100 * (int8.accuracy - row.accuracy):+.1f}" if int8 is not None else "-"
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else "-"
        lines.append(f"{row.label:<32} {row.size_mb:>8.3f} {row.size_mb / fp32.size_mb:>7.3f} {row.accuracy:>8.4f} "
                     f"{row.cosine:>7.4f} {drop:>9} {drop_int8:>9} {seconds:>7}  {row.note}")
    lines.append("drops in points of accuracy (positive: lost); x fp32: file size over fp32's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer feeds, shorter distillation")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="precision_lowbit-") as temporary:
        for name in names:
            folder = Path(temporary) / name
            folder.mkdir()
            case = prepare(name, args.quick)
            print(table(case, run_case(case, args.quick, folder)), flush=True)


if __name__ == "__main__":
    main()
