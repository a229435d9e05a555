"""Helpers shared by several passes."""
from __future__ import annotations

import onnx_ir as ir


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


def require_calibration(item, needed: bool, what: str) -> None:
    """Raise ``PreconditionError`` when ``needed`` and the pipeline gave ``item`` no calibration data.

    ``what`` names the pass and the options that need it (``"prune: criterion 'importance'"``).
    """
    context = getattr(item, "context", None)
    if needed and (context is None or context.calibration is None):
        raise ir.passes.PreconditionError(
            f"{what}: calibration data needed (run the pass in a Pipeline with calibration=...)")
