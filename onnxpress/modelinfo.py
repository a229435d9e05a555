"""Measurements of an ``onnx_ir.Model``: sizes, counts, FLOPs, fingerprints, and a view that
exposes intermediate tensors as outputs. Pure functions over the IR; no runtime here."""
from __future__ import annotations

import hashlib
import os
import weakref
import zlib
from typing import Iterable, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress import _proto, _weights



def fingerprint(model: ir.Model, *, content: bool = False) -> str:
    """A digest of the model's structure: nodes, attributes, values, initializer signatures.

    Without ``content`` tensors are summarised by dtype and shape, so this is cheap on large
    models; passes that go through protobuf use it to report ``modified`` exactly. With
    ``content`` every tensor's bytes count too (each tensor object is hashed once): the key
    under which the runner keeps a model's serialised form.
    """
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        digest.update(repr(parts).encode())

    def graph_signature(graph: ir.Graph) -> None:
        for value in graph.inputs:
            add("in", value.name, value.dtype, value.shape)
        for value in graph.outputs:
            add("out", value.name, value.dtype, value.shape)
        for name, value in sorted(graph.initializers.items()):
            tensor = value.const_value
            add("init", name, None if tensor is None else (tensor.dtype, tuple(tensor.shape)),
                _tensor_digest(tensor) if content and tensor is not None else None)
        for node in graph:
            add("node", node.domain, node.op_type, node.overload,
                tuple(v.name if v is not None else "" for v in node.inputs),
                tuple(v.name for v in node.outputs))
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    add("attr", attr.name)
                    graph_signature(attr.value)
                elif attr.type == ir.AttributeType.GRAPHS:
                    add("attr", attr.name, len(attr.value))
                    for sub in attr.value:
                        graph_signature(sub)
                elif attr.type == ir.AttributeType.TENSOR:
                    add("attr", attr.name, attr.value.dtype, tuple(attr.value.shape),
                        attr.value.tobytes() if attr.value.nbytes <= 4096 else
                        _tensor_digest(attr.value) if content else attr.value.nbytes)
                else:
                    add("attr", attr.name, attr.type, repr(attr.value))

    add("opsets", sorted(model.opset_imports.items()), model.ir_version)
    graph_signature(model.graph)
    for identifier in sorted(model.functions):
        add("function", identifier)
        graph_signature(model.functions[identifier].graph)
    return digest.hexdigest()


# Content digests by tensor object: tensors are shared between clones and not edited in place
# (passes give nodes new tensors), so each is hashed once while it lives. A tensor in external
# data is named by where its bytes lie (file identity, offset, length), not read: hashing it
# would page the whole file into memory, which large models cannot afford.
_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def _tensor_digest(tensor) -> str:
    entry = _DIGESTS.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    if isinstance(tensor, ir.ExternalTensor):
        info = os.stat(tensor.path)
        where = (os.path.realpath(tensor.path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                 tensor.offset, tensor.length)
        digest = hashlib.blake2b(repr(where).encode(), digest_size=16).hexdigest()
    else:
        digest = hashlib.blake2b(tensor.tobytes(), digest_size=16).hexdigest()
    try:
        key = id(tensor)
        _DIGESTS[key] = (weakref.ref(tensor, lambda _, k=key: _DIGESTS.pop(k, None)), digest)
    except TypeError:  # a tensor type without weak references: not cached
        pass
    return digest


def node_count(model: ir.Model) -> int:
    """Nodes in the model, subgraphs included."""
    return sum(1 for _ in model.graph.all_nodes())


def op_histogram(model: ir.Model) -> dict[str, int]:
    """How many nodes of each op type (``domain::Op`` outside the default domain)."""
    counts: dict[str, int] = {}
    for node in model.graph.all_nodes():
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


# Layers with a stored weight, and the position of that weight among the node's inputs.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0, "ConvInteger": 1,
                 "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3, "MatMulNBits": 1,
                 "GatherBlockQuantized": 0}
# Ops a stored tensor passes through on its way into a layer without changing what is stored.
_WEIGHT_VIEWS = ("DequantizeLinear", "Cast", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze")


def layer_precisions(model: ir.Model) -> dict[str, dict[str, str]]:
    """How each layer with a constant weight stores its weight and receives its activations.

    Returns ``{node name: {"op", "weights", "activations"}}`` in graph order (subgraphs
    included) with dtype names as ``summary.inspect`` writes them (``float``, ``float16``,
    ``int8``, ``int4``). ``weights`` is the dtype of the stored tensor behind the weight
    input, followed through DequantizeLinear, Cast and reshaping ops; a MatMulNBits weight
    is ``int<bits>``. ``activations`` is the quantized dtype when the data input comes
    through DequantizeLinear (its zero point's dtype), else the data input's own dtype: where
    the model leaves it untyped, shape inference on a clone finds it (best effort; ``-`` when
    still unknown). Nodes whose weight is not a constant (attention's activation x activation
    MatMul) and index lookups into integer tables are left out. The model is not changed.
    """
    found = []
    for index, node in enumerate(model.graph.all_nodes()):
        position = _WEIGHT_INPUT.get(node.op_type)
        if position is None or node.domain not in ("", "ai.onnx", "com.microsoft") or len(node.inputs) <= position:
            continue
        weights = _stored_dtype(node.inputs[position])
        if weights is None or weights in ("int32", "int64"):
            continue
        if node.op_type == "MatMulNBits":  # the packed uint8 tensor holds `bits`-bit values (4 by default)
            weights = f"int{node.attributes.get_int('bits', 4)}"
        found.append((node.name or f"{node.op_type}_{index}", node.op_type, weights,
                      node.inputs[1 if position == 0 else 0]))
    inferred: dict[str, str] = {}
    if any(data is not None and data.dtype is None for *_, data in found):
        # Best effort: on failure the pass logs a warning and the clone keeps the types it had.
        typed = model.clone()
        common_passes.ShapeInferencePass()(typed)
        inferred = {v.name: v.dtype.name.lower() for node in typed.graph.all_nodes() for v in node.outputs
                    if v.name and v.dtype is not None}
    return {name: {"op": op, "weights": weights, "activations": _activation_dtype(data, inferred)}
            for name, op, weights, data in found}


def _stored_dtype(value: ir.Value | None) -> str | None:
    """The dtype of the constant behind ``value`` (through ``_WEIGHT_VIEWS``), or None."""
    for _ in range(8):  # a chain of views is short; a longer one is not a stored weight
        if value is None:
            return None
        if value.const_value is not None:
            return value.const_value.dtype.name.lower()
        producer = value.producer()
        if producer is None:
            return None
        if producer.op_type == "Constant":
            tensor = producer.attributes.get_tensor("value")
            return None if tensor is None else tensor.dtype.name.lower()
        if producer.op_type not in _WEIGHT_VIEWS or not producer.inputs:
            return None
        value = producer.inputs[0]
    return None


def _activation_dtype(value: ir.Value | None, inferred: dict[str, str]) -> str:
    """The dtype a layer's data input carries: the quantized one when it comes dequantized,
    else its own (from ``inferred`` when the model does not say)."""
    if value is None:
        return "-"
    producer = value.producer()
    if producer is not None and producer.op_type == "DequantizeLinear":
        point = producer.inputs[2] if len(producer.inputs) > 2 else None
        stored = _stored_dtype(point)
        if stored is not None:
            return stored
        source = producer.inputs[0]
        # Without a zero point DequantizeLinear takes uint8 (ONNX spec: x_zero_point defaults to uint8 0)
        return source.dtype.name.lower() if source is not None and source.dtype is not None else "uint8"
    if value.dtype is not None:
        return value.dtype.name.lower()
    return inferred.get(value.name or "", "-")


def parameter_count(model: ir.Model) -> int:
    """Elements held by the initializers of every graph."""
    return sum(v.const_value.size for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None)


def saved_size(model: ir.Model) -> int:
    """Bytes the model takes saved: the protobuf, or the weights for a large model (never
    serialised whole into memory)."""
    if not _weights.is_large(model):
        return len(_proto.to_bytes(model))
    return _proto.weight_bytes(model)


def deflated_size(model: ir.Model) -> int | None:
    """Bytes of the saved model after deflate (what unstructured sparsity buys on disk), or None
    for a large model."""
    if _weights.is_large(model):
        return None
    return len(zlib.compress(_proto.to_bytes(model), 6))


def model_flops(model: ir.Model) -> int:
    """Multiply-adds x 2 of the Conv, Gemm and MatMul nodes for one sample (symbolic dims = 1).

    Needs output shapes (run shape inference first); nodes whose shapes are unknown count 0.
    """
    total = 0
    for node in model.graph.all_nodes():
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        weight_value = node.inputs[1]
        out_shape = node.outputs[0].shape
        weight_shape = weight_value.const_value.shape if weight_value.const_value is not None else weight_value.shape
        if out_shape is None or weight_shape is None:
            continue
        out = [d if isinstance(d, int) else 1 for d in out_shape]
        weight = [d if isinstance(d, int) else 1 for d in weight_shape]
        if node.op_type == "Conv":  # each output element sums C_in/group x kernel products
            total += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        else:  # each output element sums K products
            trans_b = node.op_type == "Gemm" and "transB" in node.attributes and node.attributes["transB"].value
            inner = weight[-1] if trans_b else weight[-2] if len(weight) >= 2 else weight[0]
            total += 2 * int(np.prod(out)) * inner
    return total


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1024
    return f"{count:.1f}GB"


def text_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` (the first is the header) as aligned plain-text lines, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def expose_intermediates(model: ir.Model, names: Iterable[str] | None = None,
                         include_inputs: bool = False) -> tuple[ir.Model, list[tuple[str, str, str]]]:
    """A copy with float intermediates of the main graph added as outputs.

    Returns the copy and ``(tensor, op_type, node_name)`` for each exposed tensor in graph
    order (``op_type`` is ``"input"`` for graph inputs). ``names`` restricts the tensors.
    Types come from shape inference (best effort: values that already carry types still work).
    """
    copy = model.clone()
    # Best effort: on failure the pass logs a warning and leaves the copy as it was, so only
    # values that already carry types are exposed.
    common_passes.ShapeInferencePass()(copy)
    wanted = set(names) if names is not None else None
    existing = {v.name for v in copy.graph.outputs}
    order = []

    def expose(value: ir.Value, op_type: str, node_name: str) -> None:
        if (value.name and value.dtype is not None and value.dtype.is_floating_point()
                and (wanted is None or value.name in wanted)):
            if value.name not in existing and op_type != "input":  # inputs are read from the feed
                copy.graph.outputs.append(value)
                existing.add(value.name)
            order.append((value.name, op_type, node_name))

    if include_inputs:
        for value in copy.graph.inputs:
            if value.name not in copy.graph.initializers:
                expose(value, "input", "")
    for node in copy.graph:
        for value in node.outputs:
            expose(value, node.op_type, node.name or "")
    return copy, order
