"""The one protobuf helper: converting between ``onnx_ir.Model`` and ``onnx.ModelProto``.

Everything that must hand a ``ModelProto`` to a library (onnxsim, the ONNX checker, ONNX
Runtime) goes through here, once per call.
"""
from __future__ import annotations

import onnx
import onnx_ir as ir

# Protobuf refuses messages of 2 GiB and more; stay clear of it with a margin for the graph.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
_MARGIN_BYTES = 64 * 2**20


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


def _in_memory(tensor: ir.ExternalTensor) -> ir.Tensor:
    return ir.Tensor(tensor.numpy(), name=tensor.name, doc_string=tensor.doc_string)


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise to a self-contained ``ModelProto``: external tensors are read into it.

    Libraries given the result never see an external-data reference, so they never open a
    file the model names (only our loader, which checked those names, does).
    """
    if _has_external(model):
        model = model.clone()  # shares tensors; we only swap the references below
        for graph in graphs(model):
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    value.const_value = _in_memory(value.const_value)
            for node in graph:
                for name, attr in list(node.attributes.items()):
                    if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                        node.attributes[name] = ir.AttrTensor(name, _in_memory(attr.value))
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
