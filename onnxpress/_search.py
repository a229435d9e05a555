"""The per-layer part of ``optimize``: which layers there are, what each decision costs them in
accuracy (measured sensitivity times simulated local error), and the allocation under a budget.

A *layer* is a Conv, MatMul or Gemm with a constant weight. Each layer can take one *decision*:

- ``float``: left as it is;
- ``int8``: weights and activations to 8 bits by the ``quantize`` pass;
- ``int4``: the weight to 4-bit blocks by ``weightonly`` (MatMul and Gemm);
- ``lowrank``: factored by ``lowrank`` (half the layer's parameters), the factors float;
- ``lowrank+int8``: factored, and the factors int8.

The accuracy cost of decision d on layer L is predicted as ``gain(L) * e(L, d)^2``:

- ``e(L, d)`` is the relative error d makes in L's own output, simulated in numpy on the
  layer's real inputs (captured from calibration data): the integer grids ONNX Runtime uses
  (per-channel int8 weights and a per-tensor 8-bit activation range; 4-bit blocks of 32 along
  K), or the truncated SVD;
- ``gain(L)`` is measured: the model runs once with Gaussian noise of relative size ``eps``
  added to L's output (every layer through one session whose extra inputs switch the noise on
  one layer at a time), and ``gain = (1 - score) / eps^2`` on held-back calibration feeds.

The output's error from independent layer errors adds up in ``1 - cosine`` to first order, so
the allocation is a multiple-choice knapsack: maximise the summed value (latency or bytes saved)
subject to the summed predicted cost staying under the budget, solved exactly by dynamic
programming over the budget split into ``_BINS`` units.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import modelinfo, runtime
from onnxpress.metrics import compare
from onnxpress.progress import Report, Tracker, track

logger = logging.getLogger(__name__)

FLOAT, INT8, INT4, LOWRANK, LOWRANK_INT8 = "float", "int8", "int4", "lowrank", "lowrank+int8"
DECISIONS = (FLOAT, INT8, INT4, LOWRANK, LOWRANK_INT8)
INT4_BLOCK = 32
LOWRANK_KEPT = 0.5  # share of a factored layer's parameters kept
_ROWS = 4096  # activation rows kept per layer for the simulations
_BINS = 400
_NOISE_EPS = 0.05


@dataclass
class Layer:
    """One weight layer of the model and what can be done to it.

    ``weight_kn``: the weight as ``[K, N]`` (``y = x @ W``) for MatMul and Gemm, or as
    ``[I/g * kh * kw, O]`` for a Conv. ``macs``: multiply-accumulates per sample (from the
    captured output's size). ``choices``: the decisions this layer can take.
    """

    name: str
    op_type: str
    input: str
    output: str
    weight_kn: np.ndarray
    choices: tuple[str, ...] = (FLOAT, INT8)
    macs: float = 0.0
    gain: float = 1.0
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return int(self.weight_kn.size)


def find_layers(model: ir.Model, *, decisions: Sequence[str], min_elements: int = 256) -> list[Layer]:
    """The named weight layers of the main graph, in graph order, with the decisions they admit."""
    layers, seen = [], set()
    for node in model.graph:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or not node.name or node.name in seen:
            continue
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            continue
        tensor = node.inputs[1].const_value
        weight = tensor.numpy() if tensor is not None else None
        if weight is None or weight.size < min_elements or weight.dtype != np.float32:
            continue
        weight_kn = _as_kn(node, weight)
        if weight_kn is None:
            continue
        seen.add(node.name)
        choices = [FLOAT]
        if INT8 in decisions:
            choices.append(INT8)
        if node.op_type in ("MatMul", "Gemm"):
            k, n = weight_kn.shape
            if INT4 in decisions and k >= INT4_BLOCK and weight.size >= 4096:
                choices.append(INT4)
            factorable = _lowrank_rank(k, n) >= 8 and weight.size >= 4096
            choices += [d for d in (LOWRANK, LOWRANK_INT8) if d in decisions and factorable]
        layers.append(Layer(node.name, node.op_type, node.inputs[0].name, node.outputs[0].name, weight_kn,
                            tuple(choices)))
    return layers


def _as_kn(node: ir.Node, weight: np.ndarray) -> np.ndarray | None:
    if node.op_type == "MatMul":
        return weight if weight.ndim == 2 else None
    if node.op_type == "Gemm":
        if weight.ndim != 2:
            return None
        trans_b = node.attributes.get("transB")
        return weight.T if trans_b is not None and trans_b.as_int() else weight
    if weight.ndim < 3:
        return None
    return weight.reshape(weight.shape[0], -1).T  # Conv [O, I/g, kh, kw] -> [I/g*kh*kw, O]


def _lowrank_rank(k: int, n: int) -> int:
    """The rank that keeps ``LOWRANK_KEPT`` of a K x N layer's parameters."""
    return int(LOWRANK_KEPT * k * n / (k + n))


# ----------------------------------------------------------------------------- capture


def capture(runner: runtime.Runner, model: ir.Model, layers: list[Layer], feeds: Sequence[dict],
            progress: Report | None = None) -> None:
    """Simulate every decision on each layer's captured inputs: fills ``layer.errors`` (relative
    output error per decision) and ``layer.macs``; ``progress`` is told how many layers are done
    (a ``simulate`` step)."""
    names = {name for layer in layers for name in (layer.input, layer.output)}
    exposed, _ = modelinfo.expose_intermediates(model, names)
    # a layer reading a graph input reads it from the feed
    runs = [{**feed, **run} for feed, run in zip(feeds, runner.outputs(exposed, feeds))]
    for layer in track(layers, progress, "simulate", unit="layers"):
        inputs = [run[layer.input] for run in runs if layer.input in run]
        outputs = [run[layer.output] for run in runs if layer.output in run]
        if not inputs or not outputs:
            layer.errors = {}
            continue
        k = layer.weight_kn.shape[0]
        per_sample = outputs[0].size // max(1, outputs[0].shape[0]) if outputs[0].ndim else 1
        layer.macs = float(per_sample) * k
        layer.errors = _errors(layer, inputs)


def _errors(layer: Layer, inputs: list[np.ndarray]) -> dict[str, float]:
    weight = layer.weight_kn.astype(np.float64)
    x_q_error = _activation_error(inputs)
    w8 = _per_channel_int8(weight)
    errors = {FLOAT: 0.0}
    if layer.op_type == "Conv":  # no im2col here: the weight's and the input's errors add in quadrature
        w_error = float(np.linalg.norm(w8 - weight) / max(np.linalg.norm(weight), 1e-30))
        errors[INT8] = float(np.hypot(w_error, x_q_error[0]))
        return errors
    rows = _rows(inputs, weight.shape[0])
    reference = rows @ weight
    norm = max(float(np.linalg.norm(reference)), 1e-30)

    def relative(approx_rows: np.ndarray, approx_weight: np.ndarray) -> float:
        return float(np.linalg.norm(approx_rows @ approx_weight - reference) / norm)

    rows_q = _fake_quant_rows(rows, x_q_error[1])
    errors[INT8] = relative(rows_q, w8)
    if INT4 in layer.choices:
        errors[INT4] = relative(rows, _blockwise_4bit(weight))
    if LOWRANK in layer.choices or LOWRANK_INT8 in layer.choices:
        rank = _lowrank_rank(*weight.shape)
        u, s, vt = np.linalg.svd(weight, full_matrices=False)
        factored = (u[:, :rank] * s[:rank]) @ vt[:rank]
        errors[LOWRANK] = relative(rows, factored)
        errors[LOWRANK_INT8] = float(np.hypot(errors[LOWRANK], errors[INT8]))
    return errors


def _rows(inputs: list[np.ndarray], k: int) -> np.ndarray:
    rows = np.concatenate([np.asarray(x, np.float64).reshape(-1, k) for x in inputs if x.size % k == 0])
    if len(rows) > _ROWS:
        rows = rows[np.linspace(0, len(rows) - 1, _ROWS).astype(int)]
    return rows


def _blockwise_4bit(weight_kn: np.ndarray) -> np.ndarray:
    """The weight rounded to asymmetric 4-bit blocks of ``INT4_BLOCK`` along K (MatMulNBits'
    layout, plain rounding: the pass's AWQ/HQQ fits do better), dequantized."""
    k, n = weight_kn.shape
    padded = -(-k // INT4_BLOCK) * INT4_BLOCK
    blocks = np.zeros((padded, n))
    blocks[:k] = weight_kn
    blocks = blocks.reshape(padded // INT4_BLOCK, INT4_BLOCK, n)
    low = np.minimum(blocks.min(axis=1, keepdims=True), 0.0)
    high = np.maximum(blocks.max(axis=1, keepdims=True), 0.0)
    scale = np.where(high > low, (high - low) / 15.0, 1.0)
    zero = np.clip(np.round(-low / scale), 0, 15)
    rounded = (np.clip(np.round(blocks / scale) + zero, 0, 15) - zero) * scale
    return rounded.reshape(padded, n)[:k]


def _per_channel_int8(weight_kn: np.ndarray) -> np.ndarray:
    """The weight on symmetric int8 per output channel (the columns), dequantized."""
    scale = np.abs(weight_kn).max(axis=0) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return np.clip(np.round(weight_kn / scale), -127, 127) * scale


def _activation_error(inputs: list[np.ndarray]) -> tuple[float, tuple[float, float]]:
    """Relative error of an asymmetric 8-bit per-tensor range over the inputs (min/max), and the range."""
    low = min(0.0, min(float(np.min(x)) for x in inputs))
    high = max(0.0, max(float(np.max(x)) for x in inputs))
    values = np.concatenate([np.asarray(x, np.float64).ravel() for x in inputs])
    quantized = _fake_quant_rows(values, (low, high))
    return float(np.linalg.norm(quantized - values) / max(np.linalg.norm(values), 1e-30)), (low, high)


def _fake_quant_rows(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    scale = (high - low) / 255.0 or 1.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(values / scale) + zero, 0, 255) - zero) * scale


# ----------------------------------------------------------------------------- sensitivity


def noise_model(model: ir.Model, layers: list[Layer]) -> tuple[ir.Model, dict[str, str]]:
    """A copy of ``model`` where each layer's output gets ``N(0, 1) * s`` added, ``s`` a new scalar
    input (0: no noise). Returns the model and layer name -> input name."""
    copy = model.clone()
    producers = {v.name: v for node in copy.graph for v in node.outputs if v.name}
    switches = {}
    for index, layer in enumerate(layers):
        value = producers.get(layer.output)
        if value is None or value in copy.graph.outputs:
            continue  # a graph output is compared directly: noise there is not a sensitivity
        name = f"onnxpress_noise_{index}"
        scale = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT))
        copy.graph.inputs.append(scale)
        consumers = list(value.uses())
        noise = ir.node("RandomNormalLike", [value], attributes={"seed": float(index + 1)},
                        name=f"{name}_draw")
        scaled = ir.node("Mul", [noise.outputs[0], scale], name=f"{name}_scale")
        added = ir.node("Add", [value, scaled.outputs[0]], name=f"{name}_add")
        added.outputs[0].name = f"{name}_out"
        copy.graph.insert_after(value.producer(), (noise, scaled, added))
        for user, position in consumers:
            user.replace_input_with(position, added.outputs[0])
        switches[layer.name] = name
    return copy, switches


def measure_gains(runner: runtime.Runner, model: ir.Model, layers: list[Layer], feeds: Sequence[dict],
                  reference: Sequence[dict], score: Callable[[dict], float],
                  progress: Report | None = None) -> None:
    """Measure each layer's ``gain``: ``(1 - score) / eps^2`` with noise of relative size ``eps``
    on its output alone (one session; the noise is switched per layer through extra inputs).

    ``progress`` is told how many layers are measured (a ``sensitivity`` step). The noisy runs
    of every layer go to ONNX Runtime as one batch (one session: the seeded noise draws follow
    one another), so the step starts, waits for that batch, then counts the layers judged.
    """
    rms = _output_rms(runner, model, layers, feeds)
    noisy, switches = noise_model(model, layers)
    off = {name: np.zeros((), np.float32) for name in switches.values()}
    batch = []
    order = [layer for layer in layers if layer.name in switches and rms.get(layer.name, 0.0) > 0]
    for layer in order:
        on = dict(off)
        on[switches[layer.name]] = np.asarray(_NOISE_EPS * rms[layer.name], np.float32)
        batch.extend({**feed, **on} for feed in feeds)
    if not batch:
        return
    with Tracker(progress, "sensitivity", len(order), "layers") as step:
        outputs = runner.outputs(noisy, batch)
        per = len(feeds)
        for index, layer in enumerate(order):
            stats = compare(reference, outputs[index * per:(index + 1) * per])
            drop = max(0.0, 1.0 - score(stats))
            layer.gain = max(drop / _NOISE_EPS ** 2, 1e-6)
            step.advance()


def _output_rms(runner: runtime.Runner, model: ir.Model, layers: list[Layer], feeds: Sequence[dict]) -> dict[str, float]:
    runs = runner.outputs(modelinfo.expose_intermediates(model, {layer.output for layer in layers})[0], feeds)
    return {layer.name: float(np.sqrt(np.mean([np.mean(np.square(run[layer.output], dtype=np.float64))
                                               for run in runs if layer.output in run] or [0.0])))
            for layer in layers}


# ----------------------------------------------------------------------------- allocation


@dataclass
class Plan:
    """An allocation: the decision per layer, with its predicted cost and value."""

    decisions: dict[str, str]
    predicted_drop: float
    value: float
    budget: float

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for decision in self.decisions.values():
            found[decision] = found.get(decision, 0) + 1
        return found


def allocate(layers: list[Layer], cost: Callable[[Layer, str], float], value: Callable[[Layer, str], float],
             budget: float, fixed: dict[str, str] | None = None) -> Plan:
    """The decisions that maximise the summed ``value`` with the summed ``cost`` within ``budget``
    (multiple-choice knapsack, exact on ``_BINS`` units of the budget). ``fixed`` pins layers."""
    fixed = fixed or {}
    unit = budget / _BINS if budget > 0 else 1.0
    width = _BINS + 1
    best = np.full(width, -np.inf)
    best[0] = 0.0
    choice_rows = []
    for layer in layers:
        options = [fixed[layer.name]] if layer.name in fixed else list(layer.choices)
        new = np.full(width, -np.inf)
        picked = np.zeros(width, np.int16)
        for index, decision in enumerate(options):
            weight = cost(layer, decision)
            steps = int(np.ceil(weight / unit - 1e-9)) if weight > 0 else 0
            if steps >= width:
                continue
            shifted = np.full(width, -np.inf)
            shifted[steps:] = best[:width - steps] + value(layer, decision)
            better = shifted > new
            new[better] = shifted[better]
            picked[better] = index
        best = new
        choice_rows.append((layer, options, picked))
    at = int(np.argmax(best))
    total = float(best[at])
    decisions: dict[str, str] = {}
    predicted = 0.0
    for layer, options, picked in reversed(choice_rows):
        decision = options[int(picked[at])]
        decisions[layer.name] = decision
        weight = cost(layer, decision)
        predicted += weight
        at -= int(np.ceil(weight / unit - 1e-9)) if weight > 0 else 0
    ordered = {layer.name: decisions[layer.name] for layer in layers}
    return Plan(ordered, predicted, total, budget)


def describe(layer: Layer, decision: str, cost: float, value: float, unit: str) -> dict[str, Any]:
    """One row of the report's per-layer table."""
    return {"layer": layer.name, "op": layer.op_type, "params": layer.params, "decision": decision,
            "local_error": round(layer.errors.get(decision, float("nan")), 6), "gain": round(layer.gain, 4),
            "predicted_drop": float(f"{cost:.3g}"), "value": float(f"{value:.4g}"), "unit": unit}
