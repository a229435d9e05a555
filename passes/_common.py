"""Helpers shared by several passes."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxpress import _weights

logger = logging.getLogger(__name__)

_FOLDS_INTO = ("Conv", "ConvTranspose", "Gemm")


def batchnorm_rules() -> tuple:
    """onnxscript's rewrite rules folding BatchNormalization into Conv, ConvTranspose and Gemm.

    ``W' = W·γ/√(var + ε)`` and ``B' = (B - μ)·γ/√(var + ε) + β`` (ε defaults to 1e-5, Gemm's
    ``beta`` folded into the bias). Imported on use: onnxscript's rewriter is slow to load.
    """
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    return fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array of a constant input (initializer or Constant node), else None.

    ``ir.convenience.get_const_tensor`` reads the Constant node, ``value_floats`` and
    ``value_ints`` included; a Constant it cannot read (``sparse_value``) counts as not constant.
    """
    tensor = constant_tensor(value)
    return _weights.read(tensor) if tensor is not None else None


def constant_tensor(value: ir.Value | None) -> ir.TensorProtocol | None:
    """The tensor of a constant input, not read (its shape and type are known without it)."""
    if value is None:
        return None
    try:
        return ir.convenience.get_const_tensor(value)
    except ValueError as err:  # a Constant node get_const_tensor does not read
        logger.debug("%s: not read as a constant (%s)", value.name, err)
        return None


def add_initializer(graph: ir.Graph, name: str, array) -> ir.Value:
    """Register ``array`` as a new initializer under ``name`` (suffixed while the name is taken);
    streaming a large model, a large one goes to the workspace's spill file (``_weights.keep``)."""
    base, suffix = name, 0
    while name in graph.initializers:
        suffix += 1
        name = f"{base}_{suffix}"
    value = ir.Value(name=name, const_value=_weights.keep(ir.tensor(array, name=name)))
    graph.register_initializer(value)
    return value


def set_initializer(graph: ir.Graph, node: ir.Node, index: int, array, name: str) -> ir.Value:
    """Give ``node`` a new initializer input (the old one is left for dead-code removal)."""
    value = add_initializer(graph, name, array)
    node.replace_input_with(index, value)
    return value


def fold_batchnorm(model: ir.Model) -> int:
    """Fold BatchNormalization into the Conv, ConvTranspose or Gemm before it, in place.

    onnxscript's rewrite rules do the algebra; they fold only where the weights, bias and
    batch-norm parameters are initializers used nowhere else and the producer's output has no
    other consumer. The folded node keeps the producer's name (include/exclude lists and
    statistics name nodes) and the batch norm's output value. Returns the count folded; the
    batch norms' parameters are left as unused initializers for dead-code removal.
    """
    from onnxscript.rewriter import RewriteRuleSet

    producers = {}  # batch-norm output name -> name of the node it would fold into
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "BatchNormalization" and node.inputs and node.inputs[0] is not None:
            producer = node.inputs[0].producer()
            if producer is not None and producer.op_type in _FOLDS_INTO and producer.name and node.outputs[0].name:
                producers[node.outputs[0].name] = producer.name
    folded = RewriteRuleSet(list(batchnorm_rules())).apply_to_model(model)
    if folded:
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type in _FOLDS_INTO and node.outputs[0].name in producers:
                node.name = producers[node.outputs[0].name]
    return folded


def reject_option(bad: bool, pass_name: str, option: str, rule: str, value: object) -> None:
    """Raise ``ValueError("<pass>: <option> must be <rule>, got <value>")`` when ``bad``.

    The one shape of a pass's option check, so every pass words a bad option alike.
    """
    if bad:
        raise ValueError(f"{pass_name}: {option} must be {rule}, got {value!r}")
