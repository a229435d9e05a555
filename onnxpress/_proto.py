"""The one protobuf helper: converting between ``onnx_ir.Model`` and ``onnx.ModelProto``.

Everything that must hand a ``ModelProto`` to a library (onnxsim, the ONNX checker, ONNX
Runtime) goes through here, once per call.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir

# Protobuf refuses messages of 2 GiB and more; stay clear of it with a margin for the graph.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
_MARGIN_BYTES = 64 * 2**20

# Models serialised in this process (``benchmarks/overhead.py`` reports it).
SERIALISATIONS = 0

# 4-bit types pack two elements per byte.
PACKED_4BIT = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
if hasattr(onnx.TensorProto, "FLOAT4E2M1"):
    PACKED_4BIT.add(onnx.TensorProto.FLOAT4E2M1)


def weight_bytes(model: ir.Model) -> int:
    """Bytes held by tensors: initializers and tensor attributes of every graph and function."""
    total = 0
    for graph in graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    total += attr.value.nbytes
    return total


def fits_in_protobuf(model: ir.Model) -> bool:
    """Whether the model can be serialised as one protobuf message."""
    return weight_bytes(model) < PROTOBUF_LIMIT_BYTES - _MARGIN_BYTES


def graphs(model: ir.Model):
    """Every graph of the model: the main graph, subgraphs, and function bodies."""
    yield from model.graphs()
    for function in model.functions.values():
        yield function.graph
        yield from function.subgraphs()


def _has_external(model: ir.Model) -> bool:
    for graph in graphs(model):
        if any(isinstance(v.const_value, ir.ExternalTensor) for v in graph.initializers.values()):
            return True
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    return True
    return False


def _in_memory(tensor: ir.ExternalTensor, release: bool) -> ir.Tensor:
    array = np.array(tensor.numpy(), copy=True) if release else tensor.numpy()
    if release:
        tensor.release()
    return ir.Tensor(array, dtype=tensor.dtype, name=tensor.name, doc_string=tensor.doc_string)


def tensors_in_memory(model: ir.Model, *, release: bool = False) -> ir.Model:
    """Replace, in place, every tensor ``model`` reads from an external file by one in memory.

    ``release``: copy the data and close the files (the model then outlives them: a cache
    entry that is evicted); otherwise the new tensors may still view the mapped files.
    """
    for graph in graphs(model):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value = _in_memory(value.const_value, release)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    node.attributes[name] = ir.AttrTensor(name, _in_memory(attr.value, release))
    return model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise to a self-contained ``ModelProto``: external tensors are read into it.

    Libraries given the result never see an external-data reference, so they never open a
    file the model names (only our loader, which checked those names, does).
    """
    if _has_external(model):
        model = tensors_in_memory(model.clone())  # the clone shares tensors; only its references change
    global SERIALISATIONS
    SERIALISATIONS += 1
    return ir.serde.serialize_model(model)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Deserialise a ``ModelProto`` whose tensors are all in memory."""
    return ir.serde.deserialize_model(proto)


def to_bytes(model: ir.Model) -> bytes:
    """The serialised model as bytes (for models that fit in protobuf)."""
    return to_proto(model).SerializeToString()


def parse(data: bytes) -> onnx.ModelProto:
    """Parse bytes into a ``ModelProto``; raises ``google.protobuf.message.DecodeError``."""
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return proto


def load_proto(path: str, *, load_external_data: bool) -> onnx.ModelProto:
    """Read a model file without following its external data unless asked."""
    return onnx.load(path, load_external_data=load_external_data)


def check_proto(proto: onnx.ModelProto, *, full: bool = True) -> None:
    """Run the ONNX checker (with shape inference when ``full``); raises ``ValidationError``."""
    onnx.checker.check_model(proto, full_check=full)


def check_path(path: str, *, full: bool = True) -> None:
    """Run the ONNX checker on a saved model (for models with external data)."""
    onnx.checker.check_model(path, full_check=full)


CheckerError = onnx.checker.ValidationError
ShapeInferenceError = onnx.shape_inference.InferenceError


def convert_opset(model: ir.Model, version: int) -> ir.Model:
    """The model converted to default-domain opset ``version`` by ONNX's version converter."""
    import onnx.version_converter

    return from_proto(onnx.version_converter.convert_version(to_proto(model), version))


ConversionError = (onnx.checker.ValidationError, RuntimeError, ValueError, IndexError)


def tensor_protos(proto: onnx.ModelProto):
    """Yield (TensorProto, description) for every tensor anywhere in the model."""
    def from_graph(graph: onnx.GraphProto, where: str):
        for tensor in graph.initializer:
            yield tensor, f"initializer '{tensor.name}'{where}"
        for sparse in graph.sparse_initializer:
            yield sparse.values, f"sparse initializer '{sparse.values.name}'{where}"
            yield sparse.indices, f"indices of sparse initializer '{sparse.values.name}'{where}"
        for node in graph.node:
            yield from from_node(node, where)

    def from_node(node: onnx.NodeProto, where: str):
        label = f" of node '{node.name or node.op_type}'{where}"
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, f"attribute '{attr.name}'{label}"
            for tensor in attr.tensors:
                yield tensor, f"attribute '{attr.name}'{label}"
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, f"attribute '{attr.name}'{label}"
            if attr.HasField("g"):
                yield from from_graph(attr.g, f" in subgraph of node '{node.name or node.op_type}'")
            for sub in attr.graphs:
                yield from from_graph(sub, f" in subgraph of node '{node.name or node.op_type}'")

    yield from from_graph(proto.graph, "")
    for function in proto.functions:
        for node in function.node:
            yield from from_node(node, f" in function '{function.name}'")


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's declared shape needs in raw form (None for strings and unknown types)."""
    count = int(np.prod(np.array(tensor.dims, dtype=np.float64))) if tensor.dims else 1
    if tensor.data_type in PACKED_4BIT:
        return (count + 1) // 2
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def all_nodes(proto: onnx.ModelProto):
    """Every NodeProto of the model: the main graph, subgraphs and function bodies."""
    def from_graph(nodes):
        for node in nodes:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from from_graph(attr.g.node)
                for sub in attr.graphs:
                    yield from from_graph(sub.node)

    yield from from_graph(proto.graph.node)
    for function in proto.functions:
        yield from from_graph(function.node)


def defines_function(op_type: str, domain: str, opset: int) -> bool:
    """Whether the ONNX operator schema of ``op_type`` at ``opset`` has a function body (such an
    op runs as its body where a runtime has no kernel of its own: HardSwish, Gelu, ...)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


@functools.lru_cache(maxsize=None)
def signature(op_type: str, domain: str, opset: int):
    """The ONNX schema of ``op_type`` at ``opset`` as plain data, or None when there is none:
    ``(inputs, outputs, constraints)``, formal parameters as ``(type_str, variadic)`` and each
    type parameter -> the type strings it allows. Read once per (op, domain, opset)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic

    def formals(params):
        return tuple((p.type_str, p.option == variadic) for p in params)

    constraints = {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}
    return formals(schema.inputs), formals(schema.outputs), constraints


def reference_run(source: bytes | str, feeds) -> list[dict[str, np.ndarray]]:
    """The outputs of the serialised model ``source`` (bytes or a path) on each feed, computed by
    ``onnx.reference`` (numpy, every ONNX type; slow: for small models a runtime lacks kernels for)."""
    from onnx.reference import ReferenceEvaluator

    proto = parse(source) if isinstance(source, bytes) else onnx.load(source)
    evaluator = ReferenceEvaluator(proto)
    names = [output.name for output in proto.graph.output]
    return [dict(zip(names, evaluator.run(None, dict(feed)))) for feed in feeds]
