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


def constant(value: ir.Value | None):
    """The numpy array of a constant input (initializer or Constant node), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


def set_initializer(graph: ir.Graph, node: ir.Node, index: int, array, name: str) -> ir.Value:
    """Give ``node`` a new initializer input (the old one is left for dead-code removal)."""
    base, suffix = name, 0
    while name in graph.initializers:
        suffix += 1
        name = f"{base}_{suffix}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    node.replace_input_with(index, value)
    return value


def fold_batchnorm(model: ir.Model) -> int:
    """Fold BatchNormalization into the Conv before it (constant weights, single consumer).

    Per the ONNX spec, BN computes ``scale * (x - mean) / sqrt(var + epsilon) + B``, so the
    conv's weight is scaled per output channel and its bias shifted. Returns the count folded.
    """
    import numpy as np

    folded = 0
    graph = model.graph
    for bn in list(graph):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.outputs) != 1:
            continue
        conv = bn.inputs[0].producer() if bn.inputs[0] is not None else None
        if conv is None or conv.op_type != "Conv" or len(bn.inputs[0].uses()) != 1:
            continue
        weight = constant(conv.inputs[1])
        params = [constant(v) for v in bn.inputs[1:5]]
        if weight is None or any(p is None for p in params):
            continue
        scale, shift, mean, var = (p.astype(np.float64) for p in params)
        epsilon = bn.attributes["epsilon"].value if "epsilon" in bn.attributes else 1e-5
        factor = scale / np.sqrt(var + epsilon)
        bias = constant(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else np.zeros(weight.shape[0])
        new_weight = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(weight.dtype)
        new_bias = ((bias - mean) * factor + shift).astype(weight.dtype)
        set_initializer(graph, conv, 1, new_weight, f"{conv.inputs[1].name}_bnfolded")
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            set_initializer(graph, conv, 2, new_bias, f"{conv.inputs[2].name}_bnfolded")
        else:
            name = f"{conv.name or 'conv'}_bias_bnfolded"
            value = ir.Value(name=name, const_value=ir.tensor(new_bias, name=name))
            graph.register_initializer(value)
            conv.resize_inputs(3)
            conv.replace_input_with(2, value)
        output, conv_out = bn.outputs[0], conv.outputs[0]
        is_graph_output = any(o is output for o in graph.outputs)
        output.replace_all_uses_with(conv_out, replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        if is_graph_output:  # graph outputs keep their names
            name = output.name
            output.name = None
            conv_out.name = name
        folded += 1
    return folded


def model_flops(model: ir.Model) -> int:
    """Multiply-adds x 2 of the Conv, Gemm and MatMul nodes for one sample (symbolic dims = 1).

    Needs output shapes (run shape inference first); nodes whose shapes are unknown count 0.
    """
    import numpy as np

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


def deflated_size(model: ir.Model) -> int | None:
    """Bytes of the saved model after deflate (what unstructured sparsity buys on disk), or None
    past the protobuf limit."""
    import zlib

    from onnxpress import _proto

    if not _proto.fits_in_protobuf(model):
        return None
    return len(zlib.compress(_proto.to_bytes(model), 6))


def require_calibration(item, needed: bool, what: str) -> None:
    """Raise ``PreconditionError`` when ``needed`` and the pipeline gave ``item`` no calibration data.

    ``what`` names the pass and the options that need it (``"prune: criterion 'importance'"``).
    """
    context = getattr(item, "context", None)
    if needed and (context is None or context.calibration is None):
        raise ir.passes.PreconditionError(
            f"{what}: calibration data needed (run the pass in a Pipeline with calibration=...)")
