"""Pruning, side by side in one run.

1. Structured pruning of 30 % of the prunable channels of the digits CNN and of ResNet-18
   (seeded random weights): FLOPs, size and CPU latency (batch 1, 1 thread, median over
   interleaved rounds of many runs) of the pruned model next to the unpruned one.
2. Criteria at equal sparsity: importance vs magnitude vs random, on the digits CNN (top-1
   accuracy on held-out digits; structured 30 % and unstructured 50 %) and on MiniLM's MatMul
   weights (unstructured 50 % and 2:4; mean embedding cosine vs fp32 on held-out sentences).

Run: ``.venv/bin/python benchmarks/prune.py``.
"""
from __future__ import annotations

import statistics
import sys

import numpy as np

import onnxpress as ox
from onnxpress import runtime, samples, targets
from onnxpress.metrics import accuracy, compare
from onnxpress.modelinfo import saved_size as model_size


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _latency(models: list, feed: dict, rounds: int = 5) -> list[float]:
    """Median latency per model over interleaved rounds (1 thread), so drift hits all alike."""
    profile = targets.load("cpu")
    one_thread = targets.Target(**{**profile.__dict__, "intra_op_threads": 1, "min_runs": 50})
    results = [[] for _ in models]
    for _ in range(rounds):
        for index, model in enumerate(models):
            results[index].append(runtime.Runner(one_thread).latency(model, feed).median_ms)
    return [statistics.median(r) for r in results]


def structured_speed() -> None:
    import torch

    from onnxpress.samples import architectures

    cases = [("digits CNN", ox.load(samples.DIGITS_MODEL), list(samples.digits_calibration()),
              {"input": np.load(samples.DIGITS_EVAL)["input"][:1]})]
    rng = np.random.default_rng(0)
    _say("exporting ResNet-18 ...")
    resnet = ox.export(architectures.resnet18(), torch.randn(1, 3, 224, 224))
    images = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(16)]
    cases.append(("ResNet-18", resnet, images, images[0]))
    print("structured pruning, 30 % of prunable channels (importance)")
    print(f"{'model':<12}{'variant':<10}{'MFLOPs':>9}{'size MB':>9}{'latency ms':>12}{'speed-up':>10}{'layers':>8}")
    for name, model, calibration, feed in cases:
        _say(f"[{name}] pruning ...")
        prune = ox.passes.Prune(granularity="structured", criterion="importance", sparsity=0.3)
        outcome = ox.Pipeline([prune], golden_samples=2).run(model, calibration=calibration)
        pruned, stats = outcome.model, outcome.records[0].statistics
        _say(f"[{name}] timing ...")
        dense_ms, pruned_ms = _latency([model, pruned], feed)
        print(f"{name:<12}{'dense':<10}{stats['flops_before'] / 1e6:>9.1f}{model_size(model) / 2**20:>9.2f}"
              f"{dense_ms:>12.3f}{1.0:>10.2f}{'':>8}")
        print(f"{name:<12}{'pruned':<10}{stats['flops_after'] / 1e6:>9.1f}{model_size(pruned) / 2**20:>9.2f}"
              f"{pruned_ms:>12.3f}{dense_ms / pruned_ms:>10.2f}{stats['pruned_layers']:>8}")


def criteria() -> None:
    from onnxpress.samples import minilm

    digits = ox.load(samples.DIGITS_MODEL)
    calibration = samples.digits_calibration()
    evaluation, labels = samples.digits_eval()
    evaluation = list(evaluation)
    _say("exporting MiniLM ...")
    encoder = minilm.export()
    sentences = minilm.feeds(minilm.CALIBRATION_SENTENCES)
    held_out = minilm.feeds(minilm.EVAL_SENTENCES)
    reference = runtime.run_model(encoder, held_out)
    settings = [
        ("digits CNN", "structured 30 %", dict(granularity="structured", sparsity=0.3)),
        ("digits CNN", "unstructured 50 %", dict(granularity="unstructured", sparsity=0.5)),
        ("MiniLM", "unstructured 50 %", dict(granularity="unstructured", sparsity=0.5, op_types=["MatMul"])),
        ("MiniLM", "2:4", dict(granularity="n:m", n=2, m=4, op_types=["MatMul"])),
    ]
    print()
    print("criteria at equal sparsity (digits: top-1 accuracy, fp32 "
          f"{accuracy(runtime.run_model(digits, evaluation), labels):.4f}; MiniLM: embedding cosine vs fp32)")
    print(f"{'model':<12}{'setting':<20}{'importance':>12}{'magnitude':>12}{'random':>12}{'deflate x':>11}")
    for model_name, setting, options in settings:
        row = []
        deflate = None
        for criterion in ("importance", "magnitude", "random"):
            _say(f"[{model_name}] {setting} {criterion} ...")
            prune = ox.passes.Prune(criterion=criterion, **options)
            if model_name == "MiniLM":
                result = ox.Pipeline([prune], golden_samples=0, check=False).run(encoder, calibration=sentences)
                row.append(compare(reference, runtime.run_model(result.model, held_out))["sentence_embedding"].cosine)
            else:
                result = ox.Pipeline([prune], golden_samples=0).run(digits, calibration=calibration)
                row.append(accuracy(runtime.run_model(result.model, evaluation), labels))
            stats = result.records[0].statistics
            if criterion == "importance" and stats["deflated_bytes_before"]:
                deflate = stats["deflated_bytes_after"] / stats["deflated_bytes_before"]
        print(f"{model_name:<12}{setting:<20}{row[0]:>12.4f}{row[1]:>12.4f}{row[2]:>12.4f}"
              f"{'' if deflate is None else f'{deflate:.2f}':>11}")


if __name__ == "__main__":
    structured_speed()
    criteria()
