"""Helpers shared by several passes."""
from __future__ import annotations

import hashlib

import onnx_ir as ir


def fingerprint(model: ir.Model) -> str:
    """A digest of the model's structure: nodes, attributes, values, initializer signatures.

    Tensor contents are summarised by dtype and shape, so this is cheap on large models.
    Passes that go through protobuf use it to report ``modified`` exactly.
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
            add("init", name, None if tensor is None else (tensor.dtype, tuple(tensor.shape)))
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
                        attr.value.tobytes() if attr.value.nbytes <= 4096 else attr.value.nbytes)
                else:
                    add("attr", attr.name, attr.type, repr(attr.value))

    add("opsets", sorted(model.opset_imports.items()))
    graph_signature(model.graph)
    for identifier in sorted(model.functions):
        add("function", identifier)
        graph_signature(model.functions[identifier].graph)
    return digest.hexdigest()


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
