"""Block-wise weight grids for the weightonly pass: rounding (RTN, HQQ), packing and the nodes.

A weight is handled as ``rows x K``: a MatMul's ``W`` ([K, N]) as its N output columns, an
embedding table ([V, D]) as its V rows. Each row is cut into blocks of ``block_size`` values
along K (zero-padded at the end) and each block has its own scale and integer zero point:

    w ≈ (q - zero) · scale,   q and zero integers in [0, 2^bits - 1]

Symmetric grids fix ``zero = 2^(bits-1)`` (MatMulNBits' default zero point, so none is stored)
and take the scale from the block's largest magnitude ``v`` as ``scale = v / -2^(bits-1)``: ``v``
lands exactly on the grid's end ``q = 0`` and the 2^bits levels are all used (a negative scale
is allowed by every consumer). Asymmetric grids span ``[min(w, 0), max(w, 0)]`` of the block.

The packed forms follow the com.microsoft operator specs (ONNX Runtime's ``contrib_defs``):

- ``MatMulNBits``: ``B`` uint8 ``[N, k_blocks, block_size·bits/8]`` (two 4-bit values a byte,
  the first in the low nibble), ``scales`` ``[N, k_blocks]`` of A's type, ``zero_points`` uint8
  ``[N, ceil(k_blocks·bits/8)]`` packed the same way (absent: ``2^(bits-1)``);
- ``GatherBlockQuantized`` on uint8 data: ``data`` ``[V, D·bits/8]`` packed along the last axis,
  ``scales`` ``[V, D/block_size]``, ``zero_points`` packed like ``data`` (absent: ``2^(bits-1)``);
- ONNX ``DequantizeLinear`` (opset 21, ``block_size``): ``x`` uint4/uint8 with the grid's ``q``,
  ``x_scale`` and ``x_zero_point`` one per block.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxpress.passes._common import add_initializer

logger = logging.getLogger(__name__)

HQQ_LP_NORM = 0.7  # HQQ's defaults (Badri & Shaji 2023, and their reference code)
HQQ_BETA = 10.0
HQQ_KAPPA = 1.01
HQQ_ITERATIONS = 20


@dataclass
class Grid:
    """A ``rows x K`` weight on its block-wise integer grid.

    ``q``: uint8 ``[rows, blocks, block_size]`` (K zero-padded to whole blocks); ``scale``:
    float32 ``[rows, blocks]``; ``zero``: uint8 ``[rows, blocks]`` (``2^(bits-1)`` everywhere
    for a symmetric grid); ``k``: the unpadded K.
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    block_size: int
    symmetric: bool
    k: int

    def dequantized(self) -> np.ndarray:
        """The weight the grid stands for, ``[rows, K]`` float32, as ONNX Runtime computes it."""
        values = (self.q.astype(np.float32) - self.zero[..., None].astype(np.float32)) * self.scale[..., None]
        return values.reshape(self.q.shape[0], -1)[:, :self.k]

    @property
    def nbytes(self) -> int:
        """Bytes stored: the packed values, the float32 scales and (asymmetric) the packed zero points."""
        rows, blocks, size = self.q.shape
        stored = rows * blocks * size * self.bits // 8 + self.scale.size * 4
        if not self.symmetric:
            stored += rows * -(-blocks * self.bits // 8)
        return stored


def levels(bits: int) -> int:
    """The largest integer of a ``bits`` grid (its levels are 0 .. that)."""
    return 2 ** bits - 1


def blocks(rows_k: np.ndarray, block_size: int) -> np.ndarray:
    """``rows x K`` as ``[rows, blocks, block_size]`` float64, K zero-padded to whole blocks."""
    rows, k = rows_k.shape
    padded = -(-k // block_size) * block_size
    values = np.zeros((rows, padded), np.float64)
    values[:, :k] = rows_k
    return values.reshape(rows, padded // block_size, block_size)


def minmax_grid(values: np.ndarray, bits: int, symmetric: bool, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The scale and integer zero point of each block of ``values`` reduced over ``axis``.

    Symmetric: ``scale = v / -2^(bits-1)`` with ``v`` the value of largest magnitude (the zero
    point ``2^(bits-1)``); asymmetric: ``[min(w, 0), max(w, 0)]`` spread over the ``2^bits``
    levels. A block of zeros gets scale 1 (any scale reproduces it).
    """
    top = levels(bits)
    if symmetric:
        index = np.expand_dims(np.argmax(np.abs(values), axis=axis), axis)
        extreme = np.take_along_axis(values, index, axis=axis).squeeze(axis)
        scale = extreme / -(2 ** (bits - 1))
        zero = np.full(scale.shape, 2 ** (bits - 1), np.float64)
    else:
        low = np.minimum(values.min(axis=axis), 0.0)
        high = np.maximum(values.max(axis=axis), 0.0)
        scale = (high - low) / top
        zero = np.clip(np.round(-low / np.where(scale == 0, 1.0, scale)), 0, top)
    scale = np.where(scale == 0, 1.0, scale)
    return scale, zero


def round_to(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """``values`` ([rows, blocks, size]) rounded to the grid: the integers q (float64)."""
    return np.clip(np.round(values / scale[..., None]) + zero[..., None], 0, levels(bits))


def stack(parts: list[Grid]) -> Grid:
    """The grid of a weight fitted in row blocks (``parts`` in row order)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Grid(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]),
                np.concatenate([p.zero for p in parts]), first.bits, first.block_size, first.symmetric, first.k)


def make_grid(rows_k: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, block_size: int,
              symmetric: bool) -> Grid:
    """``rows_k`` rounded onto the given per-block scales and zero points."""
    values = blocks(rows_k, block_size)
    q = round_to(values, scale, zero, bits)
    return Grid(q.astype(np.uint8), scale.astype(np.float32), zero.astype(np.uint8), bits, block_size, symmetric,
                rows_k.shape[1])


def rtn(rows_k: np.ndarray, bits: int, block_size: int, symmetric: bool) -> Grid:
    """Round to nearest on each block's min/max grid (``minmax_grid``)."""
    scale, zero = minmax_grid(blocks(rows_k, block_size), bits, symmetric)
    return make_grid(rows_k, scale, zero, bits, block_size, symmetric)


def hqq(rows_k: np.ndarray, bits: int, block_size: int, symmetric: bool,
        iterations: int = HQQ_ITERATIONS) -> Grid:
    """Half-quadratic quantization (Badri & Shaji 2023): data-free, per block.

    HQQ fits the grid to the weights under an l_p error (p = 0.7), robust to the few outliers a
    min/max grid spends its levels on. It splits the error off as ``W_e`` and alternates: the
    error's proximal step ``W_e = shrink_p(W - W_r)``, then the closed-form grid for the target
    ``W - W_e`` (the symmetric scale ``<q - zero, W - W_e> / |q - zero|²``, its zero point fixed),
    with β growing by κ each step. Unlike the
    reference code, zero points stay integers: they are stored packed as 4 or 8-bit integers
    (``Grid``), which every consumer (MatMulNBits, GatherBlockQuantized, DequantizeLinear) reads,
    so the step that moves a float zero point by a fraction of a level (the reference's only
    update) would do nothing; each step fits scale and offset together instead (least squares
    of the target ``W - W_e`` on q), rounds the offset to an integer zero point and refits the
    scale for it. A block keeps the iterate of least mean absolute error (RTN's grid is the
    first candidate, so it never does worse than RTN by that measure).
    """
    values = blocks(rows_k, block_size)
    top = levels(bits)
    scale, zero = minmax_grid(values, bits, symmetric)
    if not symmetric:  # HQQ's start: the block's own min/max (no zero forced into the range)
        low, high = values.min(axis=-1), values.max(axis=-1)
        span = np.where(high > low, high - low, 1.0)
        scale = span / top
        zero = np.clip(np.round(-low / scale), 0, top)
    beta = HQQ_BETA
    best_scale, best_zero = scale.copy(), zero.copy()
    best_error = _abs_error(values, scale, zero, bits)
    # The RTN grid is the first candidate too: HQQ only replaces it where it does better.
    rtn_scale, rtn_zero = minmax_grid(values, bits, symmetric)
    rtn_error = _abs_error(values, rtn_scale, rtn_zero, bits)
    better = rtn_error < best_error
    best_scale[better], best_zero[better], best_error[better] = rtn_scale[better], rtn_zero[better], rtn_error[better]
    previous = float(best_error.mean())
    for _ in range(iterations):
        q = round_to(values, scale, zero, bits)
        restored = (q - zero[..., None]) * scale[..., None]
        error = _shrink(values - restored, beta)
        target = values - error
        if not symmetric:  # the affine least-squares fit of the target: scale and offset, offset as zero point
            mean_q, mean_t = q.mean(axis=-1), target.mean(axis=-1)
            spread = np.sum((q - mean_q[..., None]) ** 2, axis=-1)
            slope = np.sum((q - mean_q[..., None]) * (target - mean_t[..., None]), axis=-1) / np.where(
                spread > 0, spread, 1.0)
            usable = (spread > 0) & (np.abs(slope) > 1e-12)
            scale = np.where(usable, slope, scale)
            zero = np.where(usable, np.clip(np.round(mean_q - mean_t / np.where(usable, slope, 1.0)), 0, top), zero)
        centred = q - zero[..., None]  # the scale that best fits the target with that zero point
        norm = np.sum(centred * centred, axis=-1)
        fitted = np.sum(centred * target, axis=-1) / np.where(norm > 0, norm, 1.0)
        scale = np.where((norm > 0) & (fitted != 0), fitted, scale)
        beta *= HQQ_KAPPA
        current = _abs_error(values, scale, zero, bits)
        better = current < best_error
        best_scale[better], best_zero[better], best_error[better] = scale[better], zero[better], current[better]
        if float(current.mean()) >= previous:  # the reference's stop: the mean error stopped falling
            break
        previous = float(current.mean())
    return make_grid(rows_k, best_scale, best_zero, bits, block_size, symmetric)


def _abs_error(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    q = round_to(values, scale, zero, bits)
    return np.mean(np.abs(values - (q - zero[..., None]) * scale[..., None]), axis=-1)


def _shrink(error: np.ndarray, beta: float, p: float = HQQ_LP_NORM) -> np.ndarray:
    """The generalised soft-thresholding of the l_p proximal step (HQQ's ``shrink_lp_op``)."""
    magnitude = np.abs(error)
    return np.sign(error) * np.maximum(magnitude - (1.0 / beta) * np.power(magnitude + 1e-8, p - 1), 0.0)


# ------------------------------------------------------------------------------ packing

def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Integers in [0, 2^bits) packed along the last axis, the first in the lowest bits (uint8)."""
    values = values.astype(np.uint8)
    if bits == 8:
        return values
    per_byte = 8 // bits
    count = values.shape[-1]
    padded = -(-count // per_byte) * per_byte
    if padded != count:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], padded - count), np.uint8)], axis=-1)
    grouped = values.reshape(*values.shape[:-1], padded // per_byte, per_byte)
    packed = np.zeros(grouped.shape[:-1], np.uint8)
    for slot in range(per_byte):
        packed |= (grouped[..., slot] << (bits * slot)).astype(np.uint8)
    return packed


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of ``pack``: ``count`` integers along the last axis."""
    if bits == 8:
        return packed[..., :count]
    per_byte = 8 // bits
    slots = [(packed >> (bits * slot)) & levels(bits) for slot in range(per_byte)]
    return np.stack(slots, axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def matmulnbits_inputs(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' ``B``, ``scales`` and ``zero_points`` (None for a symmetric grid)."""
    rows, count, size = grid.q.shape
    packed = pack(grid.q.reshape(rows * count, size), grid.bits).reshape(rows, count, size * grid.bits // 8)
    zero = None if grid.symmetric else pack(grid.zero, grid.bits)
    return np.ascontiguousarray(packed), np.ascontiguousarray(grid.scale), zero


def gather_inputs(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """GatherBlockQuantized's uint8 ``data``, ``scales`` and ``zero_points`` (None: symmetric)."""
    rows = grid.q.shape[0]
    data = pack(grid.q.reshape(rows, -1)[:, :grid.k], grid.bits)
    zero = None if grid.symmetric else pack(grid.zero, grid.bits)
    return np.ascontiguousarray(data), np.ascontiguousarray(grid.scale), zero


# ------------------------------------------------------------------------------- nodes

def to_matmulnbits(graph: ir.Graph, node: ir.Node, grid: Grid, *, accuracy_level: int,
                   bias_add: ir.Node | None = None) -> ir.Node:
    """Replace the MatMul ``node`` (and the Add of its constant bias, a Gemm's) by MatMulNBits.

    The new node keeps the MatMul's name and takes over the name and uses of the last output
    it replaces. Its inputs are ``A, B, scales, zero_points, g_idx, bias`` (com.microsoft spec;
    absent optional inputs left empty). The caller removes the old weight.
    """
    packed, scales, zeros = matmulnbits_inputs(grid)
    base = node.name or "matmul"
    inputs: list[ir.Value | None] = [node.inputs[0], add_initializer(graph, f"{base}_qweight", packed),
                                     add_initializer(graph, f"{base}_scales", scales)]
    inputs.append(add_initializer(graph, f"{base}_zero_points", zeros) if zeros is not None else None)
    if bias_add is not None:
        inputs += [None, bias_add.inputs[1]]
    while inputs[-1] is None:
        inputs.pop()
    new = ir.node("MatMulNBits", inputs, attributes={
        "K": grid.k, "N": grid.q.shape[0], "bits": grid.bits, "block_size": grid.block_size,
        "accuracy_level": accuracy_level}, domain="com.microsoft", name=node.name)
    last = bias_add if bias_add is not None else node
    old = [node, bias_add] if bias_add is not None else [node]
    ir.convenience.replace_nodes_and_values(graph, last, old, [new], [last.outputs[0]], [new.outputs[0]])
    return new


def to_gather(graph: ir.Graph, node: ir.Node, grid: Grid) -> ir.Node:
    """Replace the Gather of an embedding table by GatherBlockQuantized (uint8 data, axis 0,
    blocks along the embedding axis), under the Gather's name."""
    data, scales, zeros = gather_inputs(grid)
    base = node.name or "gather"
    inputs = [add_initializer(graph, f"{base}_qdata", data), node.inputs[1],
              add_initializer(graph, f"{base}_scales", scales)]
    if zeros is not None:
        inputs.append(add_initializer(graph, f"{base}_zero_points", zeros))
    new = ir.node("GatherBlockQuantized", inputs, attributes={
        "bits": grid.bits, "block_size": grid.block_size, "gather_axis": 0, "quantize_axis": 1},
        domain="com.microsoft", name=node.name)
    ir.convenience.replace_nodes_and_values(graph, node, [node], [new], [node.outputs[0]], [new.outputs[0]])
    return new


def to_dequantize(graph: ir.Graph, node: ir.Node, grid: Grid, *, embedding: bool) -> ir.Node:
    """Feed ``node`` (MatMul or Gather) its weight through a blocked DequantizeLinear (opset 21).

    Symmetric grids are stored signed (int4/int8, ``q - 2^(bits-1)``, no zero point), asymmetric
    ones unsigned with their zero points. A MatMul's weight is ``[K, N]`` blocked along axis 0,
    a table ``[V, D]`` along axis 1.
    """
    import ml_dtypes

    rows = grid.q.shape[0]
    values = grid.q.reshape(rows, -1)[:, :grid.k]
    scale, zero = grid.scale, grid.zero
    if not embedding:
        values, scale, zero = values.T, scale.T, zero.T
    kinds = {(4, True): ml_dtypes.int4, (4, False): ml_dtypes.uint4, (8, True): np.int8, (8, False): np.uint8}
    kind = kinds[grid.bits, grid.symmetric]
    if grid.symmetric:
        values = values.astype(np.int16) - 2 ** (grid.bits - 1)
    base = node.name or node.op_type.lower()
    inputs = [add_initializer(graph, f"{base}_qweight", np.ascontiguousarray(values).astype(kind)),
              add_initializer(graph, f"{base}_scales", np.ascontiguousarray(scale))]
    if not grid.symmetric:
        inputs.append(add_initializer(graph, f"{base}_zero_points", np.ascontiguousarray(zero).astype(kind)))
    dequantize = ir.node("DequantizeLinear", inputs, attributes={"axis": 1 if embedding else 0,
                                                                  "block_size": grid.block_size},
                         name=f"{base}_dequantize")
    dequantize.outputs[0].name = f"{base}_dequantized"
    graph.insert_before(node, dequantize)
    node.replace_input_with(0 if embedding else 1, dequantize.outputs[0])
    return dequantize
