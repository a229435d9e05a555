"""A graph rewriter that takes a whole ``ModelProto`` (ONNX Runtime's quantizer) applied to a
large model one segment at a time.

Each segment reaches the rewriter with its shapes inferred (``value_info``), done before its
weights were read in.

The model is written to the weights workspace (``_weights.artefact``) and cut into segments of
at most ``budget`` bytes of weights (``_segments.Plan``). Each segment holding nodes to rewrite
becomes a small model with its weights in memory and is handed to the rewriter; its nodes and
new initializers replace the segment's, the new initializers written to the spill file as they
come. The result refers to the workspace for every large tensor, so no more than one segment's
weights (and the rewriter's copies of them) are in memory at a time.

The rewriter must keep the names of the values that cross segment borders (ONNX Runtime's
quantizers keep a node's output names). Where two segments each make the same value (the
dynamic quantization of one activation read by layers on both sides of a border), the later
node is dropped when it is the same computation, and the rewrite fails otherwise.
"""
from __future__ import annotations

from typing import Callable

import onnx
import onnx.external_data_helper
import onnx_ir as ir

from onnxpress import _proto, _segments, _weights
from onnxpress.modelinfo import fingerprint

Rewriter = Callable[[onnx.ModelProto, list[str]], onnx.ModelProto]


class SegmentError(ValueError):
    """Two segments made one value by different computations."""


def rewrite(model: ir.Model, nodes: list[str], rewriter: Rewriter, budget: int) -> ir.Model:
    """``model`` with the ``nodes`` (by name) rewritten by ``rewriter(segment, names)``, one
    segment of at most ``budget`` bytes of weights at a time."""
    space = _weights.workspace()
    path = _weights.artefact(model, fingerprint(model, content=True))
    plan = _segments.Plan(path, budget)
    result = _proto.load_proto(path, load_external_data=False)
    wanted = set(nodes)
    new_nodes: list[onnx.NodeProto] = []
    tensors: dict[str, onnx.TensorProto] = {}
    made: dict[str, bytes] = {}  # value -> the computation that made it
    opsets = {entry.domain: entry.version for entry in result.opset_import}

    def add_node(node: onnx.NodeProto) -> None:
        # A copy: a sub-message held keeps its whole model (with the segment's weights) alive.
        node = _copy(node)
        signature = _signature(node)
        repeated = [name for name in node.output if name and name in made]
        if repeated:
            if all(made[name] == signature for name in repeated) and len(repeated) == len([o for o in node.output if o]):
                return  # the same computation as an earlier segment's: its values are there already
            raise SegmentError(f"value '{repeated[0]}' is made in two segments by different nodes")
        for name in node.output:
            if name:
                made[name] = signature
        new_nodes.append(node)

    for index, segment in enumerate(plan.segments):
        names = [node.name for node in segment.nodes if node.name in wanted]
        if not names:
            for node in segment.nodes:
                add_node(node)
            for name in segment.initializers:
                tensors.setdefault(name, plan.tensors[name])
            continue
        piece = plan.model(index, typed_outputs=True)
        try:  # shapes inferred while the weights are still references: cheap
            piece = onnx.shape_inference.infer_shapes(piece)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            pass  # the rewriter infers what it needs
        onnx.external_data_helper.load_external_data_for_model(piece, str(plan.folder))
        rewritten = rewriter(piece, names)
        del piece
        for entry in rewritten.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
        for node in rewritten.graph.node:
            add_node(node)
        for tensor in rewritten.graph.initializer:
            if tensor.name in tensors:
                continue
            original = plan.tensors.get(tensor.name)
            if original is not None and _same(original, tensor):
                tensors[tensor.name] = original  # untouched: still where it lies
            else:
                tensors[tensor.name] = _copy(_spilled(space, tensor))
        del rewritten
    graph = result.graph
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(tensors.values())
    del graph.value_info[:]  # inferred for the old graph
    del result.opset_import[:]
    result.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items())
    rewritten_model = _proto.from_proto(result)
    ir.external_data.set_base_dir(rewritten_model.graph, str(space.folder))
    return rewritten_model


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _signature(node: onnx.NodeProto) -> bytes:
    """The computation a node stands for: its op, inputs and attributes (not its name)."""
    copy = _copy(node)
    copy.name = ""
    copy.doc_string = ""
    return copy.SerializeToString(deterministic=True)


def _same(original: onnx.TensorProto, tensor: onnx.TensorProto) -> bool:
    """Whether ``tensor`` is ``original`` handed back (ONNX Runtime's quantizers make new
    tensors under new names and never change one in place: name, type and shape tell)."""
    return original.data_type == tensor.data_type and list(original.dims) == list(tensor.dims)


def _spilled(space, tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` written to the spill file, as a reference to it (a small one stays inline)."""
    if (_proto.tensor_nbytes(tensor) or 0) < _weights.SPILL_MIN_BYTES or tensor.data_type == onnx.TensorProto.STRING:
        return tensor
    made = ir.serde.deserialize_tensor(tensor)
    return ir.serde.serialize_tensor(space.external(made, space.append(made)))
