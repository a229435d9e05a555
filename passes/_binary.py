"""Binary (1-bit) weights: W ≈ α ⊙ sign(W), the signs packed 8 to a byte and expanded by the graph.

``weightonly`` with ``bits=1`` calls :func:`binarize`. For each Conv, MatMul and Gemm whose weight
(input B) is a constant float tensor, the weight is replaced by α·B with B = sign(W) (sign of 0 is
+1) and α one value per output channel (Conv: axis 0 of [N, C, kh, kw]; Gemm: axis 0 with
``transB``, else 1; MatMul: the last axis of a 2-D [K, N]):

- ``scale="mean"``: α = mean|W| over the channel (XNOR-Net, Rastegari et al. 2016): the α that
  minimises ||W - α·B||² for the weights alone;
- ``scale="optimal"``: data-aware, α minimises the layer's output error on calibration rows,
  ||x·W - α·x̂·B||² per output column: α = ⟨x̂B, xW⟩/||x̂B||² (x the original model's inputs to
  the layer, x̂ those of the binarized model, so each layer makes up for the ones before it).
  The rows, moments and damping come from ``_compensate.refit``: its fit gets W* (the layer's
  least-squares weight for x̂) and the damped Ĉ = Σx̂ᵀx̂ + λI, and α = Bᵀ(Ĉ+λI)W* / Bᵀ(Ĉ+λI)B,
  which equals (⟨x̂B, xW⟩ + λ·α_mean·||B||²) / (||x̂B||² + λ·||B||²): the closed form, shrunk
  toward the mean scale by the damping ``refit`` chooses on held-back rows. A layer whose fit
  does not beat the mean scale on those rows keeps the mean scale.

Kept float (listed under ``skipped`` with the reason): the first and last weight layers in graph
order with ``keep_first_last`` (they see the raw input and give the logits: binarizing them costs
most), ``exclude`` by node name, depthwise convolutions (one input channel per filter: a sign
per weight leaves little of a 3x3 filter, for few bytes), weights of fewer than
``MIN_ELEMENTS`` values (the expansion costs about what they save), weights shared with other
nodes or given as graph inputs, and weights already computed by nodes (binarized before: a
second call changes nothing).

Storage: the signs as bits of a uint8 initializer [P, 1] (P = ⌈n/8⌉, bit i of byte p is element
8p+i of the flattened weight, 1 for +1), expanded by a constant subgraph ONNX Runtime folds when
it builds the session (basic optimisation and above; the float weight is computed once):

    packed ─Cast(int32)─┬─Div(2^i)────────┐
                        └─Div(2^(i+1))─Mul(2)─Sub─▶ bits [P, 8] (0/1) ─[Slice]─Reshape─Cast(float)
        ─Mul(2)─Sub(1)─▶ B (±1) ─Mul(α [N,1,..])─▶ the layer's weight

Integer Div, Mul and Sub (not BitShift/BitwiseAnd, opset 11/18) because every opset from 7 has
them and ``distill``'s torch executor runs them, so a binarized model can be distilled; α is one
initializer per layer (named in the statistics, ``scale_initializer``), which ``distill`` trains
when its ``train`` names it, while B stays binary (the layer's weight is no initializer).
Models below opset 10 (no Slice with inputs) store the signs as int8 ±1 instead (Cast, Mul):
4x smaller than float32, not 32x. The replaced float weights are removed (they had no other use).
Nodes inside subgraphs (If/Loop bodies) are not visited.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress.errors import PassError
from onnxpress.passes._common import add_initializer, constant, set_initializer

logger = logging.getLogger(__name__)

LAYER_OPS = ("Conv", "MatMul", "Gemm")
SCALES = ("mean", "optimal")
MIN_ELEMENTS = 256  # below 1 KiB of float32 the expansion's nodes and shapes cost about what they save
PACKED_OPSET = 10  # Slice takes its starts/ends as inputs from opset 10
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass
class _Layer:
    """One weight to binarize: the node, its key in the statistics, the weight and its channel axis."""

    node: ir.Node
    key: str
    weight: np.ndarray
    axis: int

    @property
    def signs(self) -> np.ndarray:
        """B = sign(W) with sign(0) = +1, in the weight's dtype."""
        return np.where(self.weight >= 0, 1, -1).astype(self.weight.dtype)

    def mean_scale(self) -> np.ndarray:
        """α = mean|W| per output channel, shaped to broadcast against the weight."""
        axes = tuple(a for a in range(self.weight.ndim) if a != self.axis)
        return np.mean(np.abs(self.weight.astype(np.float64)), axis=axes, keepdims=True).astype(self.weight.dtype)


def pack(signs: np.ndarray) -> np.ndarray:
    """Bits of ``signs >= 0`` (1 for +1), little-endian within each byte, as uint8 [⌈n/8⌉, 1]."""
    return np.packbits(np.ravel(signs) >= 0, bitorder="little").reshape(-1, 1)


def unpack(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The ±1 float32 signs of shape ``shape`` that :func:`pack` stored (the graph's expansion in numpy)."""
    count = int(np.prod(shape))
    bits = np.unpackbits(np.ravel(packed), bitorder="little")[:count]
    return (bits.astype(np.float32) * 2 - 1).reshape(shape)


def binarize(model: ir.Model, *, scale: str = "mean", keep_first_last: bool = True, exclude: Iterable[str] = (),
             feeds: Sequence[Mapping[str, np.ndarray]] | None = None, runner: Any = None) -> tuple[int, dict[str, Any]]:
    """Replace the constant weights of Conv, MatMul and Gemm nodes of ``model`` by α·sign(W), in place.

    Args:
        model: changed in place.
        scale: ``"mean"`` or ``"optimal"`` (needs ``feeds``); see the module docstring.
        keep_first_last: leave the first and last weight layers in graph order float.
        exclude: node names left float.
        feeds: calibration feeds; with them every binarized layer's output error is measured
            (against the original layer's output, on the rows ``refit`` holds back).
        runner: the :class:`~onnxpress.runtime.Runner` that runs the calibration sessions (a CPU
            runner when None).

    Returns:
        The number of layers binarized and the statistics: ``binarized``, ``skipped`` (node ->
        reason), ``bytes_before`` / ``bytes_after`` of the binarized weights as stored (signs,
        scales, shapes, the shared constants), ``storage``, and per layer (``layers``) its op
        type, shape, bytes, relative weight error ||W - αB||/||W||, the scale initializer's name
        and, with feeds, the relative output error (``output_error``; ``output_error_mean`` the
        mean scale's, with ``scale="optimal"``).

    Raises:
        ValueError: ``scale`` is not one of ``SCALES``.
        PassError: ``scale="optimal"`` without calibration feeds.
    """
    if scale not in SCALES:
        raise ValueError(f"weightonly: binary_scale must be 'mean' or 'optimal', got {scale!r}")
    feeds = list(feeds) if feeds is not None else None
    if scale == "optimal" and not feeds:
        raise PassError("weightonly: binary_scale='optimal' fits the scales on calibration data and got none: run "
                        "the pass in a Pipeline with calibration=..., or use binary_scale='mean'")
    exclude = set(exclude)
    layers, skipped = _select(model.graph, keep_first_last, exclude)
    names = {node.name for node in model.graph}
    statistics: dict[str, Any] = {"scale": scale, "binarized": 0, "skipped": skipped}
    unmatched = sorted(exclude - names)
    if unmatched:
        statistics["exclude_unmatched"] = unmatched
        logger.warning("weightonly: exclude names %s match no node", unmatched)
    if not layers:
        statistics.update(bytes_before=0, bytes_after=0)
        return 0, statistics
    scales = {layer.key: layer.mean_scale() for layer in layers}
    fits = _fit(model, layers, scales, scale, feeds, runner) if feeds else {}
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    packed = opset >= PACKED_OPSET
    shared: dict[str, ir.Value] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    before = after = 0
    for layer in layers:
        alpha = scales[layer.key]
        approximated = alpha * layer.signs
        weight_norm = float(np.linalg.norm(layer.weight.astype(np.float64)))
        stats: dict[str, Any] = {
            "op_type": layer.node.op_type, "shape": list(layer.weight.shape), "bytes_before": layer.weight.nbytes,
            "weight_error": round(float(np.linalg.norm((layer.weight - approximated).astype(np.float64)))
                                  / max(weight_norm, 1e-30), 6)}
        stored, name = (_store_packed if packed else _store_int8)(model.graph, layer, alpha, shared)
        stats.update(bytes_after=stored, scale_initializer=name, **fits.get(layer.key, {}))
        per_layer[layer.key] = stats
        before += layer.weight.nbytes
        after += stored
    after += sum(value.const_value.nbytes for value in shared.values())
    statistics.update(binarized=len(layers), bytes_before=before, bytes_after=after,
                      storage="packed bits (uint8), expanded by Cast/Div/Mul/Sub" if packed
                      else f"int8 signs (opset {opset} < {PACKED_OPSET})", layers=per_layer)
    logger.info("weightonly: binarized %d layers (%d -> %d bytes), kept %d float",
                len(layers), before, after, len(skipped))
    return len(layers), statistics


# ---------------------------------------------------------------------------------- choice

def _select(graph: ir.Graph, keep_first_last: bool, exclude: set[str]) -> tuple[list[_Layer], dict[str, str]]:
    """The layers to binarize, and the weight layers kept float with the reason.

    Weight layers are the Conv/MatMul/Gemm nodes whose input B depends on constants only, so a
    layer binarized before (its B computed by the expansion) still counts as first or last.
    """
    memo: dict[ir.Value, bool] = {}
    candidates = [node for node in graph if node.op_type in LAYER_OPS and node.domain in ("", "ai.onnx")
                  and len(node.inputs) > 1 and _from_constants(node.inputs[1], memo)]
    ends = {id(candidates[0]), id(candidates[-1])} if keep_first_last and candidates else set()
    layers: list[_Layer] = []
    skipped: dict[str, str] = {}
    for index, node in enumerate(candidates):
        key = node.name or f"{node.op_type}_{index}"
        if id(node) in ends:
            reason = "first or last weight layer (keep_first_last)"
        elif node.name in exclude:
            reason = "excluded"
        else:
            reason, layer = _check(node, key)
            if layer is not None:
                layers.append(layer)
                continue
        skipped[key] = reason
        logger.debug("weightonly: %s kept float: %s", key, reason)
    return layers, skipped


def _check(node: ir.Node, key: str) -> tuple[str, _Layer | None]:
    """Why ``node``'s weight stays float, or the layer to binarize."""
    value = node.inputs[1]
    weight = constant(value)
    if weight is None:
        return "weight computed by nodes (binarized already, or not a plain constant)", None
    if weight.dtype.type not in _FLOATS:
        return f"weight of type {weight.dtype} (float16, float32 or float64 only)", None
    if value.is_graph_input():
        return "weight is a graph input (a caller may feed another)", None
    if len(value.uses()) > 1:
        return "weight shared with other nodes", None
    op = node.op_type
    if op == "Conv":
        if weight.ndim < 3:
            return f"Conv weight of {weight.ndim} dims", None
        if node.attributes.get_int("group", 1) > 1 and weight.shape[1] == 1:
            return "depthwise convolution (one input channel per filter)", None
        axis = 0
    elif op == "Gemm":
        axis = 0 if node.attributes.get_int("transB", 0) else 1
    else:
        if weight.ndim != 2:
            return f"MatMul weight of {weight.ndim} dims (2-D only)", None
        axis = 1
    if weight.size < MIN_ELEMENTS:
        return f"{weight.size} weights (< {MIN_ELEMENTS}: the expansion costs about what they save)", None
    if not np.isfinite(weight).all():
        return "weight holds inf or NaN", None
    return "", _Layer(node, key, weight, axis)


def _from_constants(value: ir.Value | None, memo: dict[ir.Value, bool]) -> bool:
    """Whether ``value`` is computed from initializers and Constant nodes only (not graph inputs)."""
    if value is None:
        return True
    if value not in memo:
        producer = value.producer()
        if producer is None:
            memo[value] = value.const_value is not None and not value.is_graph_input()
        else:
            memo[value] = False  # a cycle guard while the producer's inputs are visited
            memo[value] = all(_from_constants(item, memo) for item in producer.inputs)
    return memo[value]


# ------------------------------------------------------------------------------ the fit

def _fit(model: ir.Model, layers: list[_Layer], scales: dict[str, np.ndarray], scale: str,
         feeds: list[Mapping[str, np.ndarray]], runner: Any) -> dict[str, dict[str, Any]]:
    """Measure each layer's output error on ``feeds`` and, with ``scale="optimal"``, fit its α
    (``scales`` updated in place). Returns the per-layer statistics of the fit."""
    from onnxpress.passes import _compensate

    if runner is None:
        from onnxpress.runtime import Runner

        runner = Runner("cpu")
    student = model.clone()  # holds α·B as plain float weights while the scales are fitted
    originals = list(model.graph)
    copies = list(student.graph)
    assert len(originals) == len(copies)
    for index, node in enumerate(copies):  # refit orders its stages by node name
        node.name = node.name or f"_binary_node_{index}"
    by_node = {id(node): copy for node, copy in zip(originals, copies)}
    fits: list[_compensate.Layer] = []
    result: dict[str, dict[str, Any]] = {}
    for layer in layers:
        copy = by_node[id(layer.node)]
        shape = _compensate.layout(copy, layer.weight)
        if shape is None:
            result[layer.key] = {"fit": "mean scale: no rows for this layer (grouped or non-2-D convolution)"}
            continue
        rows, as_kn, _ = shape
        signs = as_kn(layer.signs).astype(np.float64)
        start = as_kn(scales[layer.key] * layer.signs)
        held = _hold(student.graph, copy, scales[layer.key] * layer.signs)
        name = layer.node.inputs[0].name
        fits.append(_compensate.Layer(
            key=layer.key, weight=as_kn(layer.weight), start=start, teacher_input=name, student_input=name,
            teacher_rows=rows, student_rows=rows, owns=(copy.name,),
            fit=_scale_fit(layer, scales, signs, held, as_kn) if scale == "optimal" else _no_fit(start)))
    if not fits:
        return result
    refits = _compensate.refit(model, student, fits, feeds, runner, dampings=None if scale == "optimal" else (0.01,))
    for key, stats in refits.items():
        if "output_error_after" in stats:
            result[key] = {"output_error": stats["output_error_after"], "fit": "optimal",
                           "output_error_mean": stats["output_error_before"], "damping": stats["damping"]}
        elif "output_error" in stats:
            result[key] = {"output_error": stats["output_error"], "fit": "mean"}
            if scale == "optimal":
                result[key].update(output_error_mean=stats["output_error"],
                                   fit="mean scale kept: the fit did not beat it on held-back rows")
        else:
            result[key] = {"fit": f"mean scale: {stats.get('reason', 'not measured')}"}
    return result


def _hold(graph: ir.Graph, node: ir.Node, array: np.ndarray) -> ir.Value:
    """Give ``node`` (of the student copy) a float weight initializer holding ``array``."""
    return set_initializer(graph, node, 1, np.ascontiguousarray(array), f"{node.inputs[1].name}_binary_fit")


def _no_fit(start: np.ndarray):
    """The mean scale as it is: ``refit`` measures its output error and keeps it."""
    return lambda best, damped: (start, lambda: None)


def _scale_fit(layer: _Layer, scales: dict[str, np.ndarray], signs: np.ndarray, held: ir.Value, as_kn):
    """α per output column minimising ||x̂·αB - x·W||²: Bᵀ(Ĉ+λI)W* / Bᵀ(Ĉ+λI)B (module docstring)."""

    def fit(best: np.ndarray, damped: np.ndarray):
        weighted = damped @ signs
        numerator = np.sum(best * weighted, axis=0)
        denominator = np.sum(signs * weighted, axis=0)
        mean = as_kn(np.broadcast_to(scales[layer.key], layer.weight.shape))[0].astype(np.float64)
        alpha = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), mean)
        fitted = signs * alpha

        def write() -> None:
            shape = [1] * layer.weight.ndim
            shape[layer.axis] = -1
            scales[layer.key] = alpha.astype(layer.weight.dtype).reshape(shape)
            held.const_value = ir.tensor(np.ascontiguousarray(scales[layer.key] * layer.signs), name=held.name)

        return fitted, write

    return fit


# ------------------------------------------------------------------------------- storage

def _store_packed(graph: ir.Graph, layer: _Layer, alpha: np.ndarray, shared: dict[str, ir.Value]) -> tuple[int, str]:
    """Replace the layer's weight by the expansion of its packed signs; returns the bytes stored
    for this layer (signs, scale, shapes) and the scale initializer's name."""
    node, weight = layer.node, layer.weight
    base = node.inputs[1].name or layer.key
    count = weight.size
    signs = add_initializer(graph, f"{base}.binary_signs", pack(layer.signs))
    scale = add_initializer(graph, f"{base}.binary_scale", np.ascontiguousarray(alpha))
    target = add_initializer(graph, f"{base}.binary_shape", np.array(weight.shape, np.int64))
    local = [signs, scale, target]
    one = _shared(graph, shared, "binary.one", np.array(1.0, weight.dtype))
    two = _shared(graph, shared, "binary.two", np.array(2.0, weight.dtype))
    low = _shared(graph, shared, "binary.powers", (2 ** np.arange(8, dtype=np.int32)).reshape(1, 8))
    high = _shared(graph, shared, "binary.powers_up", (2 ** np.arange(1, 9, dtype=np.int32)).reshape(1, 8))
    two_int = _shared(graph, shared, "binary.two_int", np.array(2, np.int32))
    dtype = ir.DataType.from_numpy(weight.dtype)
    rows = signs.const_value.shape[0]
    prefix = node.name or layer.key
    nodes: list[ir.Node] = []

    def add(op: str, inputs: list[ir.Value], out: str, out_dtype: ir.DataType, shape: Sequence[int],
            **attributes: Any) -> ir.Value:
        value = ir.Value(name=f"{base}.binary_{out}", type=ir.TensorType(out_dtype), shape=ir.Shape(list(shape)))
        nodes.append(ir.node(op, inputs, attributes or None, outputs=[value], name=f"{prefix}/binary_{out}"))
        return value

    wide = add("Cast", [signs], "wide", ir.DataType.INT32, [rows, 1], to=ir.DataType.INT32)
    lower = add("Div", [wide, low], "shifted", ir.DataType.INT32, [rows, 8])
    upper = add("Div", [wide, high], "shifted_up", ir.DataType.INT32, [rows, 8])
    doubled = add("Mul", [upper, two_int], "doubled", ir.DataType.INT32, [rows, 8])
    bits = add("Sub", [lower, doubled], "bits", ir.DataType.INT32, [rows, 8])  # ⌊b/2^i⌋ - 2⌊b/2^(i+1)⌋: bit i
    if rows * 8 != count:  # padding bits at the end of the last byte: cut after flattening
        flat = add_initializer(graph, f"{base}.binary_flat", np.array([-1], np.int64))
        starts = add_initializer(graph, f"{base}.binary_starts", np.array([0], np.int64))
        ends = add_initializer(graph, f"{base}.binary_ends", np.array([count], np.int64))
        local += [flat, starts, ends]
        everything = add("Reshape", [bits, flat], "flattened", ir.DataType.INT32, [rows * 8])
        bits = add("Slice", [everything, starts, ends], "trimmed", ir.DataType.INT32, [count])
    shaped = add("Reshape", [bits, target], "shaped", ir.DataType.INT32, weight.shape)
    floats = add("Cast", [shaped], "float", dtype, weight.shape, to=dtype)
    doubled_bits = add("Mul", [floats, two], "double", dtype, weight.shape)
    sign = add("Sub", [doubled_bits, one], "sign", dtype, weight.shape)  # 2b - 1: exactly ±1
    expanded = add("Mul", [sign, scale], "weight", dtype, weight.shape)  # ±α, exact
    _replace(graph, node, nodes, expanded)
    return sum(value.const_value.nbytes for value in local), scale.name


def _store_int8(graph: ir.Graph, layer: _Layer, alpha: np.ndarray, shared: dict[str, ir.Value]) -> tuple[int, str]:
    """Below opset 10: the signs as int8 ±1, Cast to float and scaled."""
    node, weight = layer.node, layer.weight
    base = node.inputs[1].name or layer.key
    signs = add_initializer(graph, f"{base}.binary_signs", layer.signs.astype(np.int8))
    scale = add_initializer(graph, f"{base}.binary_scale", np.ascontiguousarray(alpha))
    dtype = ir.DataType.from_numpy(weight.dtype)
    prefix = node.name or layer.key
    sign = ir.Value(name=f"{base}.binary_sign", type=ir.TensorType(dtype), shape=ir.Shape(list(weight.shape)))
    expanded = ir.Value(name=f"{base}.binary_weight", type=ir.TensorType(dtype), shape=ir.Shape(list(weight.shape)))
    nodes = [ir.node("Cast", [signs], {"to": dtype}, outputs=[sign], name=f"{prefix}/binary_float"),
             ir.node("Mul", [sign, scale], outputs=[expanded], name=f"{prefix}/binary_weight")]
    _replace(graph, node, nodes, expanded)
    return signs.const_value.nbytes + scale.const_value.nbytes, scale.name


def _replace(graph: ir.Graph, node: ir.Node, nodes: list[ir.Node], expanded: ir.Value) -> None:
    """Insert ``nodes`` before ``node``, feed it ``expanded`` and drop the float weight it had."""
    old = node.inputs[1]
    graph.insert_before(node, nodes)
    node.replace_input_with(1, expanded)
    if old.uses() or old.is_graph_output():
        return
    producer = old.producer()
    if producer is not None:  # a Constant node
        graph.remove(producer, safe=True)
    elif old.name in graph.initializers:
        graph.initializers.pop(old.name)


def _shared(graph: ir.Graph, shared: dict[str, ir.Value], name: str, array: np.ndarray) -> ir.Value:
    """One initializer per call for the constants every expansion reads."""
    key = f"{name}:{array.dtype}"
    if key not in shared:
        shared[key] = add_initializer(graph, name, array)
    return shared[key]
