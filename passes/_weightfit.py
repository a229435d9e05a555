"""Calibrated block-wise grids for the weightonly pass: GPTQ error feedback and AWQ scaling.

GPTQ (Frantar et al. 2023) rounds a layer's weights one input row at a time and spreads each
row's rounding error over the rows not yet rounded, through the inverse second moments of the
layer's inputs; with groups, each group's scale and zero point are chosen when the sweep
reaches it (``_compensate.grouped``). Layers are done in graph order on the inputs the
already-quantized layers give (``_compensate.refit``), against the float model's outputs.

AWQ (Lin et al. 2024) protects the weights of input channels with large activations: each
input channel is scaled by ``s = rms(x)^α`` in the weights and by ``1/s`` in the activation, so
the product is unchanged in float and the salient rows get finer grid steps. ``α`` is searched
per activation (layers reading one activation share its ``s``) to minimise the quantized
layers' output error ``tr(ΔᵀCΔ)`` with ``C = Σ xᵀx`` over calibration rows. ``1/s`` goes into the
LayerNormalization producing the activation when it feeds only these layers, else into an
inserted ``Mul``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from onnxpress import _weights
from onnxpress.passes import _blockwise, _compensate
from onnxpress.passes._common import constant, set_initializer
from onnxpress.progress import track

logger = logging.getLogger(__name__)

GPTQ_DAMPING = 0.01  # GPTQ's own damping: 1 % of the mean diagonal of the inputs' second moments
AWQ_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # AWQ's grid of 20 is finer; 11 measured enough
AWQ_SCALE_LIMIT = 1e4


@dataclass
class Entry:
    """One layer the weightonly pass quantizes.

    ``tensor`` is the weight as stored (a MatMul's ``W`` [K, N], a table [rows, K]), read on
    use so that a large model's weights stay on disk; ``weight`` is it as ``rows x K`` (a MatMul's
    ``W`` transposed), float64, or what AWQ set; ``grids`` the grid of each bit width;
    ``bias_add`` the Add of a rewritten Gemm's bias.
    """

    name: str
    kind: str  # "matmul" | "embedding"
    tensor: ir.TensorProtocol
    bias_add: str | None = None
    grids: dict[int, _blockwise.Grid] = field(default_factory=dict)
    algorithm: str = "rtn"
    scaled: np.ndarray | None = None  # AWQ's scaled weight, rows x K

    @property
    def weight(self) -> np.ndarray:
        if self.scaled is not None:
            return self.scaled
        array = _weights.read(self.tensor)
        return (array.T if self.kind == "matmul" else array).astype(np.float64)

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self.scaled = value

    @property
    def size(self) -> int:
        return int(np.prod(tuple(self.tensor.shape)))


def gptq(model: ir.Model, entries: list[Entry], feeds, runner, *, bits: int, block_size: int, symmetric: bool,
         limit: int | None, say: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Refit the ``bits`` grids of the MatMul ``entries`` with GPTQ, on a copy of ``model``.

    The copy (the student) starts with every entry's weight at its current grid (RTN or HQQ),
    so each layer sees the inputs the quantized layers before it give; a layer takes GPTQ's grid
    only when it beats that baseline on calibration rows held back from the fit
    (``_compensate.refit``). Weights read by more than one node keep their grids. Updates
    ``entries``' grids in place; returns each layer's fit statistics by name.
    """
    student = model.clone()
    by_name = {node.name: node for node in student.graph}
    teacher = {node.name: node for node in model.graph}
    for entry in entries:  # the student computes with the quantized weights from the start
        node = by_name[entry.name]
        grid = entry.grids[bits]
        index = 1 if entry.kind == "matmul" else 0
        array = grid.dequantized().T if entry.kind == "matmul" else grid.dequantized()
        set_initializer(student.graph, node, index, np.ascontiguousarray(array, np.float32),
                        f"{node.inputs[index].name}_baseline")
    top = _blockwise.levels(bits)
    won: dict[str, _blockwise.Grid] = {}
    layers = []
    for entry in entries:
        node = by_name[entry.name]
        original = teacher[entry.name].inputs[1]
        if entry.kind != "matmul" or not original.is_initializer() or len(original.uses()) != 1:
            continue
        weight = entry.weight.T
        baseline = entry.grids[bits].dequantized().T.astype(np.float64)

        def choose(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return _blockwise.minmax_grid(rows, bits, symmetric, axis=0)

        def fit(best, damped, name=entry.name, node=node):
            fitted, scales, zeros = _compensate.grouped(best, damped, block_size, choose, top)
            grid = _blockwise.make_grid(fitted.T, scales.T, zeros.T, bits, block_size, symmetric)

            def write():
                set_initializer(student.graph, node, 1, np.ascontiguousarray(grid.dequantized().T),
                                f"{node.inputs[1].name}_gptq")
                won[name] = grid
            return fitted, write

        layers.append(_compensate.Layer(
            key=entry.name, weight=weight, start=baseline, baseline=baseline,
            teacher_input=teacher[entry.name].inputs[0].name, student_input=node.inputs[0].name,
            teacher_rows=_compensate.flat_rows, student_rows=_compensate.flat_rows, fit=fit, owns=(entry.name,)))
    if not layers:
        return {}
    fits = _compensate.refit(model, student, layers, feeds, runner, dampings=(GPTQ_DAMPING,), limit=limit, say=say)
    for entry in entries:
        if entry.name in won:
            entry.grids[bits] = won[entry.name]
            entry.algorithm = "gptq"
    return fits


def awq_groups(model: ir.Model, entries: list[Entry]) -> dict[str, list[Entry]]:
    """The MatMul entries grouped by their activation input, each weight read by its node only."""
    by_name = {node.name: node for node in model.graph}
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        node = by_name[entry.name]
        if entry.kind == "matmul" and node.inputs[0] is not None and node.inputs[0].name \
                and node.inputs[1].is_initializer() and len(node.inputs[1].uses()) == 1:
            groups.setdefault(node.inputs[0].name, []).append(entry)
    return groups


def awq(model: ir.Model, groups: dict[str, list[Entry]], stats, *, bits: int,
        quantize: Callable[[np.ndarray], _blockwise.Grid],
        say: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Scale each group's input channels AWQ's way, in place, where it lowers the output error.

    ``stats`` holds each activation's channel second moments (full matrix); ``quantize`` turns a
    ``rows x K`` weight into its grid. The group's ``α`` is the one of ``AWQ_ALPHAS`` with the
    least summed relative error ``tr(ΔᵀCΔ) / tr(WᵀCW)`` (``α = 0`` is plain rounding, so the
    search never does worse on these rows). Entries get the scaled weights and their grids.
    Returns per activation the chosen ``α``, the errors and where ``1/s`` went; ``say`` is told
    how many groups are searched (an ``awq`` step).
    """
    report: dict[str, dict[str, Any]] = {}
    for activation, members in track(groups.items(), say, "awq", unit="groups"):
        tensor = stats.tensors.get(activation)
        if tensor is None or tensor.second_moment is None or not tensor.channel_rows:
            continue
        gram = tensor.second_moment / tensor.channel_rows
        if gram.shape[0] != members[0].weight.shape[1] or not np.isfinite(gram).all():
            continue
        rms = np.sqrt(np.maximum(np.diag(gram), 1e-12))
        weights = [m.weight.T for m in members]  # [K, N]
        energies = [max(float(np.sum(w * (gram @ w))), 1e-30) for w in weights]
        errors, scales, grids = {}, {}, {}
        for alpha in AWQ_ALPHAS:
            scale = rms ** alpha
            scale = np.clip(scale / np.sqrt(scale.max() * scale.min()), 1.0 / AWQ_SCALE_LIMIT, AWQ_SCALE_LIMIT)
            found, total = [], 0.0
            for weight, energy in zip(weights, energies):
                grid = quantize((weight * scale[:, None]).T)
                delta = weight - grid.dequantized().T / scale[:, None]
                total += float(np.sum(delta * (gram @ delta))) / energy
                found.append(grid)
            errors[alpha], scales[alpha], grids[alpha] = total / len(members), scale, found
        alpha = min(errors, key=errors.get)
        record = {"alpha": alpha, "error": round(errors[alpha], 6), "error_plain": round(errors[0.0], 6)}
        if alpha > 0:
            record["inverse_scale"] = _apply_inverse(model, activation, [m.name for m in members], scales[alpha])
            for member, grid, weight in zip(members, grids[alpha], weights):
                member.weight = (weight * scales[alpha][:, None]).T
                member.grids[bits] = grid
                member.algorithm = "awq"
        report[activation] = record
    return report


def _apply_inverse(model: ir.Model, activation: str, names: list[str], scale: np.ndarray) -> str:
    """Divide ``activation``'s channels by ``scale`` for the nodes ``names`` and multiply their
    weights' rows by it, in place: into the producing LayerNormalization (its gain and bias)
    when it feeds only these nodes, else through an inserted ``Mul``. Returns which."""
    nodes = [n for n in model.graph if n.name in set(names)]
    for node in nodes:
        weight = constant(node.inputs[1])
        _replace(model.graph, node, 1, (weight * scale[:, None]).astype(weight.dtype), f"{node.inputs[1].name}_awq")
    source = nodes[0].inputs[0]
    producer = source.producer()
    if producer is not None and producer.op_type == "LayerNormalization" and producer.domain in ("", "ai.onnx") \
            and producer.attributes.get_int("axis", -1) in (-1, len(source.shape or ()) - 1) \
            and {use.node.name for use in source.uses()} <= set(names) and source not in model.graph.outputs:
        gain = constant(producer.inputs[1])
        bias = constant(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] is not None else None
        if gain is not None and gain.shape == scale.shape and (bias is None or bias.shape == scale.shape):
            # LayerNormalization computes normalised(x)·gain + bias: both scale with the output.
            _replace(model.graph, producer, 1, (gain / scale).astype(gain.dtype), f"{producer.inputs[1].name}_awq")
            if bias is not None:
                _replace(model.graph, producer, 2, (bias / scale).astype(bias.dtype), f"{producer.inputs[2].name}_awq")
            return f"folded into '{producer.name}'"
    name = f"{activation}_awq_inverse"
    inverse = ir.Value(name=name, const_value=ir.tensor((1.0 / scale).astype(np.float32), name=name))
    model.graph.register_initializer(inverse)
    mul = ir.node("Mul", [source, inverse], name=f"{activation}_awq")
    mul.outputs[0].name = f"{activation}_awq_scaled"
    order = {id(n): i for i, n in enumerate(model.graph)}
    model.graph.insert_before(min(nodes, key=lambda n: order[id(n)]), mul)
    for node in nodes:
        node.replace_input_with(0, mul.outputs[0])
    return f"Mul '{mul.name}'"


def _replace(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Give ``node`` a new initializer input and drop the old one when nothing else reads it."""
    old = node.inputs[index]
    set_initializer(graph, node, index, array, name)
    if old is not None and not old.uses() and old.is_initializer() and not old.is_graph_output():
        graph.initializers.pop(old.name)
