"""The graph edits of the fp16 pass: converting constants, retyping values, Casts at the
boundaries between float32 and converted nodes, If/Loop/Scan bodies, and Cast clean-up.

``_fp16_rules`` decides what converts; this module only carries the decisions out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxpress.passes._common import constant
from onnxpress.passes._fp16_rules import (
    BOUND_OPS, FLOAT, LOW, MASK_VALUE, MAX, NUMPY, SENTINEL, Slots, TINY, epsilon_input, slots)

logger = logging.getLogger(__name__)


def out_of_range(array: np.ndarray, dtype: str) -> str | None:
    """``"mask"`` for a constant holding infinity sentinels beyond ``dtype``'s range (every value
    out of range is at least ``SENTINEL``, or the constant is a mask of 0s and one such value),
    ``"large"`` for other values beyond the range, None when it fits."""
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return None
    limit = MAX[dtype]
    magnitude = np.abs(array[np.isfinite(array)])
    outside = magnitude[magnitude > limit]
    if outside.size == 0:
        return None
    if outside.min() >= SENTINEL or np.unique(array).size <= 2 and (array == 0).any():
        return "mask"
    return "large"


def to_low(array: np.ndarray, dtype: str, *, role: str | None) -> np.ndarray:
    """``array`` in ``dtype``: infinity sentinels become ``MASK_VALUE`` (``role="mask"``),
    bounds beyond the range the largest finite value, an epsilon that would round to 0 ``TINY``."""
    limit = MAX[dtype]
    data = np.asarray(array, np.float32)
    if role == "mask":
        data = np.where(np.abs(data) > limit, np.sign(data) * -MASK_VALUE[dtype], data)
    elif role == "epsilon":
        data = np.where((data > 0) & (data < TINY[dtype]), TINY[dtype], data)
    data = np.where(np.isfinite(data), np.clip(data, -limit, limit), data)
    return data.astype(NUMPY[dtype])


@dataclass
class Applied:
    """What applying a plan changed."""

    casts_inserted: int = 0
    cast_pairs_removed: int = 0
    fixes: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "masks_clamped": {}, "epsilons_raised": {}, "bounds_clamped": {}, "casts_retargeted": {}})


# ----------------------------------------------------------------------------- surgery

# Float round trips that lose nothing: Cast(Cast(x, wide), back) is x.
_LOSSLESS = frozenset({(ir.DataType.FLOAT16, FLOAT), (ir.DataType.BFLOAT16, FLOAT),
                       (ir.DataType.FLOAT16, ir.DataType.DOUBLE), (ir.DataType.BFLOAT16, ir.DataType.DOUBLE),
                       (FLOAT, ir.DataType.DOUBLE)})


def owners(nodes: list[ir.Node]) -> dict[ir.Graph, ir.Node]:
    """Each subgraph (If/Loop/Scan body) -> the node holding it."""
    found = {}
    for node in nodes:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                found[attr.value] = node
            elif attr.type == ir.AttributeType.GRAPHS:
                found.update({graph: node for graph in attr.value})
    return found


def retype(value: ir.Value, dtype: ir.DataType) -> None:
    """Give ``value`` the tensor type ``dtype`` (a new type object: clones share them, and
    ``value.dtype = ...`` would change the original model's value too)."""
    value.type = ir.TensorType(dtype)


def is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    if producer is not None:
        return producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")
    return value.const_value is not None and not value.is_graph_input()


def constant_role(value: ir.Value, node: ir.Node, index: int, dtype: str) -> str | None:
    """How a float32 constant input converts for ``node``: ``mask`` (sentinels clamped to
    ``MASK_VALUE``), ``bound`` (clamped to the largest finite), ``epsilon`` (raised to ``TINY``
    if it would round to 0), or None (plain rounding)."""
    if node.op_type in BOUND_OPS:
        return "bound"
    if epsilon_input(node) == index:
        array = constant(value)
        if array is not None and float(array.astype(NUMPY[dtype]).ravel()[0]) == 0.0:
            return "epsilon"
        return None
    array = constant(value)
    return "mask" if array is not None and out_of_range(array, dtype) == "mask" else None


class _Surgeon:
    """Applies one plan to one model (see ``apply``)."""

    def __init__(self, model: ir.Model, dtype: str, done: Applied) -> None:
        self.model, self.dtype, self.low, self.done = model, dtype, LOW[dtype], done
        self.names = {v.name for n in ir.traversal.RecursiveGraphIterator(model.graph) for v in n.outputs}
        self.names.update(v.name for g in model.graphs() for v in list(g.inputs) + list(g.initializers.values()))
        self.casts: dict[tuple, ir.Value] = {}
        self.constants: dict[tuple, ir.Value] = {}

    def unique(self, base: str) -> str:
        name, suffix = base, 0
        while name in self.names:
            suffix += 1
            name = f"{base}_{suffix}"
        self.names.add(name)
        return name

    def cast(self, value: ir.Value, graph: ir.Graph, to: ir.DataType) -> ir.Value:
        """One Cast of ``value`` to ``to`` per graph, shared by its consumers there."""
        key = (value, graph, to)
        if key not in self.casts:
            node = ir.node("Cast", [value], attributes={"to": to},
                           name=self.unique(f"{value.name}_cast_{to.name.lower()}"))
            out = node.outputs[0]
            out.name, out.type, out.shape = self.unique(f"{value.name}_{to.name.lower()}"), ir.TensorType(to), value.shape
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, node)
            elif len(graph):
                graph.insert_before(graph.node(0), node)
            else:
                graph.append(node)
            self.casts[key] = out
            self.done.casts_inserted += 1
        return self.casts[key]

    def low_constant(self, value: ir.Value, role: str | None, in_place: bool) -> ir.Value:
        """``value`` (a float32 constant) in the low type: converted in place when every use
        wants it so, else a copy beside it."""
        key = (value, role)
        if key in self.constants:
            return self.constants[key]
        array = constant(value)
        converted = to_low(array, self.dtype, role=role)
        label = value.name or "constant"
        if role == "mask" and out_of_range(array, self.dtype):
            self.done.fixes["masks_clamped"][label] = (
                f"{float(array[np.abs(array) > MAX[self.dtype]].ravel()[0]):.3g} -> {MASK_VALUE[self.dtype]:g}")
        elif role == "epsilon":
            self.done.fixes["epsilons_raised"][label] = f"{float(array.ravel()[0]):.3g} -> {TINY[self.dtype]:.3g}"
        elif role == "bound" and out_of_range(array, self.dtype):
            self.done.fixes["bounds_clamped"][label] = f"to +-{MAX[self.dtype]:g}"
        producer = value.producer()
        if in_place:
            if producer is not None:
                for name in list(producer.attributes):
                    del producer.attributes[name]
                producer.attributes["value"] = ir.AttrTensor("value", ir.tensor(converted, name=value.name))
            else:
                value.const_value = ir.tensor(converted, name=value.name)
            retype(value, self.low)
            result = value
        else:
            name = self.unique(f"{value.name}_{self.dtype}")
            if producer is not None:
                node = ir.node("Constant", [], attributes={"value": ir.tensor(converted, name=name)}, name=name)
                node.outputs[0].name = name
                producer.graph.insert_after(producer, node)
                result = node.outputs[0]
            else:
                result = ir.Value(name=name, const_value=ir.tensor(converted, name=name))
                value.graph.register_initializer(result)
            result.type, result.shape = ir.TensorType(self.low), value.shape
        self.constants[key] = result
        return result

    def output(self, graph: ir.Graph, index: int, to: ir.DataType) -> None:
        """Make output ``index`` of ``graph`` of type ``to`` through a Cast; the Cast's output
        takes the value's name (the model's outputs keep their names)."""
        value = graph.outputs[index]
        cast = self.cast(value, graph, to)
        if not value.is_graph_input() and not value.is_initializer():
            original = value.name
            value.name = self.unique(f"{original}_{self.dtype}")
            self.names.discard(cast.name)
            cast.name = original
        graph.outputs[index] = cast


def apply(model: ir.Model, converted: set[int], *, dtype: str, keep_io_types: bool, opset: int) -> Applied:
    """Convert the nodes at traversal indices ``converted`` to ``dtype``, in place.

    Every float32 value a converted node makes becomes ``dtype``; each consumer that wants the
    other type reads it through one Cast per value and graph; float32 constants read by
    converted nodes are stored in ``dtype`` (sentinels, bounds and epsilons fixed, see
    ``constant_role``); Casts to float32 inside converted regions are retargeted and lossless
    Cast pairs removed. Graph inputs and outputs are float32 with ``keep_io_types``; a body's
    inputs and outputs follow the If/Loop/Scan holding it.
    """
    low = LOW[dtype]
    done = Applied()
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    chosen = {nodes[i] for i in converted}

    def is_float(value: ir.Value | None) -> bool:
        return value is not None and value.dtype == FLOAT

    plan = {node: slots(node, opset, dtype, is_float) for node in chosen}
    assert all(isinstance(s, Slots) for s in plan.values()), "the planner converts only convertible nodes"
    bodies = owners(nodes)
    retyped = [v for node in chosen for v, ok in zip(node.outputs, plan[node].outputs) if ok]
    if not keep_io_types:
        retyped += [v for v in model.graph.inputs if is_float(v)]
    retyped += [v for graph, owner in bodies.items() if owner in chosen for v in graph.inputs if is_float(v)]
    uses = [(node, i, value, low if node in plan and plan[node].inputs[i] else FLOAT)
            for node in nodes for i, value in enumerate(node.inputs) if is_float(value)]
    outputs = []
    for graph in [model.graph, *bodies]:
        wanted = (FLOAT if keep_io_types else low) if graph is model.graph else (
            low if bodies[graph] in chosen else FLOAT)
        outputs += [(graph, i, wanted) for i, v in enumerate(graph.outputs) if is_float(v)]
    surgeon = _Surgeon(model, dtype, done)
    for value in retyped:
        retype(value, low)
    for node in chosen:
        if node.op_type == "Cast" and node.attributes.get_int("to") == FLOAT and plan[node].outputs[0]:
            node.attributes["to"] = ir.AttrInt64("to", low)
            done.fixes["casts_retargeted"][node.name or node.outputs[0].name] = f"to {dtype}"
        elif node.op_type == "ConstantOfShape" and plan[node].outputs[0]:
            tensor = node.attributes.get_tensor("value")
            array = tensor.numpy() if tensor is not None else np.zeros(1, np.float32)
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(to_low(
                array, dtype, role="mask" if out_of_range(array, dtype) else None)))
            if out_of_range(array, dtype):
                done.fixes["masks_clamped"][node.name or "ConstantOfShape"] = f"{float(array.ravel()[0]):.3g} -> " \
                                                                             f"{MASK_VALUE[dtype]:g}"
    for node, index, value, wanted in uses:
        if is_constant(value) and value.dtype == FLOAT and wanted == low:
            role = constant_role(value, node, index, dtype)
            everyone = all(u.node in plan and plan[u.node].inputs[u.idx] and
                           constant_role(value, u.node, u.idx, dtype) == role for u in value.uses())
            replacement = surgeon.low_constant(value, role, everyone and not value.is_graph_output())
            if replacement is not value:
                node.replace_input_with(index, replacement)
        elif value.dtype != wanted:
            node.replace_input_with(index, surgeon.cast(value, node.graph, wanted))
    for graph, index, wanted in outputs:
        if graph.outputs[index].dtype != wanted:
            surgeon.output(graph, index, wanted)
    done.cast_pairs_removed = collapse_casts(model)
    return done


def collapse_casts(model: ir.Model) -> int:
    """Remove Casts to the type their input has, and the second Cast of a lossless round trip
    (``Cast(Cast(x: float16, float32), float16)`` is x). Returns the count removed."""
    removed = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.graph is None or node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        source, out = node.inputs[0], node.outputs[0]
        to = ir.DataType(node.attributes.get_int("to"))
        if source is None or out.is_graph_output():
            continue
        replacement = None
        if source.dtype == to:
            replacement = source
        else:
            before = source.producer()
            if before is not None and before.op_type == "Cast" and before.domain in ("", "ai.onnx"):
                origin = before.inputs[0]
                if origin is not None and origin.dtype == to and (to, source.dtype) in _LOSSLESS:
                    replacement = origin
        if replacement is None:
            continue
        out.replace_all_uses_with(replacement)
        node.graph.remove(node, safe=True)
        removed += 1
        before = source.producer()
        if before is not None and before.op_type == "Cast" and not source.uses() and not source.is_graph_output():
            before.graph.remove(before, safe=True)
    return removed
