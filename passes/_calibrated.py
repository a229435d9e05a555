"""Weight edits computed from calibration statistics, for the quantize pass.

SmoothQuant (Xiao et al., 2023) divides an activation's input channels by ``s`` and multiplies
the matching weight rows by ``s``: the product is unchanged, the activation's outlier channels
shrink, and per-channel weight quantization absorbs the larger weights. Bias correction
(Nagel et al., 2019) removes the mean shift quantized weights cause on real activations; here
it is measured with probe nodes that apply only the weight error to the float activations.
GPTQ (Frantar et al., 2023) rounds each weight to its int8 grid in turn and spreads the rounding
error over the weights of inputs not yet rounded, through the inverse second moments of the
layer's inputs; the quantizer is then handed the grid, so it stores exactly those integers.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_ir as ir

from onnxpress.passes import _compensate
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


def _grid(reduce_range: bool) -> tuple[int, int]:
    """ONNX Runtime's symmetric int8 weight range: [-127, 127], [-64, 64] with reduce-range."""
    return (-64, 64) if reduce_range else (-127, 127)


def _scales(weight: np.ndarray, axis: int | None, reduce_range: bool, pow2: bool = False) -> np.ndarray:
    """ONNX Runtime's symmetric weight scales, ``2 * max|w| / (qmax - qmin)`` (1 for an all-zero
    channel): one per index of ``axis``, or one for the tensor when ``axis`` is None; with
    ``pow2`` each a power of two (the one above, or the one below where that errs less)."""
    qmin, qmax = _grid(reduce_range)
    if axis is None:
        absmax = np.abs(weight.astype(np.float64)).max(keepdims=True).reshape(1)
    else:
        moved = np.moveaxis(weight.astype(np.float64), axis, 0)
        absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scales = np.where(absmax > 0, 2.0 * absmax / (qmax - qmin), 1.0)
    if not pow2:
        return scales
    # Fixed point: the scale rounded up, or down where clipping the largest weights of the
    # channel costs less squared error than the coarser grid.
    rows = weight.astype(np.float64).reshape(1, -1) if axis is None else \
        np.moveaxis(weight.astype(np.float64), axis, 0).reshape(scales.shape[0], -1)
    up = power_of_two(scales)
    errors = [np.sum((rows - np.clip(np.round(rows / s[:, None]), qmin, qmax) * s[:, None]) ** 2, axis=1)
              for s in (up, up / 2)]
    return np.where(errors[1] < errors[0], up / 2, up)


def power_of_two(values: np.ndarray) -> np.ndarray:
    """Each (positive) value rounded up to the next power of two."""
    return np.exp2(np.ceil(np.log2(np.asarray(values, np.float64))))


def _quantized(weight: np.ndarray, axis: int, reduce_range: bool, pow2: bool = False) -> np.ndarray:
    """``weight`` after symmetric per-channel int8 quantization and back (ONNX Runtime's
    symmetric weights: zero point 0, the scales of ``_scales``)."""
    qmin, qmax = _grid(reduce_range)
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    scale = _scales(weight, axis, reduce_range, pow2).reshape(-1, *([1] * (moved.ndim - 1)))
    restored = np.clip(np.round(moved / scale), qmin, qmax) * scale
    return np.moveaxis(restored, 0, axis)


def weight_axis(node: ir.Node, per_channel: bool) -> int | None:
    """The output-channel axis of a Conv, ConvTranspose, Gemm or MatMul weight (input 1) that
    per-channel quantization scales along, or None for one scale per tensor."""
    if not per_channel:
        return None
    if node.op_type == "ConvTranspose":
        return 1  # [C_in, C_out / group, kh, kw]
    return 0 if node.op_type == "Conv" or node.attributes.get_int("transB", 0) else 1


# Symmetric int8 activations: ONNX Runtime's grid is [-127, 127] with zero point 0.
_ACTIVATION_QMAX = 127


def pow2_ranges(ranges: dict[str, tuple[float, float]], stats=None
                ) -> tuple[dict[str, tuple[float, float]], list[float]]:
    """Activation ranges whose symmetric int8 scales are powers of two (fixed point).

    ONNX Runtime's symmetric scale is ``max(|low|, |high|) / 127``; the range becomes
    ``±127·p`` with ``p`` a power of two, for which its arithmetic gives back ``p`` exactly
    (``254·p / 254``). ``p`` is the scale rounded up, or down when the tensor's histogram in
    ``stats`` (``TensorStats.rounding_error``) says clipping its tail costs less than the coarser
    step. Returns the ranges and each tensor's factor ``p / scale`` (in [0.5, 2)).
    """
    result, factors = {}, []
    for name, (low, high) in ranges.items():
        absmax = max(abs(float(low)), abs(float(high)))
        if absmax <= 0 or not np.isfinite(absmax):
            result[name] = (low, high)
            continue
        scale = absmax / _ACTIVATION_QMAX
        step = float(power_of_two(scale))
        if stats is not None and name in stats and step > scale:
            tensor = stats[name]
            if tensor.rounding_error(step / 2, _ACTIVATION_QMAX) < tensor.rounding_error(step, _ACTIVATION_QMAX):
                step /= 2
        result[name] = (-_ACTIVATION_QMAX * step, _ACTIVATION_QMAX * step)
        factors.append(step / scale)
    return result, factors


def pow2_weight_overrides(model: ir.Model, nodes: list[str], per_channel: bool, reduce_range: bool
                          ) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` giving the float weights of ``nodes`` (Conv, ConvTranspose, Gemm
    and MatMul input 1, other constant float inputs per tensor) power-of-two scales and zero
    point 0, so ONNX Runtime's quantizer stores fixed-point weights. Int32 biases then get the
    product of two powers of two as their scale (input scale x weight scale)."""
    overrides: dict[str, list[dict[str, Any]]] = {}
    wanted = set(nodes)
    for node in model.graph:
        if node.name not in wanted:
            continue
        for index, value in enumerate(node.inputs):
            weight = constant(value) if value is not None and value.is_initializer() else None
            if weight is None or weight.dtype != np.float32 or value.name in overrides:
                continue
            if index == 2 and node.op_type in ("Conv", "ConvTranspose", "Gemm"):
                continue  # the bias: int32 at the input scale x the weight scale
            axis = weight_axis(node, per_channel) if index == 1 and node.op_type in (
                "Conv", "ConvTranspose", "Gemm", "MatMul") and weight.ndim >= 2 else None
            scale = _scales(weight, axis, reduce_range, pow2=True)
            if axis is None:
                overrides[value.name] = [{"scale": float(scale[0]), "zero_point": 0}]
            else:
                overrides[value.name] = [{"axis": axis, "scale": float(s), "zero_point": 0} for s in scale]
    return overrides


def error_probes(model: ir.Model, nodes: list[ir.Node], reduce_range: bool, pow2: bool = False) -> dict[str, str]:
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
        axis = weight_axis(node, True)
        delta = (_quantized(weight, axis, reduce_range, pow2) - weight).astype(weight.dtype)
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
    (until dead-code removal) so a node that ends up float can have it back (``restore_inputs``).
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


def restore_inputs(model: ir.Model, originals: dict[str, str], index: int) -> None:
    """Give the named nodes their input ``index`` back by initializer name, in place: the
    uncorrected bias (``correct_biases``, index 2) or the unrounded weight (``gptq``, index 1)
    of a node that ends up float."""
    for node in model.graph:
        if node.name in originals and originals[node.name] in model.graph.initializers:
            node.replace_input_with(index, model.graph.initializers[originals[node.name]])


GPTQ_DAMPING = 0.01  # GPTQ's own damping (1 % of the mean diagonal): rounding keeps weights near theirs


def gptq(model: ir.Model, nodes: list[ir.Node], feeds, runner, *, per_channel: bool, reduce_range: bool,
         pow2: bool = False, limit: int | None = None, say: Callable[[str], None] | None = None
         ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, dict[str, Any]]]:
    """Round the weights of ``nodes`` (MatMul, Gemm, Conv of ``model``) to their int8 grids with
    GPTQ error feedback, in place, in graph order on the inputs the already-rounded layers give
    (``_compensate.refit``: the original model's layer outputs are the targets).

    The grid is ONNX Runtime's own (symmetric, zero point 0, its scale per output channel or per
    tensor; rounded up to a power of two with ``pow2``). One damping is used, not a search (each solve costs a K x K inverse, K up to
    C·kh·kw = 4608 in a ResNet); a layer takes its rounded weights only when they beat plain
    rounding on calibration rows held back from the fit. Returns the quantizer's
    ``TensorQuantOverrides`` for the new weights (their scales, so the quantizer stores exactly
    the rounded integers), node name -> its original weight's name (for nodes that end up
    float: ``restore_inputs``), and each layer's fit statistics by node name. Weights read by
    more than one node, or through a Constant node, are left to the quantizer.
    """
    teacher = model.clone()
    qmin, qmax = _grid(reduce_range)
    by_name = {node.name: node for node in teacher.graph}
    layers, planned = [], {}
    for node in nodes:
        value = node.inputs[1] if len(node.inputs) > 1 else None
        weight = constant(value)
        if weight is None or not value.is_initializer() or len(value.uses()) != 1 or weight.dtype != np.float32:
            continue
        found = _compensate.layout(node, weight)
        if found is None or node.name not in by_name:
            continue
        rows, to_rows, back = found
        axis = weight_axis(node, per_channel)
        scale = _scales(weight, axis, reduce_range, pow2)  # per output channel: one per column of x @ W
        start = to_rows(weight).astype(np.float64)
        nearest = np.clip(np.round(start / scale), qmin, qmax) * scale

        def fit(best, damped, node=node, scale=scale, back=back, value=value):
            fitted = _compensate.quantized(best, damped, scale, qmin, qmax)

            def write():
                set_initializer(model.graph, node, 1, np.ascontiguousarray(back(fitted)).astype(np.float32),
                                f"{value.name}_gptq")
            return fitted, write

        layers.append(_compensate.Layer(
            key=node.name, weight=start, start=start, baseline=nearest, teacher_input=by_name[node.name].inputs[0].name,
            student_input=node.inputs[0].name, teacher_rows=rows, student_rows=rows, fit=fit, owns=(node.name,)))
        planned[node.name] = (value.name, axis, scale)
    if not layers:
        return {}, {}, {}
    fits = _compensate.refit(teacher, model, layers, feeds, runner, dampings=(GPTQ_DAMPING,), limit=limit, say=say)
    overrides, originals = {}, {}
    for node in nodes:
        if node.name not in planned or fits.get(node.name, {"kept": True}).get("kept", False):
            continue
        original, axis, scale = planned[node.name]
        if axis is None:
            overrides[node.inputs[1].name] = [{"scale": float(scale[0]), "zero_point": 0}]
        else:
            overrides[node.inputs[1].name] = [{"axis": axis, "scale": float(s), "zero_point": 0} for s in scale]
        originals[node.name] = original
    return overrides, originals, fits
