"""float16 conversion side by side with onnxconverter-common on sample, hand-built and corpus models.

For each model one table: rows fp32, onnxpress ``FP16`` without data (static rules only),
onnxpress ``FP16`` with calibration data (the pipeline's context: calibration ranges and
measured error), onnxconverter-common's ``convert_float_to_float16`` with its defaults (float16
inputs and outputs) and with ``keep_io_types=True``. Columns: max-abs and mean-abs error and
cosine against the fp32 outputs on held-out feeds (all outputs flattened together, over the
values finite in both), NaN and Inf counts, nodes kept float32 (count and the reasons, grouped
by their first words), file size in MB (2**20 bytes).

The models: ``mask_ln``, a hand-built attention block with a (1 - m) * finfo(float32).min
additive mask (one sample fully masked), a decomposed LayerNorm with epsilon 1e-12 and hidden
states of unit scale (``mask_ln``) or with an outlier channel (``mask_ln_outliers``: |x| ~ 300,
as large transformers have, where the attention scores themselves pass 65504); the digits CNN;
ResNet-18 (seeded random weights, ``samples/architectures.py``); MiniLM; and corpus models
(``tests/realmodels/corpus.py``): the conv+attention recogniser, PP-LCNet, BERT and ViT. A
corpus model the corpus cannot build here is skipped with the reason.

Where the outputs are computed: ONNX Runtime's CPU provider, which runs float16 ops it has no
kernel for in float32 between Casts (and drops the Cast pairs between such ops), so it hides
overflow inside chains of them; ``mask_ln`` is small and is run by ``onnx.reference`` instead,
which computes in float16 as a GPU does. onnxconverter-common is given the model with its
nodes named (``NameFixPass``): with unnamed nodes its keep_io_types output has duplicate node
names and ONNX Runtime refuses it.

Run: `.venv/bin/python benchmarks/precision_fp16.py [--models NAME,...]`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = ("mask_ln", "mask_ln_outliers", "digits", "resnet18", "minilm", "hybrid_dynamo", "lcnet_dynamo", "bert", "vit")
_MB = 2 ** 20


def say(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models


def _mask_ln(outliers: bool = False):
    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "tests" / "passes"))
    from test_fp16 import _mask_ln as build, _mask_ln_feed as feed

    def feeds(count: int, seed: int):
        out = []
        for index in range(count):
            item = feed(seed * 100 + index)
            if outliers:
                item["x"][0, :, 3] *= 300.0  # an outlier channel: (x - mean)² overflows float16
            out.append(item)
        return out

    return build(), feeds(8, 1), feeds(4, 2), "onnx.reference"


def _digits():
    import onnxpress as ox
    from onnxpress import samples

    data, _ = samples.digits_eval()
    calib = list(samples.digits_calibration())[:32]
    return ox.load(samples.DIGITS_MODEL), calib, list(data)[:4], "ort-cpu"


def _resnet18():
    import torch

    import onnxpress as ox
    from onnxpress.samples import architectures

    model = ox.export(architectures.resnet18(), (torch.zeros(1, 3, 224, 224),))
    name = model.graph.inputs[0].name
    rng = np.random.default_rng(0)
    images = [{name: rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(12)]
    return model, images[:8], images[8:], "ort-cpu"


def _minilm():
    from onnxpress.samples import minilm

    sentences = minilm.CALIBRATION_SENTENCES
    return minilm.export(), minilm.feeds(sentences[:24]), minilm.feeds(sentences[24:32]), "ort-cpu"


def _corpus(name: str, folder: Path):
    import onnxpress as ox

    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import importlib

    corpus = importlib.import_module("tests.realmodels.corpus")
    spec = corpus.BY_NAME[name]
    missing = spec.missing()
    if missing:
        raise RuntimeError(f"needs {', '.join(missing)}")
    path = corpus.Corpus(folder).path(spec)
    return (ox.load(path), corpus.fitting_feeds(spec, path, 8, 1), corpus.fitting_feeds(spec, path, 4, 2),
            "ort-cpu")


# ----------------------------------------------------------------------------- conversions


def _ours(model, calibration):
    import onnxpress as ox
    from onnxpress import runtime
    from onnxpress.calibration import from_feeds
    from onnxpress.context import PassContext

    context = None
    if calibration is not None:
        context = PassContext.build(runner=runtime.Runner("cpu"), calibration=from_feeds(calibration))
    result = ox.passes.FP16().run_in(context, model.clone())
    return result.model, result.statistics["nodes_kept"]


def _theirs(model, keep_io_types: bool):
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxconverter_common import float16

    from onnxpress import _proto

    named = model.clone()
    common_passes.NameFixPass()(named)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = float16.convert_float_to_float16(_proto.to_proto(named), keep_io_types=keep_io_types)
    return ir.serde.deserialize_model(proto), {}


def _run(model, feeds, how: str) -> list[np.ndarray]:
    import onnx_ir as ir

    from onnxpress import runtime

    types = {v.name: v.dtype for v in model.graph.inputs}
    cast = [{k: (v.astype(np.float16) if types.get(k) == ir.DataType.FLOAT16 else v) for k, v in f.items()}
            for f in feeds]
    if how == "onnx.reference":
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(ir.serde.serialize_model(model))
        outputs = [evaluator.run(None, {k: f[k] for k in types}) for f in cast]
    else:
        outputs = [list(o.values()) for o in runtime.run_model(model, cast)]
    return [np.concatenate([np.asarray(a, np.float64).ravel() for a in row]) for row in outputs]


def _row(label: str, reference, outputs, kept: dict[str, str], size: int) -> dict[str, Any]:
    a, b = np.concatenate(reference), np.concatenate(outputs)
    finite = np.isfinite(a) & np.isfinite(b)
    diff = np.abs(a[finite] - b[finite])
    cosine = float(a[finite] @ b[finite] / (np.linalg.norm(a[finite]) * np.linalg.norm(b[finite]) + 1e-30))
    return {"row": label, "max_abs": float(diff.max()) if diff.size else 0.0,
            "mean_abs": float(diff.mean()) if diff.size else 0.0, "cosine": cosine,
            "nan": int(np.isnan(b).sum()), "inf": int(np.isinf(b).sum()), "kept": kept, "mb": size / _MB}


def _summary(kept: dict[str, str]) -> str:
    if not kept:
        return "0"
    groups: dict[str, int] = {}
    for reason in kept.values():
        key = " ".join(reason.split()[:4]).rstrip(":,")
        groups[key] = groups.get(key, 0) + 1
    return f"{len(kept)}: " + "; ".join(f"{n}x {k}" for k, n in sorted(groups.items(), key=lambda kv: -kv[1]))


def _size(model) -> int:
    from onnxpress import _proto

    return len(_proto.to_bytes(model))


def benchmark(name: str, build: Callable, folder: Path) -> None:
    start = time.perf_counter()
    model, calibration, evaluation, how = build()
    reference = _run(model, evaluation, how)
    rows = [_row("fp32", reference, reference, {}, _size(model))]
    methods = [("onnxpress fp16 (no data)", lambda: _ours(model, None)),
               ("onnxpress fp16 (calibration)", lambda: _ours(model, calibration)),
               ("onnxconverter-common defaults", lambda: _theirs(model, False)),
               ("onnxconverter-common keep_io_types", lambda: _theirs(model, True))]
    failures = []
    for label, convert in methods:
        try:
            converted, kept = convert()
            rows.append(_row(label, reference, _run(converted, evaluation, how), kept, _size(converted)))
        except Exception as err:  # a converter or runtime refusing the model: listed under the table
            failures.append(f"{label}: {type(err).__name__}: {str(err).strip().splitlines()[0][:160]}")
    print(f"\n## {name} (outputs by {how}, {len(evaluation)} held-out feeds, {time.perf_counter() - start:.0f} s)")
    print(f"{'':36} {'max-abs':>9} {'mean-abs':>9} {'cosine':>10} {'NaN':>6} {'Inf':>6} {'MB':>7}  kept fp32")
    for row in rows:
        print(f"{row['row']:36} {row['max_abs']:9.3g} {row['mean_abs']:9.3g} {row['cosine']:10.7f} "
              f"{row['nan']:6d} {row['inf']:6d} {row['mb']:7.2f}  {_summary(row['kept'])}")
    for failure in failures:
        print(f"  failed: {failure}")


def main(argv: list[str] | None = None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        builders = {"mask_ln": _mask_ln, "mask_ln_outliers": lambda: _mask_ln(True), "digits": _digits, "resnet18": _resnet18, "minilm": _minilm}
        for name in args.models.split(","):
            build = builders.get(name) or (lambda name=name: _corpus(name, folder / "corpus"))
            say(name)
            try:
                benchmark(name, build, folder)
            except Exception as err:  # a model that cannot be built here is skipped with the reason
                print(f"\n## {name}: skipped: {type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
