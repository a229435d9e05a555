"""The ONNX operators the torch executor (``_torchgraph``) evaluates, one small function each.

Each function takes the node, its input tensors (None for an omitted optional input) and the
executor (for the opset), and returns the output tensors. They follow the ONNX operator spec;
defaults and corner cases are cited where they matter. Opset differences are read from the
node itself where the spec moved an attribute to an input (Squeeze, Unsqueeze, Reduce*, Split,
Clip, Slice, Pad), from the opset only for Softmax's axis semantics.

Imported by ``_torchgraph`` only, inside ``distill``'s call: torch is imported at the top.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from onnxpress.errors import PassError

_Op = Callable[[ir.Node, list, Any], Sequence]
OPS: dict[str, _Op] = {}


def _op(*names: str):
    def register(function: _Op) -> _Op:
        for name in names:
            OPS[name] = function
        return function
    return register


def supported_ops() -> set[str]:
    """The op types the executor evaluates."""
    return set(OPS)


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def to_torch(array: np.ndarray) -> torch.Tensor:
    # A copy: initializers may be read-only memory maps, which torch does not take.
    return torch.from_numpy(np.array(array, copy=True))


# ------------------------------------------------------------------------------ helpers

def _ints(tensor: torch.Tensor | None) -> list[int] | None:
    return None if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _scalar(tensor: torch.Tensor | None, default: float | None = None):
    return default if tensor is None else tensor.reshape(-1)[0].item()


def _is_integer(tensor: torch.Tensor) -> bool:
    return not (tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool)


# ---------------------------------------------------------------------- elementwise ops

def _unary(function):
    return lambda node, x, g: [function(x[0])]


def _binary(function):
    return lambda node, x, g: [function(x[0], x[1])]


def _divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Integer Div truncates toward zero (ONNX Div on integer types, as C does).
    return torch.div(a, b, rounding_mode="trunc") if _is_integer(a) and _is_integer(b) else a / b


_op("Add")(_binary(torch.add))
_op("Sub")(_binary(torch.sub))
_op("Mul")(_binary(torch.mul))
_op("Div")(_binary(_divide))
_op("Pow")(lambda node, x, g: [torch.pow(x[0], x[1].to(x[0].dtype) if x[0].is_floating_point() else x[1])])
_op("Equal")(_binary(torch.eq))
_op("Less")(_binary(torch.lt))
_op("LessOrEqual")(_binary(torch.le))
_op("Greater")(_binary(torch.gt))
_op("GreaterOrEqual")(_binary(torch.ge))
_op("And")(_binary(torch.logical_and))
_op("Or")(_binary(torch.logical_or))
_op("Xor")(_binary(torch.logical_xor))
# Elementwise ops of one input: the torch function that computes each.
_UNARY = {
    "Not": torch.logical_not, "IsNaN": torch.isnan, "IsInf": torch.isinf, "Abs": torch.abs, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Exp": torch.exp, "Log": torch.log, "Erf": torch.erf, "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Floor": torch.floor, "Ceil": torch.ceil, "Sign": torch.sign,
    "Sin": torch.sin, "Cos": torch.cos, "Softplus": F.softplus, "HardSwish": F.hardswish, "Mish": F.mish
}
for _name, _function in _UNARY.items():
    _op(_name)(_unary(_function))
_op("Where")(lambda node, x, g: [torch.where(x[0].bool(), x[1], x[2])])
_op("MatMul")(_binary(torch.matmul))
_op("Identity", "Dropout")(lambda node, x, g: [x[0]])  # Dropout at inference passes its input through
_op("Neg")(lambda node, x, g: [-x[0]])
_op("Round")(lambda node, x, g: [torch.round(x[0])])  # half to even, as ONNX Round
_op("PRelu")(lambda node, x, g: [torch.where(x[0] >= 0, x[0], x[0] * x[1])])
_op("Max")(lambda node, x, g: [_fold(torch.maximum, x)])
_op("Min")(lambda node, x, g: [_fold(torch.minimum, x)])
_op("Sum")(lambda node, x, g: [_fold(torch.add, x)])
_op("Mean")(lambda node, x, g: [_fold(torch.add, x) / len(x)])


def _fold(function, tensors: list[torch.Tensor]) -> torch.Tensor:
    result = tensors[0]
    for tensor in tensors[1:]:
        result = function(result, tensor)
    return result


@_op("Gelu")
def _gelu(node, x, g):
    # Gelu-20: approximate = "none" (erf) by default, or "tanh".
    return [F.gelu(x[0], approximate=node.attributes.get_string("approximate", "none"))]


@_op("LeakyRelu")
def _leaky_relu(node, x, g):
    return [F.leaky_relu(x[0], node.attributes.get_float("alpha", 0.01))]  # alpha defaults to 0.01


@_op("Elu")
def _elu(node, x, g):
    return [F.elu(x[0], node.attributes.get_float("alpha", 1.0))]


@_op("HardSigmoid")
def _hard_sigmoid(node, x, g):
    # HardSigmoid: max(0, min(1, alpha * x + beta)), alpha = 0.2 and beta = 0.5 by default.
    alpha, beta = node.attributes.get_float("alpha", 0.2), node.attributes.get_float("beta", 0.5)
    return [torch.clamp(alpha * x[0] + beta, 0.0, 1.0)]


@_op("Clip")
def _clip(node, x, g):
    # Clip-11+ takes min and max as inputs; Clip-6 as attributes.
    low = x[1] if len(x) > 1 and x[1] is not None else None
    high = x[2] if len(x) > 2 and x[2] is not None else None
    if "min" in node.attributes:
        low = torch.tensor(node.attributes.get_float("min"), dtype=x[0].dtype)
    if "max" in node.attributes:
        high = torch.tensor(node.attributes.get_float("max"), dtype=x[0].dtype)
    result = x[0]
    if low is not None:
        result = torch.maximum(result, low.to(result.dtype))
    if high is not None:
        result = torch.minimum(result, high.to(result.dtype))
    return [result]


@_op("Cast")
def _cast(node, x, g):
    return [x[0].to(torch_dtype(ir.DataType(node.attributes.get_int("to")).numpy()))]


@_op("CastLike")
def _cast_like(node, x, g):
    return [x[0].to(x[1].dtype)]


# ---------------------------------------------------------------------------- layers

@_op("Gemm")
def _gemm(node, x, g):
    # Y = alpha * A' B' + beta * C; alpha = beta = 1.0, transA = transB = 0 by default.
    a, b = x[0], x[1]
    if node.attributes.get_int("transA", 0):
        a = a.t()
    if node.attributes.get_int("transB", 0):
        b = b.t()
    result = node.attributes.get_float("alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        result = result + node.attributes.get_float("beta", 1.0) * x[2]
    return [result]


def _spatial_pads(node: ir.Node, x: torch.Tensor, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial axes, auto_pad resolved."""
    spatial = x.dim() - 2
    auto = node.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * spatial)
    return list(node.attributes.get_ints("pads", [0] * (2 * spatial)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] as F.pad's (last axis first) [b_n, e_n, ..., b_1, e_1]."""
    half = len(pads) // 2
    result: list[int] = []
    for axis in reversed(range(half)):
        result += [pads[axis], pads[axis + half]]
    return result


def _window(node, data, kernel: list[int] | None = None, dilated: bool = True):
    """A sliding-window op's geometry (Conv, MaxPool, AveragePool): spatial rank, kernel,
    strides, dilations (ones when ``dilated`` is False) and the explicit pads it needs."""
    spatial = data.dim() - 2
    kernel = list(node.attributes.get_ints("kernel_shape", kernel))
    strides = list(node.attributes.get_ints("strides", [1] * spatial))
    dilations = list(node.attributes.get_ints("dilations", [1] * spatial)) if dilated else [1] * spatial
    return spatial, kernel, strides, dilations, _spatial_pads(node, data, kernel, strides, dilations)


@_op("Conv")
def _conv(node, x, g):
    data, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    spatial, kernel, strides, dilations, pads = _window(node, data, list(weight.shape[2:]))
    if any(pads):
        data = F.pad(data, _torch_pad(pads))
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return [conv(data, weight, bias, stride=strides, dilation=dilations, groups=node.attributes.get_int("group", 1))]


@_op("MaxPool")
def _max_pool(node, x, g):
    data = x[0]
    spatial, kernel, strides, dilations, pads = _window(node, data)
    if any(pads):
        data = F.pad(data, _torch_pad(pads), value=-math.inf)  # padding never wins a max
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
    return [pool(data, kernel, strides, 0, dilations, ceil_mode=bool(node.attributes.get_int("ceil_mode", 0)))]


@_op("AveragePool")
def _average_pool(node, x, g):
    data = x[0]
    spatial, kernel, strides, _, pads = _window(node, data, dilated=False)
    ceil = bool(node.attributes.get_int("ceil_mode", 0))
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    padded = F.pad(data, _torch_pad(pads)) if any(pads) else data
    total = pool(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if not any(pads) or node.attributes.get_int("count_include_pad", 0):
        return [total]
    # count_include_pad = 0 (the default): divide by the real elements under each window.
    ones = F.pad(torch.ones_like(data[:1, :1]), _torch_pad(pads))
    return [total / pool(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)]


@_op("GlobalAveragePool")
def _global_average_pool(node, x, g):
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@_op("GlobalMaxPool")
def _global_max_pool(node, x, g):
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@_op("BatchNormalization")
def _batch_norm(node, x, g):
    # Inference form: (x - mean) / sqrt(var + epsilon) * scale + bias, epsilon 1e-5 by default.
    data, scale, bias, mean, var = x[:5]
    shape = [1, -1] + [1] * (data.dim() - 2)
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    factor = scale / torch.sqrt(var + epsilon)
    return [data * factor.reshape(shape) + (bias - mean * factor).reshape(shape)]


@_op("LayerNormalization")
def _layer_norm(node, x, g):
    # Normalises over axes [axis, rank) (axis -1 and epsilon 1e-5 by default).
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = _axis(node.attributes.get_int("axis", -1), data.dim())
    epsilon = node.attributes.get_float("epsilon", 1e-5)
    shape = tuple(data.shape[axis:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return [F.layer_norm(data, shape, scale, bias, epsilon)]
    dims = tuple(range(axis, data.dim()))
    mean = data.mean(dim=dims, keepdim=True)
    var = ((data - mean) ** 2).mean(dim=dims, keepdim=True)
    result = (data - mean) / torch.sqrt(var + epsilon) * scale
    return [result + bias if bias is not None else result]


def _softmax_like(function):
    def run(node, x, g):
        data = x[0]
        if g.opset >= 13:  # axis -1 by default; earlier opsets flatten to 2-D at axis (default 1)
            return [function(data, _axis(node.attributes.get_int("axis", -1), data.dim()))]
        axis = _axis(node.attributes.get_int("axis", 1), data.dim())
        flat = data.reshape(int(np.prod(data.shape[:axis])), -1)
        return [function(flat, 1).reshape(data.shape)]
    return run


_op("Softmax")(_softmax_like(lambda t, axis: torch.softmax(t, axis)))
_op("LogSoftmax")(_softmax_like(lambda t, axis: torch.log_softmax(t, axis)))


@_op("Einsum")
def _einsum(node, x, g):
    return [torch.einsum(node.attributes.get_string("equation"), *x)]


# ------------------------------------------------------------------------- reductions

def _reduce(function):
    def run(node, x, g):
        data = x[0]
        # axes: an attribute before opset 18 (13 for ReduceSum), an input from then on.
        axes = list(node.attributes.get_ints("axes")) if "axes" in node.attributes else (
            _ints(x[1]) if len(x) > 1 and x[1] is not None else None)
        keep = bool(node.attributes.get_int("keepdims", 1))
        if not axes:
            if node.attributes.get_int("noop_with_empty_axes", 0):
                return [data]
            axes = list(range(data.dim()))
        dims = tuple(sorted(_axis(a, data.dim()) for a in axes))
        return [function(data, dims, keep)]
    return run


_op("ReduceMean")(_reduce(lambda t, d, k: t.mean(dim=d, keepdim=k)))
_op("ReduceSum")(_reduce(lambda t, d, k: t.sum(dim=d, keepdim=k)))
_op("ReduceMax")(_reduce(lambda t, d, k: t.amax(dim=d, keepdim=k)))
_op("ReduceMin")(_reduce(lambda t, d, k: t.amin(dim=d, keepdim=k)))
_op("ReduceProd")(_reduce(lambda t, d, k: _prod(t, d, k)))
_op("ReduceSumSquare")(_reduce(lambda t, d, k: (t * t).sum(dim=d, keepdim=k)))
_op("ReduceL1")(_reduce(lambda t, d, k: t.abs().sum(dim=d, keepdim=k)))
_op("ReduceL2")(_reduce(lambda t, d, k: torch.sqrt((t * t).sum(dim=d, keepdim=k))))
_op("ReduceLogSumExp")(_reduce(lambda t, d, k: torch.logsumexp(t, dim=d, keepdim=k)))


def _prod(tensor: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for dim in sorted(dims, reverse=True):
        tensor = tensor.prod(dim=dim, keepdim=keep)
    return tensor


@_op("ArgMax", "ArgMin")
def _arg(node, x, g):
    data = x[0]
    axis = _axis(node.attributes.get_int("axis", 0), data.dim())
    keep = bool(node.attributes.get_int("keepdims", 1))
    if node.attributes.get_int("select_last_index", 0):
        flipped = torch.flip(data, [axis])
        index = (flipped.argmax if node.op_type == "ArgMax" else flipped.argmin)(dim=axis, keepdim=keep)
        return [data.shape[axis] - 1 - index]
    return [(data.argmax if node.op_type == "ArgMax" else data.argmin)(dim=axis, keepdim=keep)]


@_op("CumSum")
def _cumsum(node, x, g):
    data, axis = x[0], _axis(int(_scalar(x[1])), x[0].dim())
    if node.attributes.get_int("reverse", 0):
        data = torch.flip(data, [axis])
    result = torch.cumsum(data, axis)
    if node.attributes.get_int("exclusive", 0):
        result = result - data
    return [torch.flip(result, [axis]) if node.attributes.get_int("reverse", 0) else result]


# --------------------------------------------------------------------- shape handling

@_op("Shape")
def _shape(node, x, g):
    # Shape-15: start (0) and end (rank) slice the shape.
    dims = list(x[0].shape)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@_op("Size")
def _size(node, x, g):
    return [torch.tensor(x[0].numel(), dtype=torch.int64)]


@_op("Reshape")
def _reshape(node, x, g):
    # A 0 copies the input's dim unless allowzero = 1; one -1 is inferred.
    data, shape = x[0], _ints(x[1])
    if not node.attributes.get_int("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [data.reshape(shape)]


@_op("Flatten")
def _flatten(node, x, g):
    data = x[0]
    axis = _axis(node.attributes.get_int("axis", 1), data.dim())
    return [data.reshape(int(np.prod(data.shape[:axis])), -1)]


@_op("Transpose")
def _transpose(node, x, g):
    perm = node.attributes.get_ints("perm", list(reversed(range(x[0].dim()))))
    return [x[0].permute(*perm)]


@_op("Unsqueeze")
def _unsqueeze(node, x, g):
    axes = list(node.attributes.get_ints("axes")) if "axes" in node.attributes else _ints(x[1])
    rank = x[0].dim() + len(axes)
    result = x[0]
    for axis in sorted(_axis(a, rank) for a in axes):
        result = result.unsqueeze(axis)
    return [result]


@_op("Squeeze")
def _squeeze(node, x, g):
    axes = list(node.attributes.get_ints("axes")) if "axes" in node.attributes else (
        _ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if axes is None:
        return [x[0].squeeze()] if x[0].dim() else [x[0]]
    result = x[0]
    for axis in sorted((_axis(a, x[0].dim()) for a in axes), reverse=True):
        result = result.squeeze(axis)
    return [result]


@_op("Concat")
def _concat(node, x, g):
    tensors = [t for t in x if t is not None]
    return [torch.cat(tensors, dim=_axis(node.attributes.get_int("axis"), tensors[0].dim()))]


@_op("Split")
def _split(node, x, g):
    data = x[0]
    axis = _axis(node.attributes.get_int("axis", 0), data.dim())
    sizes = list(node.attributes.get_ints("split")) if "split" in node.attributes else (
        _ints(x[1]) if len(x) > 1 and x[1] is not None else None)
    if sizes is None:  # equal parts; the last smaller when num_outputs does not divide (Split-18)
        count = len(node.outputs)
        chunk = -(-data.shape[axis] // count)
        sizes = [min(chunk, data.shape[axis] - i * chunk) for i in range(count)]
    return list(torch.split(data, sizes, dim=axis))


@_op("Slice")
def _slice(node, x, g):
    data = x[0]
    if "starts" in node.attributes:  # Slice-1: attributes
        starts, ends = list(node.attributes.get_ints("starts")), list(node.attributes.get_ints("ends"))
        axes = list(node.attributes.get_ints("axes", list(range(len(starts)))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index: list = [slice(None)] * data.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, data.dim())
        size = data.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:  # clamped to [0, size]
            index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
        else:  # clamped to [0, size - 1] and [-1, size - 1]; torch slices step forward only
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            picks = torch.arange(start, end, step, dtype=torch.int64)
            flips.append((axis, picks))
    result = data[tuple(index)]
    for axis, picks in flips:
        result = result.index_select(axis, picks)
    return [result]


@_op("Gather")
def _gather(node, x, g):
    data, indices = x[0], x[1].to(torch.int64)
    axis = _axis(node.attributes.get_int("axis", 0), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)  # negative indices count back
    picked = data.index_select(axis, indices.reshape(-1))
    return [picked.reshape(tuple(data.shape[:axis]) + tuple(indices.shape) + tuple(data.shape[axis + 1:]))]


@_op("GatherElements")
def _gather_elements(node, x, g):
    data, indices = x[0], x[1].to(torch.int64)
    axis = _axis(node.attributes.get_int("axis", 0), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return [torch.gather(data, axis, indices)]


@_op("GatherND")
def _gather_nd(node, x, g):
    data, indices = x[0], x[1].to(torch.int64)
    batch = node.attributes.get_int("batch_dims", 0)
    depth = indices.shape[-1]
    outer = tuple(data.shape[:batch])
    count = int(np.prod(outer)) if batch else 1
    flat_data = data.reshape((count,) + tuple(data.shape[batch:]))
    flat_indices = indices.reshape((count,) + tuple(indices.shape[batch:]))
    for position in range(depth):  # negative indices count back
        size = flat_data.shape[1 + position]
        column = flat_indices[..., position]
        flat_indices = flat_indices.clone()
        flat_indices[..., position] = torch.where(column < 0, column + size, column)
    rows = torch.arange(count).reshape((count,) + (1,) * (flat_indices.dim() - 2))
    picked = flat_data[(rows.expand(flat_indices.shape[:-1]),) + tuple(flat_indices[..., i] for i in range(depth))]
    return [picked.reshape(outer + tuple(indices.shape[batch:-1]) + tuple(data.shape[batch + depth:]))]


@_op("Expand")
def _expand(node, x, g):
    # Bidirectional broadcast of the input and the shape.
    shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(_ints(x[1])))
    return [x[0].expand(shape)]


@_op("Tile")
def _tile(node, x, g):
    return [x[0].repeat(*_ints(x[1]))]


@_op("Range")
def _range(node, x, g):
    start, limit, delta = (_scalar(t) for t in x[:3])
    return [torch.arange(start, limit, delta, dtype=x[0].dtype)]


@_op("ConstantOfShape")
def _constant_of_shape(node, x, g):
    # value: a one-element tensor, float 0 by default.
    attr = node.attributes.get("value")
    fill = to_torch(attr.as_tensor().numpy().reshape(-1)) if attr is not None else torch.zeros(1, dtype=torch.float32)
    return [torch.full(tuple(_ints(x[0])), fill[0].item(), dtype=fill.dtype)]


@_op("Constant")
def _constant(node, x, g):
    tensor = ir.convenience.get_const_tensor(node.outputs[0])
    if tensor is None:
        raise PassError(f"torch executor: Constant node '{node.name}' holds a value it cannot read")
    return [to_torch(tensor.numpy())]


@_op("NonZero")
def _nonzero(node, x, g):
    return [torch.nonzero(x[0]).t().contiguous()]


@_op("Trilu")
def _trilu(node, x, g):
    k = int(_scalar(x[1], 0)) if len(x) > 1 else 0
    upper = node.attributes.get_int("upper", 1)
    return [torch.triu(x[0], k) if upper else torch.tril(x[0], k)]


@_op("Pad")
def _pad(node, x, g):
    data = x[0]
    mode = node.attributes.get_string("mode", "constant")
    if "pads" in node.attributes:  # Pad-2: attributes
        pads, fill = list(node.attributes.get_ints("pads")), node.attributes.get_float("value", 0.0)
        axes = list(range(data.dim()))
    else:
        pads = _ints(x[1])
        fill = _scalar(x[2], 0.0) if len(x) > 2 and x[2] is not None else 0.0
        axes = [_axis(a, data.dim()) for a in _ints(x[3])] if len(x) > 3 and x[3] is not None \
            else list(range(data.dim()))
    full = [0] * (2 * data.dim())
    for i, axis in enumerate(axes):
        full[axis], full[axis + data.dim()] = pads[i], pads[i + len(axes)]
    # F.pad reads pairs from the last axis: leading axes without padding are left out.
    torch_pads = _torch_pad(full)
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return [F.pad(data, torch_pads, value=fill)]
    return [F.pad(data, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}.get(mode, mode))]
