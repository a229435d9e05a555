"""Low-rank factorization of MiniLM's 36 MatMul weights, side by side, in one run.

Rows: plain SVD at one uniform rank; activation-aware (whitened by the calibration activations'
second moments) at the same uniform rank; activation-aware with the parameter budget allocated
across layers. Each at 50 % and 75 % of the factored layers' parameters. Columns: mean
embedding cosine vs fp32 on held-out sentences, model size, CPU latency (median, 1 thread) and
the pass's own wall time. Calibration: the 100 sentences of ``samples.minilm``; evaluation: the
40 others. Run: ``.venv/bin/python benchmarks/lowrank.py``.
"""
from __future__ import annotations

import argparse
import sys
import time


import onnxpress as ox
from onnxpress import runtime, targets
from onnxpress.metrics import compare
from onnxpress.samples import minilm
from onnxpress.modelinfo import saved_size as model_size


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _uniform_rank(model, share: float) -> int:
    """The one rank at which all 2-D MatMul weights keep ``share`` of their parameters."""
    shapes = [n.inputs[1].const_value.shape for n in model.graph
              if n.op_type == "MatMul" and n.inputs[1].const_value is not None and len(n.inputs[1].const_value.shape) == 2]
    dense = sum(k * n for k, n in shapes)
    per_rank = sum(k + n for k, n in shapes)
    return int(share * dense / per_rank)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shares", default="0.5,0.75")
    args = parser.parse_args()
    _say("exporting MiniLM ...")
    model = minilm.export()
    calibration = minilm.feeds(minilm.CALIBRATION_SENTENCES)
    evaluation = minilm.feeds(minilm.EVAL_SENTENCES)
    reference = runtime.run_model(model, evaluation)
    profile = targets.load("cpu")
    one_thread = targets.Target(**{**profile.__dict__, "intra_op_threads": 1})
    feed = evaluation[5]
    fp32_latency = runtime.Runner(one_thread).latency(model, feed).median_ms
    fp32_size = model_size(model)
    rows = [("fp32", "-", 1.0, fp32_size, fp32_latency, 0.0, 1.0)]
    for share in (float(s) for s in args.shares.split(",")):
        rank = _uniform_rank(model, share)
        variants = [
            ("plain SVD, uniform", ox.passes.LowRank(method="svd", rank=rank, min_saving=0.0, op_types=["MatMul"])),
            ("activation, uniform", ox.passes.LowRank(method="activation", rank=rank, min_saving=0.0,
                                                      op_types=["MatMul"])),
            ("activation, allocated", ox.passes.LowRank(method="activation", budget=share, min_saving=0.0,
                                                        op_types=["MatMul"])),
        ]
        for name, lowrank in variants:
            _say(f"[{share:.0%}] {name} ...")
            start = time.perf_counter()
            result = ox.Pipeline([lowrank], golden_samples=0, check=False).run(model, calibration=calibration)
            seconds = time.perf_counter() - start
            outputs = runtime.run_model(result.model, evaluation)
            cosine = compare(reference, outputs)["sentence_embedding"].cosine
            latency = runtime.Runner(one_thread).latency(result.model, feed).median_ms
            kept = result.records[0].statistics["params_kept"]
            rows.append((name, f"{share:.0%}", kept, model_size(result.model), latency, seconds, cosine))
    print(f"{'variant':<24}{'budget':>8}{'kept':>7}{'size MB':>9}{'size x':>8}{'lat ms':>8}{'speed x':>8}"
          f"{'pass s':>8}{'cosine':>9}")
    for name, share, kept, size, latency, seconds, cosine in rows:
        print(f"{name:<24}{share:>8}{kept:>7.2f}{size / 2**20:>9.2f}{size / fp32_size:>8.2f}{latency:>8.2f}"
              f"{fp32_latency / latency:>8.2f}{seconds:>8.1f}{cosine:>9.4f}")


if __name__ == "__main__":
    main()
