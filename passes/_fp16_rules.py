"""The ``fp16`` pass's rules: ONNX type constraints, static bounds and unsafe patterns, which
decide the plan (which nodes compute in the low-precision type; ``_fp16_graph`` applies it).

Nodes are named by their index in ``ir.traversal.RecursiveGraphIterator`` order, which a clone
keeps: a plan made on a typed clone applies to the model itself and to trial clones alike.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxpress import _proto
from onnxpress.passes._common import constant

logger = logging.getLogger(__name__)

FLOAT = ir.DataType.FLOAT
LOW = {"float16": ir.DataType.FLOAT16, "bfloat16": ir.DataType.BFLOAT16}
NUMPY = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# The largest finite value of each type (float16: 65504; bfloat16: fp32's exponent, 8-bit mantissa).
MAX = {"float16": 65504.0, "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)}
# The smallest positive value (float16's smallest subnormal, 2**-24): an epsilon raised to it
# keeps var + eps > 0, so the Sqrt/Div after it never divides 0 by 0.
TINY = {"float16": 2.0 ** -24, "bfloat16": float(ml_dtypes.finfo(ml_dtypes.bfloat16).smallest_subnormal)}
# An additive mask's "minus infinity" sentinel (finfo(float32).min, -1e9, -1e30) becomes this. It
# is what ONNX Runtime's transformer optimizer writes for float16 (-10000): exp(-1e4) is 0 in
# either type, and six such masks summed (padding + causal + ...) plus scores up to 5e3 stay
# finite in float16, where -65504 (float16's own min, what Hugging Face writes) overflows to
# -inf as soon as a negative score is added, and a fully masked row's Softmax becomes NaN.
MASK_VALUE = {"float16": -1.0e4, "bfloat16": -1.0e9}
# Values this large are "infinity" sentinels, never weights (a weight of 1e9 is a bug).
SENTINEL = 1.0e9
CONTROL_FLOW = ("If", "Loop", "Scan")
# Inputs that stay float32 even when their type constraint allows the low type: Resize's roi
# (coordinates in the input's frame; float16 moves them by a pixel on large images).
KEEP_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
# Consumers for which a constant beyond the low range is a bound: clamped to the largest finite.
BOUND_OPS = ("Clip", "Max", "Min")
# Reductions whose sums can overflow: their reduced count times the input's bound must fit.
SUMMING = {"ReduceSum": 1, "ReduceL1": 1, "CumSum": 1, "ReduceSumSquare": 2, "ReduceL2": 2}
# Ops that move or select values: the output's bound is the (hull of the) data input's.
_MOVES = frozenset(("Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
                    "GatherElements", "GatherND", "Expand", "Tile", "Split", "MaxPool", "AveragePool",
                    "GlobalAveragePool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "ReduceMean",
                    "DepthToSpace", "SpaceToDepth", "Dropout", "Cast", "Concat", "Max", "Min", "Pad"))
_UNIT = {"Sigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0),
         "Erf": (-1.0, 1.0), "Sin": (-1.0, 1.0), "Cos": (-1.0, 1.0), "Softsign": (-1.0, 1.0)}
UNKNOWN = (-math.inf, math.inf)


def node_label(node: ir.Node, index: int) -> str:
    """The name statistics use for a node: its name, else ``<op>_<index>``."""
    return node.name or f"{node.op_type}_{index}"


# ----------------------------------------------------------------------------- schemas


def _signature(op_type: str, domain: str, opset: int):
    """``(inputs, outputs, constraints)`` of the ONNX schema (``_proto.signature``), or None."""
    return _proto.signature(op_type, domain, opset)


def _param(formals, index: int) -> str | None:
    if index < len(formals):
        return formals[index][0]
    if formals and formals[-1][1]:
        return formals[-1][0]
    return None


def _allowed(param: str | None, constraints) -> frozenset:
    if param is None:
        return frozenset()
    return constraints.get(param, frozenset((param,)))


@dataclass
class Slots:
    """Which float32 inputs and outputs of a node become the low type when the node converts."""

    inputs: list[bool]
    outputs: list[bool]


def slots(node: ir.Node, opset: int, dtype: str, is_float) -> Slots | str:
    """The slots of ``node`` that convert, or the reason it cannot convert.

    A type parameter converts when it binds a float32 output and the schema allows the low
    type for it (the inputs bound to it follow). Inputs bound to parameters that bind no output
    convert where allowed, except ``KEEP_INPUTS``; fixed types (Resize's ``scales`` is
    ``tensor(float)``) never do. A node with float32 outputs none of which can convert has no
    low-precision form at this opset (Range: int and float32/64 only).
    """
    signature = _signature(node.op_type, node.domain or "", opset)
    if signature is None:
        return f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op_type} at opset {opset}"
    formal_in, formal_out, constraints = signature
    low = f"tensor({dtype})"
    out_params = {_param(formal_out, i) for i, v in enumerate(node.outputs) if is_float(v)}
    if out_params:
        converted = {p for p in out_params if low in _allowed(p, constraints)}
        if not converted:
            return f"the ONNX schema of {node.op_type} (opset {opset}) has no {dtype} form"
    else:
        converted = set()
    keep = KEEP_INPUTS.get(node.op_type, ())
    inputs = []
    for i, value in enumerate(node.inputs):
        param = _param(formal_in, i)
        ok = is_float(value) and i not in keep and low in _allowed(param, constraints)
        if ok and out_params and param not in converted and param in out_params:
            ok = False
        inputs.append(ok)
    outputs = [is_float(v) and _param(formal_out, i) in converted for i, v in enumerate(node.outputs)]
    return Slots(inputs, outputs)


# ----------------------------------------------------------------------------- bounds


def _hull(bounds):
    bounds = list(bounds)
    if not bounds:
        return UNKNOWN
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def _product(a, b):
    with np.errstate(invalid="ignore", over="ignore"):
        corners = [x * y for x in a for y in b]
    corners = [0.0 if math.isnan(c) else c for c in corners]  # 0 * inf: an unbounded side wins below
    if any(math.isinf(x) for x in a + b) and not all(c == 0 for c in corners):
        corners += [(-math.inf if any(c < 0 for c in corners) else 0.0), (math.inf if any(c > 0 for c in corners)
                                                                          else 0.0)]
    return min(corners), max(corners)


def static_bounds(nodes: list[ir.Node]) -> dict[ir.Value, tuple[float, float]]:
    """Interval bounds of the values the graph computes, without data.

    Constants give their own range; bounded ops (Sigmoid, Softmax, Tanh, Erf, Clip, Relu of a
    bounded value, LayerNormalization, x - ReduceMax(x)) bound their outputs; moves, arithmetic,
    Exp, Sqrt and weight layers (MatMul/Gemm/Conv with constant weights: the input's bound times
    the weights' largest absolute row sum) propagate bounds. Everything else is unbounded.
    """
    bounds: dict[ir.Value, tuple[float, float]] = {}

    def of(value: ir.Value | None) -> tuple[float, float]:
        if value is None:
            return UNKNOWN
        if value in bounds:
            return bounds[value]
        array = constant(value)
        if array is not None and array.size and np.issubdtype(array.dtype, np.number):
            with np.errstate(invalid="ignore"):
                found = (float(np.min(array)), float(np.max(array)))
            bounds[value] = found if all(map(math.isfinite, found)) else UNKNOWN
            return bounds[value]
        return UNKNOWN

    for node in nodes:
        if node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        result = _bound(node, of)
        if result is not None and result != UNKNOWN:
            for value in node.outputs[:1] if node.op_type not in ("Split",) else node.outputs:
                bounds[value] = result
    return bounds


def _bound(node: ir.Node, of) -> tuple[float, float] | None:
    op, inputs = node.op_type, node.inputs
    first = of(inputs[0]) if inputs else UNKNOWN
    if op in _UNIT:
        return _UNIT[op]
    if op == "Relu":
        return max(0.0, first[0]), max(0.0, first[1])
    if op == "Clip":
        low = of(inputs[1])[0] if len(inputs) > 1 and inputs[1] is not None else -math.inf
        high = of(inputs[2])[1] if len(inputs) > 2 and inputs[2] is not None else math.inf
        return max(first[0], low), min(first[1], high)
    if op == "Neg":
        return -first[1], -first[0]
    if op == "Abs":
        peak = max(abs(first[0]), abs(first[1]))
        return (0.0, peak)
    if op in ("Concat", "Max", "Min", "Where"):
        chosen = inputs[1:] if op == "Where" else inputs
        return _hull(of(v) for v in chosen)
    if op == "Pad":
        return _hull([first, (0.0, 0.0)] + ([of(inputs[2])] if len(inputs) > 2 and inputs[2] is not None else []))
    if op in _MOVES:
        return first
    if op in ("Add", "Sub", "Mul", "Div") and len(inputs) == 2:
        a, b = first, of(inputs[1])
        if op == "Add":
            return a[0] + b[0], a[1] + b[1]
        if op == "Sub":
            if is_max_subtraction(node):
                return -math.inf, 0.0
            return a[0] - b[1], a[1] - b[0]
        if op == "Mul":
            return _product(a, b)
        if b[0] > 0 or b[1] < 0:
            return _product(a, (1.0 / b[1], 1.0 / b[0]))
        return None
    if op == "Exp":
        return (math.exp(min(first[0], 700.0)) if math.isfinite(first[0]) else 0.0,
                math.exp(first[1]) if first[1] < 700.0 else math.inf)
    if op == "Sqrt" and first[0] >= 0:
        return 0.0, math.sqrt(first[1])
    if op == "LayerNormalization":
        shape = inputs[0].shape if inputs[0] is not None else None
        axis = node.attributes.get_int("axis", -1)
        scale = constant(inputs[1]) if len(inputs) > 1 else None
        bias = constant(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else np.zeros(1)
        if shape is None or scale is None or bias is None:
            return None
        dims = list(shape)[axis:]
        if not all(isinstance(d, int) for d in dims):
            return None
        # A normalised row of N values has |z| <= sqrt(N - 1).
        peak = math.sqrt(max(1, math.prod(dims))) * float(np.abs(scale).max()) + float(np.abs(bias).max())
        return -peak, peak
    if op in ("MatMul", "Gemm", "Conv") and len(inputs) > 1:
        weight = constant(inputs[1])
        if weight is None or not math.isfinite(first[0]) or not math.isfinite(first[1]):
            return None
        if op == "Gemm" and (node.attributes.get_int("transA", 0)):
            return None
        peak_in = max(abs(first[0]), abs(first[1]))
        if op == "Conv":
            sums = np.abs(weight.reshape(weight.shape[0], -1)).sum(1)
        elif op == "Gemm" and node.attributes.get_int("transB", 0):
            sums = np.abs(weight).sum(1)
        elif weight.ndim >= 2:
            sums = np.abs(weight).sum(-2)
        else:
            return None
        peak = peak_in * float(sums.max()) * (node.attributes.get_float("alpha", 1.0) if op == "Gemm" else 1.0)
        if len(inputs) > 2 and inputs[2] is not None:
            bias = of(inputs[2])
            peak += max(abs(bias[0]), abs(bias[1]))
        return -peak, peak
    return None


def is_max_subtraction(node: ir.Node) -> bool:
    """``Sub(x, ReduceMax(x))`` (the numerically stable softmax's shift): at most 0."""
    if node.op_type != "Sub" or len(node.inputs) != 2 or node.inputs[1] is None:
        return False
    producer = node.inputs[1].producer()
    return producer is not None and producer.op_type == "ReduceMax" and producer.inputs[0] is node.inputs[0]


# ----------------------------------------------------------------------------- unsafe patterns


def _reduced_count(node: ir.Node) -> int | None:
    """How many values one output element of a reduction sums (from static shapes), or None."""
    data = node.inputs[0]
    if data is None or data.shape is None or not all(isinstance(d, int) for d in data.shape):
        return None
    dims = list(data.shape)
    if node.op_type == "CumSum":
        axis = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        return dims[int(np.asarray(axis).ravel()[0])] if axis is not None else None
    axes = constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if axes is None and "axes" in node.attributes:
        axes = np.asarray(node.attributes["axes"].value)
    if axes is None:
        return math.prod(dims) if not node.attributes.get_int("noop_with_empty_axes", 0) else 1
    return math.prod(dims[int(a)] for a in np.asarray(axes).ravel())


def _is_square(node: ir.Node) -> bool:
    if node.op_type == "Mul" and len(node.inputs) == 2:
        return node.inputs[0] is node.inputs[1] and node.inputs[0] is not None
    if node.op_type == "Pow" and len(node.inputs) == 2:
        exponent = constant(node.inputs[1])
        return exponent is not None and exponent.size == 1 and float(exponent.ravel()[0]) == 2.0
    return False


def _consumers(value: ir.Value | None) -> list[ir.Node]:
    return [] if value is None else [use.node for use in value.uses()]


def variance_paths(nodes: list[ir.Node]) -> dict[ir.Node, ir.Node]:
    """The nodes of each normalisation's variance path, mapped to its square node: the square
    (``Pow(d, 2)`` or ``Mul(d, d)``) feeding ReduceMean/ReduceSum, that reduction, the Add of
    epsilon after it and the Sqrt (with a Reciprocal) after that."""
    found: dict[ir.Node, ir.Node] = {}
    for node in nodes:
        if not _is_square(node):
            continue
        reductions = [c for c in _consumers(node.outputs[0]) if c.op_type in ("ReduceMean", "ReduceSum")]
        if not reductions:
            continue
        found[node] = node
        for reduce in reductions:
            found[reduce] = node
            for add in _consumers(reduce.outputs[0]):
                if add.op_type != "Add":
                    continue
                found[add] = node
                for root in _consumers(add.outputs[0]):
                    if root.op_type == "Sqrt":
                        found[root] = node
    return found


def epsilon_input(node: ir.Node) -> int | None:
    """The index of the positive scalar constant of ``Add(variance, eps)`` feeding a Sqrt."""
    if node.op_type != "Add" or len(node.inputs) != 2:
        return None
    if not any(c.op_type in ("Sqrt", "Reciprocal") for c in _consumers(node.outputs[0])):
        return None
    for index, value in enumerate(node.inputs):
        array = constant(value)
        if array is not None and array.size == 1 and np.issubdtype(array.dtype, np.floating) \
                and 0 < float(array.ravel()[0]) < 1e-2:
            return index
    return None


def range_rule(node: ir.Node, bounds, dtype: str, variance: dict[ir.Node, ir.Node]) -> str | None:
    """Why ``node`` cannot compute in ``dtype`` without data (float16's range), or None."""
    if dtype == "bfloat16":
        if node in variance:  # same range as float32; the 8-bit mantissa is the risk
            return "variance path of a normalisation: bfloat16's 8-bit mantissa loses the small differences"
        return None
    limit = MAX[dtype]
    op = node.op_type
    if node in variance:
        square = variance[node]
        data = bounds.get(square.inputs[0], UNKNOWN)
        peak = max(abs(data[0]), abs(data[1]))
        if not math.isfinite(peak) or peak * peak * _count_or_one(node) > limit:
            return (f"variance path of a normalisation: (x - mean)² overflows {dtype} above |x - mean| = 256 "
                    f"(square '{square.name or square.outputs[0].name}')")
        return None
    if op == "Exp":
        high = bounds.get(node.inputs[0], UNKNOWN)[1]
        if high > math.log(limit):
            return ("Exp of an unbounded input (no max-subtraction)" if math.isinf(high)
                    else f"Exp of inputs up to {high:.3g} overflows {dtype} (above {math.log(limit):.2f})")
        return None
    if op == "Pow":
        exponent = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if exponent is None or exponent.size != 1:
            return None
        power = float(exponent.ravel()[0])
        data = bounds.get(node.inputs[0], UNKNOWN)
        peak = max(abs(data[0]), abs(data[1]))
        if power > 1 and (not math.isfinite(peak) or peak ** power > limit):
            return f"Pow(x, {power:g}) of an unbounded input overflows {dtype} above |x| = {limit ** (1 / power):.3g}"
        return None
    if op in SUMMING:
        data = bounds.get(node.inputs[0], UNKNOWN)
        peak = max(abs(data[0]), abs(data[1])) ** SUMMING[op]
        count = _reduced_count(node)
        if not math.isfinite(peak) or count is None or peak * count > limit:
            what = f"{count} values" if count is not None else "a dynamic number of values"
            return f"{op} of an unbounded input over {what} can overflow {dtype}"
    return None


def _count_or_one(node: ir.Node) -> int:
    if node.op_type in ("ReduceSum",):
        return _reduced_count(node) or 1_000_000
    return 1
