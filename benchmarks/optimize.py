"""``onnxpress optimize`` side by side with every single-method result we and the peers reach.

For each model: ONNX Runtime's static and dynamic quantizers, NNCF, onnxpress's quantize pass
(run as ``benchmarks/quantize.py`` runs them, each alone in a fresh process), our best single
method among the optimizer's own method candidates, and the optimizer's choice under
``--min-cosine`` (default 0.99) on held-out data. Every model's latency is measured in the same
interleaved rounds at 1 and 2 threads; accuracy is the worst output cosine against fp32 on the
same held-out feeds. The optimizer runs twice with one cache: the second run's wall time against
the first is the cache's figure.

Verdict per model (the issue's bar): the optimized model is at least as accurate as the most
accurate peer result that is faster than fp32, and faster than every peer result that meets the
same budget.

    python benchmarks/optimize.py                       # minilm, lcnet_dynamo, yolo_dynamo
    python benchmarks/optimize.py --models minilm --quick
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _measure
import quantize as qb  # benchmarks/quantize.py: cases, peers, timing and scoring

MODELS = ("minilm", "lcnet_dynamo", "yolo_dynamo", "resnet18", "layout_cdla", "digits")
DEFAULT = ("minilm", "lcnet_dynamo", "yolo_dynamo")
PEERS = ("ORT static", "ORT dynamic", "NNCF", "onnxpress")


def worst_cosine(reference: list[dict], outputs: list[dict]) -> float:
    from onnxpress.metrics import compare

    return float(min(stats.score for stats in compare(reference, outputs).values()))


def run_optimize(case: qb.Case, min_cosine: float, time_budget: float | None, cache_folder: Path):
    """Two identical optimize runs with one cache: (result, first seconds, second seconds)."""
    import onnxpress as ox
    from onnxpress.cache import Cache
    from onnxpress.optimize import optimize

    timings, result = [], None
    for _ in range(2):
        started = time.perf_counter()
        result = optimize(ox.load(case.fp32), target="cpu", calibration=case.calibration, data=case.evaluation,
                          min_cosine=min_cosine, time_budget=time_budget, cache=Cache(cache_folder),
                          progress=lambda line: qb.say(case.name, line))
        timings.append(time.perf_counter() - started)
    return result, timings[0], timings[1]


def main(models: list[str], settings: qb.Settings, min_cosine: float, time_budget: float | None) -> None:
    import onnxpress as ox
    from onnxpress import runtime

    verdicts = []
    with tempfile.TemporaryDirectory(prefix="onnxpress-bench-optimize-") as scratch:
        for name in models:
            qb.say(name, "prepare")
            try:
                case = qb.prepare(name, settings, Path(scratch) / name)
            except qb.Skipped as reason:
                verdicts.append(f"{name}: skipped: {reason}")
                continue
            rows = [qb.Row("fp32", path=case.fp32)]
            for label, method, options in qb.methods(case):
                if label in PEERS:
                    qb.say(name, label)
                    rows.append(qb.quantize(case, label, method, options))
            qb.say(name, "optimize (twice: the second run reuses the cache)")
            result, first, second = run_optimize(case, min_cosine, time_budget, Path(scratch) / f"{name}-cache")
            print(result.table(), flush=True)
            print(f"{name}: optimize wall time {first:.1f} s; the second, cached run {second:.1f} s "
                  f"({second / first:.0%} of the first)\n", flush=True)
            peak = _measure.status_mb("VmHWM")  # this process's peak so far: the searches included
            if result.model is not None:
                path = case.folder / "optimized.onnx"
                ox.save(result.model, path)
                rows.append(qb.Row(f"optimize ({result.best.name})", path=path, seconds=first, peak_mb=peak,
                                   step_mb=0.0, note="search wall time; peak: the benchmark process"))
            single = [c for c in result.candidates if c.origin == "method" and c.meets and c.model is not None]
            if single:
                chosen = min(single, key=lambda c: c.latency_ms)
                path = case.folder / "best_single.onnx"
                ox.save(chosen.model, path)
                rows.append(qb.Row(f"our best single ({chosen.name})", path=path, seconds=chosen.seconds,
                                   peak_mb=peak, step_mb=0.0, note="built inside the search"))
            qb.say(name, "latency")
            qb.time_rows(case, rows, settings)
            qb.say(name, "accuracy")
            qb.score_rows(case, rows)
            reference = runtime.run_model(ox.load(case.fp32), case.evaluation)
            cosines = {row.label: worst_cosine(reference, runtime.run_model(ox.load(row.path), case.evaluation))
                       for row in rows if not row.error}
            print(qb.table(case, rows), flush=True)
            verdicts.append(verdict(name, rows, cosines, min_cosine, first, second))
    print("\n".join(verdicts))


def verdict(name: str, rows: list[qb.Row], cosines: dict[str, float], min_cosine: float, first: float,
            second: float) -> str:
    """The issue's bar on one model, with the figures it rests on (2-thread medians)."""
    def ms(row: qb.Row) -> float:
        return statistics.median(row.latency_ms[2])

    done = {row.label: row for row in rows if not row.error and row.latency_ms[2]}
    fp32 = done["fp32"]
    ours = next((row for label, row in done.items() if label.startswith("optimize")), None)
    if ours is None:
        return f"{name}: optimize found no model within cosine {min_cosine} (nothing saved)"
    peers = [row for label, row in done.items() if label in PEERS]
    faster = [row for row in peers if ms(row) < ms(fp32)]
    meeting = [row for row in peers if cosines[row.label] >= min_cosine]
    best_fast = max(faster, key=lambda row: cosines[row.label], default=None)
    accurate = best_fast is None or cosines[ours.label] >= cosines[best_fast.label] - 1e-6
    fastest = min(meeting, key=ms, default=None)
    quick = fastest is None or ms(ours) < ms(fastest)
    parts = [f"{name}: optimize {ours.label}: cosine {cosines[ours.label]:.5f}, {ms(ours):.3f} ms "
             f"({ms(ours) / ms(fp32):.2f}x fp32), {ours.size_mb:.2f} MB ({ours.size_mb / fp32.size_mb:.2f}x)"]
    parts.append("most accurate faster peer: " + ("none" if best_fast is None else
                 f"{best_fast.label} {cosines[best_fast.label]:.5f}") + (" -> as accurate: yes" if accurate else
                                                                          " -> as accurate: NO"))
    parts.append("fastest peer within budget: " + ("none" if fastest is None else
                 f"{fastest.label} {ms(fastest):.3f} ms ({ms(ours) / ms(fastest):.2f}x)") +
                 (" -> faster: yes" if quick else " -> faster: NO"))
    parts.append(f"search {first:.0f} s, cached rerun {second:.0f} s ({second / first:.0%})")
    return "; ".join(parts)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="less data and fewer timed runs")
    parser.add_argument("--min-cosine", type=float, default=0.99)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per optimize run")
    args = parser.parse_args()
    args.models = args.models.split(",")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


if __name__ == "__main__":
    arguments = _parse()
    main(arguments.models, qb.QUICK if arguments.quick else qb.FULL, arguments.min_cosine, arguments.time_budget)
