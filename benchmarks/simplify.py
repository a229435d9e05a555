"""Simplify side by side with plain onnxsim on the ONNX model zoo's light models.

For each model: the time of onnxpress's `simplify` pass (IR <-> protobuf round trip included)
and of `onnxsim.simplify` called directly, the node counts each leaves, and ONNX Runtime CPU
latency (median of repeated runs) of the original and the simplified model. Ratios are
printed per model and as medians. Run: `.venv/bin/python benchmarks/simplify.py`.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxsim

import onnxpress as ox
from onnxpress import feeds, runtime, targets


def main() -> None:
    models = sorted((Path(onnx.__file__).parent / "backend/test/data/light").glob("*.onnx"))
    profile = targets.load("cpu")
    print(f"{'model':<22}{'ours s':>8}{'onnxsim s':>10}{'ratio':>7}{'nodes in':>9}{'ours':>6}{'sim':>6}"
          f"{'lat in ms':>10}{'lat out ms':>11}{'speedup':>8}", flush=True)
    time_ratios, speedups = [], []
    for index, path in enumerate(models, 1):
        print(f"[{index}/{len(models)}] {path.stem} ...", file=sys.stderr, flush=True)
        model = ox.load(path)
        start = time.perf_counter()
        ours = ox.passes.Simplify()(model.clone()).model
        ours_s = time.perf_counter() - start
        proto = onnx.load(str(path))
        start = time.perf_counter()
        peer, _ = onnxsim.simplify(proto, check_n=0)
        peer_s = time.perf_counter() - start
        feed = feeds.random_feeds(model, 1)[0]
        before = runtime.Runner(profile).latency(model, feed).median_ms
        after = runtime.Runner(profile).latency(ours, feed).median_ms
        time_ratios.append(ours_s / peer_s)
        speedups.append(before / after)
        print(f"{path.stem:<22}{ours_s:>8.2f}{peer_s:>10.2f}{ours_s / peer_s:>7.2f}"
              f"{len(list(model.graph.all_nodes())):>9}{len(list(ours.graph.all_nodes())):>6}{len(peer.graph.node):>6}"
              f"{before:>10.2f}{after:>11.2f}{before / after:>8.2f}", flush=True)
    print(f"median time ratio ours/onnxsim: {statistics.median(time_ratios):.2f}; "
          f"median ORT speedup of the simplified model: {statistics.median(speedups):.2f}x")


if __name__ == "__main__":
    np.random.seed(0)
    main()
