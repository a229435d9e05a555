"""Admission of untrusted model files: structural checks before any other library sees them.

``onnx.load`` accepts graphs with cycles, undefined tensors and duplicate names, and tensors
whose declared shape does not match their data; the checker accepts unknown domains and opset
999. These checks refuse all of that with one line naming the model and the culprit.
External-data references are checked by ``onnxpress.io``.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx.numpy_helper
from google.protobuf.message import Message

from onnxpress import _proto
from onnxpress.errors import ModelError

# Largest element count a declared tensor may have (2**36 float32 = 256 GiB): beyond it a
# shape is an attack or a mistake, and products near int64 overflow.
MAX_ELEMENTS = 2**36
# Static budget, checked before anything runs: what a constant-shaped op would allocate, what
# a fixed-shape input needs, and how often a Loop with a constant trip count would spin.
MAX_CONSTANT_OUTPUT_ELEMENTS = 2**31
MAX_INPUT_ELEMENTS = 2**32
MAX_LOOP_TRIPS = 10**7

# Domains of function libraries exporters emit besides the operator schemas' own domains.
_EXPORTER_DOMAINS = {"pkg.onnxscript.torch_lib", "pkg.onnxscript.torch_lib.common", "pkg.torch.onnx"}


_TYPED_FIELDS = {
    onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
    onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
    onnx.TensorProto.UINT32: "uint64_data", onnx.TensorProto.STRING: "string_data",
    onnx.TensorProto.COMPLEX64: "float_data", onnx.TensorProto.COMPLEX128: "double_data",
}


@functools.cache
def _known_domains() -> frozenset[str]:
    """Operator domains onnx or the installed ONNX Runtime have schemas for."""
    from onnxruntime.capi import _pybind_state

    domains = {schema.domain for schema in onnx.defs.get_all_schemas_with_history()}
    domains |= {schema.domain for schema in _pybind_state.get_all_operator_schema()}
    return frozenset(domains | _EXPORTER_DOMAINS | {"", "ai.onnx"})


@functools.cache
def _max_opsets() -> dict[str, int]:
    """The highest opset version onnx knows per domain."""
    versions: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        domain = schema.domain or ""
        versions[domain] = max(versions.get(domain, 0), schema.since_version)
    versions[""] = max(versions.get("", 0), onnx.defs.onnx_opset_version())
    return versions


def admit(proto: onnx.ModelProto, name: str) -> None:
    """Raise ``ModelError`` naming ``name`` and the culprit unless the model is well formed."""
    _check_text(proto, name, "model")
    if proto.ir_version < 3 or proto.ir_version > onnx.IR_VERSION:
        raise ModelError(f"{name}: IR version {proto.ir_version} is not supported "
                         f"(this onnx reads 3 to {onnx.IR_VERSION})")
    local_domains = {function.domain for function in proto.functions}
    used = _used_domains(proto)
    maxima = _max_opsets()
    for opset in proto.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        # An unknown domain no node uses is inert (ONNX Runtime's own output imports some).
        if domain not in _known_domains() and domain not in local_domains and opset.domain in used:
            raise ModelError(f"{name}: imports unknown operator domain '{opset.domain}'")
        if opset.version < 1 or (domain in maxima and opset.version > maxima[domain]):
            raise ModelError(f"{name}: opset {opset.version} of domain '{opset.domain or 'ai.onnx'}' is not "
                             f"supported (at most {maxima.get(domain, '?')})")
    for tensor, where in _proto.tensor_protos(proto):
        _check_tensor(tensor, f"{name}: {where}")
    _check_graph(proto.graph, name, set(), "graph")
    _check_budget(proto.graph, name, {})
    for function in proto.functions:
        seen = set(function.input)
        for node in function.node:
            for value in node.input:
                if value and value not in seen:
                    raise ModelError(f"{name}: function '{function.name}' node '{node.name or node.op_type}' "
                                     f"reads '{value}', which nothing before it defines")
            seen.update(o for o in node.output if o)


def _check_text(message, name: str, where: str) -> None:
    """Every string field anywhere must be valid UTF-8 (protobuf hands invalid ones back as bytes,
    which every consumer would then print, compare or hash differently)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING:
            for text in ((value,) if isinstance(value, (str, bytes)) else value):
                if not isinstance(text, str):
                    raise ModelError(f"{name}: {where} field '{field.name}' is not valid UTF-8 "
                                     f"({bytes(text)[:40]!r})")
        elif field.type == field.TYPE_MESSAGE:
            items = (value,) if isinstance(value, Message) else value
            for index, item in enumerate(items):
                label = getattr(item, "name", "") if isinstance(getattr(item, "name", ""), str) else ""
                _check_text(item, name, f"{field.name} '{label}'" if label else f"{field.name}[{index}]")


def _used_domains(proto: onnx.ModelProto) -> set[str]:
    found: set[str] = set()

    def visit(nodes) -> None:
        for node in nodes:
            found.add(node.domain)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    visit(attribute.g.node)
                for sub in attribute.graphs:
                    visit(sub.node)

    visit(proto.graph.node)
    for function in proto.functions:
        visit(function.node)
    return found


def _check_tensor(tensor: onnx.TensorProto, where: str) -> None:
    """Check one tensor's declared dims against its data."""
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"{where} has a negative dimension {list(tensor.dims)}")
    count = 1
    for d in tensor.dims:
        count *= d
        if count > MAX_ELEMENTS:
            raise ModelError(f"{where} declares more than {MAX_ELEMENTS} elements ({list(tensor.dims)})")
    expected = _proto.tensor_nbytes(tensor)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # length and offset are checked against the file by onnxpress.io
    if tensor.HasField("raw_data"):
        if expected is None and tensor.data_type != onnx.TensorProto.STRING:
            raise ModelError(f"{where} has unknown data type {tensor.data_type}")
        if expected is not None and len(tensor.raw_data) != expected:
            raise ModelError(f"{where} holds {len(tensor.raw_data)} bytes but its shape {list(tensor.dims)} "
                             f"needs {expected}")
        return
    field = _TYPED_FIELDS.get(tensor.data_type, "int32_data")
    held = len(getattr(tensor, field))
    per_element = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    if held and held != count * per_element and not (tensor.data_type in _proto.PACKED_4BIT and held == (count + 1) // 2):
        raise ModelError(f"{where} holds {held} values but its shape {list(tensor.dims)} needs {count}")


def _check_graph(graph: onnx.GraphProto, name: str, outer: set[str], label: str) -> None:
    """Unique names, every consumed tensor defined, no cycles (subgraphs see the outer scope)."""
    defined: dict[str, str] = {}

    def define(value: str, what: str) -> None:
        if value in defined:
            raise ModelError(f"{name}: {label} defines '{value}' twice ({defined[value]} and {what})")
        defined[value] = what

    for value in graph.input:
        if value.name not in defined:  # old models list initializers as inputs too
            define(value.name, "an input")
    for tensor in graph.initializer:
        if tensor.name in defined and defined[tensor.name] != "an input":
            define(tensor.name, "an initializer")
        defined.setdefault(tensor.name, "an initializer")
    for sparse in graph.sparse_initializer:
        defined.setdefault(sparse.values.name, "a sparse initializer")
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for value in node.output:
            if value:
                define(value, f"node '{node.name or node.op_type}'")
                producers[value] = index
    visible = outer | set(defined)
    # Kahn's algorithm over the nodes: what is left once no node can run lies on a cycle.
    waiting = np.zeros(len(graph.node), dtype=np.int64)
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        for value in node.input:
            if not value:
                continue
            if value not in visible:
                raise ModelError(f"{name}: {label} node '{node.name or node.op_type}' reads '{value}', "
                                 "which nothing defines")
            if value in producers:
                waiting[index] += 1
                readers.setdefault(producers[value], []).append(index)
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
            for sub in subgraphs:
                _check_graph(sub, name, visible, f"subgraph of node '{node.name or node.op_type}'")
    ready = [i for i in range(len(graph.node)) if waiting[i] == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for reader in readers.get(index, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done != len(graph.node):
        stuck = next(graph.node[i] for i in range(len(graph.node)) if waiting[i] > 0)
        raise ModelError(f"{name}: {label} has a cycle through node '{stuck.name or stuck.op_type}'")
    for output in graph.output:
        if output.name not in visible:
            raise ModelError(f"{name}: {label} output '{output.name}' is not defined by any node")


def _small_constant(tensor: onnx.TensorProto) -> np.ndarray | None:
    """The values of a small integer tensor (shapes, repeats, trip counts), else None."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.dims) > 1 or (
            tensor.dims and tensor.dims[0] > 64):
        return None
    if tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    return onnx.numpy_helper.to_array(tensor).astype(np.int64).reshape(-1)


def _check_budget(graph: onnx.GraphProto, name: str, outer: dict[str, np.ndarray]) -> None:
    """Refuse what would allocate or spin without bound once a runtime folds or runs it."""
    constants = dict(outer)
    for tensor in graph.initializer:
        value = _small_constant(tensor)
        if value is not None:
            constants[tensor.name] = value
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        fixed = [d.dim_value for d in dims if d.HasField("dim_value")]
        if len(fixed) == len(dims) and dims and int(np.prod(np.array(fixed, dtype=np.float64))) > MAX_INPUT_ELEMENTS:
            raise ModelError(f"{name}: input '{value.name}' declares {list(fixed)}, over {MAX_INPUT_ELEMENTS} elements")
    for node in graph.node:
        label = node.name or node.op_type
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.HasField("t"):
                    value = _small_constant(attribute.t)
                    if value is not None and node.output:
                        constants[node.output[0]] = value
        known = [constants.get(i) for i in node.input]
        elements = None
        if node.op_type in ("ConstantOfShape", "Expand") and len(known) >= 1:
            shape = known[0] if node.op_type == "ConstantOfShape" else (known[1] if len(known) > 1 else None)
            if shape is not None:
                elements = float(np.prod(np.maximum(shape.astype(np.float64), 0)))
        elif node.op_type == "Tile" and len(known) > 1 and known[1] is not None:
            elements = float(np.prod(np.maximum(known[1].astype(np.float64), 0)))  # the repeats alone
        if elements is not None and elements > MAX_CONSTANT_OUTPUT_ELEMENTS:
            raise ModelError(f"{name}: {node.op_type} node '{label}' would produce {elements:.3g} elements "
                             f"(limit {MAX_CONSTANT_OUTPUT_ELEMENTS})")
        if node.op_type == "Loop" and node.input and known and known[0] is not None and known[0].size == 1:
            if int(known[0][0]) > MAX_LOOP_TRIPS:
                raise ModelError(f"{name}: Loop node '{label}' has a constant trip count of {int(known[0][0])} "
                                 f"(limit {MAX_LOOP_TRIPS})")
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                _check_budget(sub, name, constants)
