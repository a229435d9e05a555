"""Weight edits computed from calibration statistics, for the quantize pass.

SmoothQuant (Xiao et al., 2023) divides an activation's input channels by ``s`` and multiplies
the matching weight rows by ``s``: the product is unchanged, the activation's outlier channels
shrink, and per-channel weight quantization absorbs the larger weights. Bias correction
(Nagel et al., 2019) removes the mean shift quantized weights cause on real activations; here
it is measured with probe nodes that apply only the weight error to the float activations.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxpress.passes._common import constant, set_initializer


def matmul_groups(model: ir.Model, nodes: set[str]) -> dict[str, list[ir.Node]]:
    """MatMuls with a constant 2-D weight among ``nodes``, grouped by their activation input."""
    groups: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        if node.name in nodes and node.op_type == "MatMul" and node.inputs[0] is not None:
            weight = constant(node.inputs[1])
            if weight is not None and weight.ndim == 2 and node.inputs[0].name:
                groups.setdefault(node.inputs[0].name, []).append(node)
    return groups


def smooth(model: ir.Model, groups: dict[str, list[ir.Node]], stats, alpha: float) -> int:
    """Insert ``Mul(x, 1/s)`` before each group and scale its weights' rows by ``s``.

    One Mul serves every MatMul that reads the activation (Q, K and V share theirs), so the
    cost is one elementwise op per group. Works on ``model`` in place (groups are looked up
    by node name, so they may come from a clone). Returns the number of groups smoothed.
    """
    by_name = {n.name: n for n in model.graph}
    done = 0
    for activation, members in groups.items():
        nodes = [by_name[m.name] for m in members if m.name in by_name]
        tensor_stats = stats.tensors.get(activation)
        if not nodes or tensor_stats is None or tensor_stats.channel_absmax is None:
            continue
        weights = [constant(n.inputs[1]) for n in nodes]
        act_max = np.maximum(tensor_stats.channel_absmax, 1e-5)
        if act_max.shape[0] != weights[0].shape[0]:
            continue
        weight_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
        scale = np.clip(act_max ** alpha / weight_max ** (1.0 - alpha), 1e-4, 1e4).astype(np.float32)
        source = nodes[0].inputs[0]
        inverse_name = f"{activation}_smooth_inv"
        inverse = ir.Value(name=inverse_name, const_value=ir.tensor((1.0 / scale).astype(np.float32), name=inverse_name))
        model.graph.register_initializer(inverse)
        mul = ir.node("Mul", [source, inverse], name=f"{activation}_smooth")
        mul.outputs[0].name = f"{activation}_smoothed"
        first = min(nodes, key=lambda n: list(model.graph).index(n))
        model.graph.insert_before(first, mul)
        for node, weight in zip(nodes, weights):
            set_initializer(model.graph, node, 1, (weight * scale[:, None]).astype(weight.dtype),
                            f"{node.inputs[1].name}_smoothed")
            node.replace_input_with(0, mul.outputs[0])
        done += 1
    return done


def _quantized(weight: np.ndarray, axis: int, reduce_range: bool) -> np.ndarray:
    """``weight`` after symmetric per-channel int8 quantization and back.

    Mirrors ONNX Runtime's symmetric weights: range [-127, 127] ([-64, 64] with reduce-range),
    zero point 0, ``scale = 2 * max|w| / (qmax - qmin)``.
    """
    qmin, qmax = (-64, 64) if reduce_range else (-127, 127)
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(absmax > 0, 2.0 * absmax / (qmax - qmin), 1.0).reshape(-1, *([1] * (moved.ndim - 1)))
    restored = np.clip(np.round(moved / scale), qmin, qmax) * scale
    return np.moveaxis(restored, 0, axis)


def error_probes(model: ir.Model, nodes: list[ir.Node], reduce_range: bool) -> dict[str, str]:
    """Add beside each Conv/Gemm with a bias a copy fed with ``W_q - W`` and no bias, in place.

    The copy's output is exactly what int8 weights add to the layer's output on the float
    model's activations (padding and strides included). Returns node name -> probe tensor name.
    """
    probes = {}
    for node in nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
            continue
        weight = constant(node.inputs[1])
        if weight is None or constant(node.inputs[2]) is None:
            continue
        trans_b = node.attributes.get_int("transB", 0)
        axis = 0 if node.op_type == "Conv" or trans_b else 1  # the output-channel axis
        delta = (_quantized(weight, axis, reduce_range) - weight).astype(weight.dtype)
        name = f"{node.name}_weight_error"
        value = ir.Value(name=name, const_value=ir.tensor(delta, name=name))
        model.graph.register_initializer(value)
        attributes = [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values() if a.name != "beta"]
        probe = ir.Node("", node.op_type, [node.inputs[0], value], attributes=attributes, name=f"{node.name}_probe")
        probe.outputs[0].name = f"{node.outputs[0].name}_weight_error"
        model.graph.insert_after(node, probe)
        probes[node.name] = probe.outputs[0].name
    return probes


def correct_biases(model: ir.Model, nodes: list[ir.Node], probes: dict[str, str], stats) -> dict[str, str]:
    """Subtract from each bias the mean its probe measured (the shift int8 weights cause).

    Returns node name -> name of its uncorrected bias initializer, which stays in the graph
    (until dead-code removal) so a node that ends up float can have it back (``restore_biases``).
    """
    corrected = {}
    for node in nodes:
        probe = probes.get(node.name)
        shift = stats[probe].channel_mean() if probe in stats else None
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if shift is None or bias is None or bias.shape != shift.shape:
            continue
        # Gemm scales C by beta (default 1.0): the correction of C is divided by it.
        beta = node.attributes.get_float("beta", 1.0) if node.op_type == "Gemm" else 1.0
        original = node.inputs[2].name
        set_initializer(model.graph, node, 2, (bias - shift / (beta or 1.0)).astype(bias.dtype),
                        f"{original}_corrected")
        corrected[node.name] = original
    return corrected


def restore_biases(model: ir.Model, originals: dict[str, str]) -> None:
    """Give the named nodes their uncorrected biases back, in place (see ``correct_biases``)."""
    for node in model.graph:
        if node.name in originals and originals[node.name] in model.graph.initializers:
            node.replace_input_with(2, model.graph.initializers[originals[node.name]])
