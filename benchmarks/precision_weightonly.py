"""Weight-only int4/int8 on MiniLM: onnxpress's ``weightonly`` beside NNCF and ONNX Runtime.

Rows: the fp32 model; ONNX Runtime's ``quantize_dynamic`` (int8 weights, activations quantized
at run time: the latency reference); onnxpress ``WeightOnly`` at 4 bits, block 32 and 128, with
RTN, HQQ, GPTQ and AWQ (asymmetric, the pass's default; embeddings quantized), and at 8 bits
(RTN), each with the pass's own latency measurement choosing its ``accuracy_level`` at the
held-out sentences' shapes (its time includes it); NNCF ``compress_weights`` INT4_SYM and INT4_ASYM (group 32 and 128, its defaults
otherwise: the embedding table and the last layer in int8 backup, DequantizeLinear format)
and ONNX Runtime's ``MatMulNBitsQuantizer`` with RTN and HQQ (block 32 and 128, MatMul only:
its default leaves the embedding tables fp32; its HQQ zero points are flattened, the shape
ONNX Runtime 1.32's kernel takes). Every method gets the same calibration
sentences (the data-aware ones use them) and is scored on the same held-out sentences.

Columns: file size and its ratio to fp32 (MB are 2**20 bytes); mean cosine of the sentence
embeddings against fp32 on ``EVAL_SENTENCES``; CPU latency (ONNX Runtime, 2 intra-op
threads, batch 1, median of interleaved rounds) at 1 and 128 tokens, and its ratio to fp32 and
to dynamic int8; the method's wall time. The verdict lines give the size goal (<= 0.20x fp32
with embeddings quantized) and whether int4 weight-only is a size method at each shape.

Run: `.venv/bin/python benchmarks/precision_weightonly.py [--quick]` (``--quick``: block 32
only, fewer latency runs).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MB = 2 ** 20
THREADS = 2


def _size(path: Path) -> int:
    """Bytes of a model file and its external data files beside it."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def _save_proto(proto, path: Path) -> Path:
    import onnx

    onnx.save_model(proto, str(path))
    return path


def ours(source: Path, out: Path, calibration, **options) -> Path:
    import onnx_ir as ir

    import onnxpress as ox

    model = ox.load(source)
    result = ox.Pipeline([ox.passes.WeightOnly(**options)], accuracy_floor=0.0,
                         golden_samples=2).run(model, calibration=calibration)
    ir.passes.common.RemoveUnusedNodesPass()(result.model)
    ox.save(result.model, out)
    return out


def ort_dynamic(source: Path, out: Path, calibration) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def ort_nbits(source: Path, out: Path, calibration, *, algorithm: str, block_size: int) -> Path:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    model = onnx.load(str(source))
    config = (nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=4) if algorithm == "hqq"
              else nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False))
    quantizer = nbits.MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    result = quantizer.model.model
    if algorithm == "hqq":
        # ONNX Runtime 1.32's MatMulNBits kernel refuses the [N, k_blocks] float zero points its own
        # HQQ quantizer writes ("does not match attribute-derived shape [N·k_blocks]"): the same
        # values flattened, which it takes.
        from onnx import numpy_helper

        zero_points = {n.input[3] for n in result.graph.node if n.op_type == "MatMulNBits" and len(n.input) > 3}
        for index, tensor in enumerate(result.graph.initializer):
            if tensor.name in zero_points and len(tensor.dims) == 2 and tensor.data_type != 2:  # 2: uint8
                array = numpy_helper.to_array(tensor).reshape(-1)
                result.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    return _save_proto(result, out)


def nncf_int4(source: Path, out: Path, calibration, *, mode: str, group_size: int) -> Path:
    import nncf
    import onnx

    model = onnx.load(str(source))
    compressed = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode), group_size=group_size,
                                       ratio=1.0)
    return _save_proto(compressed, out)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _latency_feeds() -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    feeds = {}
    for tokens in (1, 128):
        ids = rng.integers(1000, 29000, (1, tokens)).astype(np.int64)
        feeds[tokens] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return feeds


def _cosine(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    values = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
              for a, b in zip(reference, got)]
    return float(np.mean(values))


def _table(rows: list[dict[str, Any]], fp32: dict[str, Any], dynamic: dict[str, Any]) -> str:
    head = (f"{'method':<34} {'MB':>7} {'x fp32':>7} {'cosine':>8} {'1 tok ms':>9} {'x fp32':>7} {'x dyn8':>7} "
            f"{'128 tok ms':>10} {'x fp32':>7} {'x dyn8':>7} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['name']:<34} failed: {row['error']}")
            continue
        lat = row["latency"]
        lines.append(
            f"{row['name']:<34} {row['bytes'] / MB:>7.1f} {row['bytes'] / fp32['bytes']:>7.3f} {row['cosine']:>8.5f} "
            f"{lat[1]:>9.3f} {lat[1] / fp32['latency'][1]:>7.2f} {lat[1] / dynamic['latency'][1]:>7.2f} "
            f"{lat[128]:>10.2f} {lat[128] / fp32['latency'][128]:>7.2f} {lat[128] / dynamic['latency'][128]:>7.2f} "
            f"{row['seconds']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="block 32 only, fewer latency runs")
    args = parser.parse_args(argv)

    import onnxpress as ox
    from onnxpress.samples import minilm as sample

    blocks = (32,) if args.quick else (32, 128)
    rounds, runs = (3, 5) if args.quick else (5, 10)
    calibration = sample.feeds(sample.CALIBRATION_SENTENCES[:64])
    evaluation = sample.feeds(sample.EVAL_SENTENCES)
    methods: list[tuple[str, Callable[..., Path]]] = [("ORT quantize_dynamic int8", ort_dynamic)]
    for block in blocks:
        for algorithm in ("rtn", "hqq", "gptq", "awq"):
            methods.append((f"onnxpress int4 b{block} {algorithm}",
                            lambda s, o, c, a=algorithm, b=block: ours(s, o, c, algorithm=a, block_size=b)))
    methods.append(("onnxpress int8 b32 rtn", lambda s, o, c: ours(s, o, c, bits=8, algorithm="rtn")))
    for block in blocks:
        for mode in ("INT4_SYM", "INT4_ASYM"):
            methods.append((f"NNCF {mode} g{block}", lambda s, o, c, m=mode, b=block: nncf_int4(s, o, c, mode=m,
                                                                                                  group_size=b)))
        for algorithm in ("rtn", "hqq"):
            methods.append((f"ORT MatMulNBits {algorithm} b{block}",
                            lambda s, o, c, a=algorithm, b=block: ort_nbits(s, o, c, algorithm=a, block_size=b)))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = folder / "fp32.onnx"
        ox.save(sample.export(), source)
        made: dict[str, tuple[Path, float]] = {"fp32": (source, 0.0)}
        failures: dict[str, str] = {}
        for index, (name, make) in enumerate(methods):
            out = folder / f"m{index}.onnx"
            start = time.perf_counter()
            try:
                make(source, out, calibration)
            except Exception as err:  # noqa: BLE001 - a peer failing is reported in its row, not fatal
                failures[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
                continue
            made[name] = (out, time.perf_counter() - start)
            print(f"made {name} in {made[name][1]:.1f} s", file=sys.stderr, flush=True)
        sessions = {}
        for name, (path, _) in made.items():
            try:
                sessions[name] = _session(path)
            except Exception as err:  # noqa: BLE001 - ONNX Runtime refusing a peer's file is reported in its row
                failures[name] = f"ONNX Runtime cannot load it: {str(err).splitlines()[0][:150]}"
        reference = [sessions["fp32"].run(None, feed)[0] for feed in evaluation]
        feeds = _latency_feeds()
        times: dict[str, dict[int, list[float]]] = {name: {1: [], 128: []} for name in sessions}
        for _ in range(rounds):  # interleaved: slow drift of a shared machine hits every method alike
            for name, session in sessions.items():
                for tokens, feed in feeds.items():
                    session.run(None, feed)
                    for _ in range(runs):
                        start = time.perf_counter()
                        session.run(None, feed)
                        times[name][tokens].append((time.perf_counter() - start) * 1000)
        rows = []
        for name, session in sessions.items():
            got = [session.run(None, feed)[0] for feed in evaluation]
            rows.append({"name": name, "bytes": _size(made[name][0]), "cosine": _cosine(reference, got),
                         "latency": {t: statistics.median(v) for t, v in times[name].items()},
                         "seconds": made[name][1]})
        rows += [{"name": name, "error": error} for name, error in failures.items()]
    by_name = {row["name"]: row for row in rows}
    fp32, dynamic = by_name["fp32"], by_name["ORT quantize_dynamic int8"]
    print(f"weightonly: MiniLM (all-MiniLM-L6-v2), {len(calibration)} calibration / {len(evaluation)} held-out "
          f"sentences, CPU {THREADS} threads")
    print(_table(rows, fp32, dynamic))
    ours32 = [r for r in rows if r["name"].startswith("onnxpress int4 b32") and "error" not in r]
    if ours32:
        best = max(ours32, key=lambda r: r["cosine"])
        ratio = best["bytes"] / fp32["bytes"]
        print(f"size goal (<= 0.20x fp32, embeddings quantized): {best['name']} at {ratio:.3f}x "
              f"{'MET' if ratio <= 0.20 else 'MISSED'}; best int4 cosine {best['cosine']:.5f}")
        for tokens in (1, 128):
            slower = best["latency"][tokens] / dynamic["latency"][tokens]
            verdict = "a size method at this shape" if slower > 1.1 else "as fast as dynamic int8 or faster"
            against = best["latency"][tokens] / fp32["latency"][tokens]
            print(f"{tokens} token(s): int4 weight-only at {against:.2f}x fp32 and {slower:.2f}x dynamic int8: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
