"""A generated corpus of hostile and broken models, each with the outcome onnxpress must give.

Nothing here is committed as a model file: ``build(case, folder)`` writes a case's files into
``folder/model/`` (the model's own folder) and a foreign file ``folder/secret.bin`` beside it
that no output may ever contain. Every case names what ``onnxpress inspect`` and ``onnxpress
run`` (default recipe: simplify + quantize, calibrated on the digits sample) must do: the exit
code and a pattern of the one error line.

Classes: malformed files, versions and domains, tensor data vs declared shapes, names (unique,
defined, UTF-8), graph structure (cycles, scopes), external data (escapes, links, special
files, keys, ranges, checksums), static budget (constant-shaped blow-ups, Loop trip counts,
inputs, weights vs the memory limit), runtime blow-ups the static check cannot see (time and
memory limits), models ONNX Runtime refuses or fails on, and odd but valid models that must work.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

# What the foreign file holds: an output containing it leaked bytes from outside the model's folder.
MARKER = b"FOREIGN-SECRET!!"
SECRET = MARKER * 160  # 2560 bytes: exactly the 64 x 10 float weight of the base model
WEIGHT_BYTES = len(SECRET)
OPSET = 18


@dataclass(frozen=True)
class Outcome:
    code: int
    pattern: str = ""  # regular expression the last stderr line must match (failures)


OK = Outcome(0)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]  # writes into the model folder, returns the model path
    inspect: Outcome
    run: Outcome
    options: tuple[str, ...] = ()  # global CLI options (limits)
    doc: str = ""


# ------------------------------------------------------------------------------ building blocks

def _weight() -> np.ndarray:
    return (np.arange(64 * 10, dtype=np.float32).reshape(64, 10) % 7 - 3) / 10


def base_model(nodes_extra: list | None = None) -> onnx.ModelProto:
    """logits = Flatten(input) @ W + b, for the digits recipe's input (batch x 1 x 8 x 8)."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["logits"], name="add"),
    ] + (nodes_extra or [])
    graph = helper.make_graph(
        nodes, "corpus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[onnx.numpy_helper.from_array(_weight(), "W"),
                     onnx.numpy_helper.from_array(np.full(10, 0.1, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="corpus")
    model.ir_version = 10
    return model


def _write(folder: Path, model: onnx.ModelProto | bytes, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def _proto(change: Callable[[onnx.ModelProto], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        model = base_model()
        change(model)
        return _write(folder, model)
    return build


def _raw(change: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return _write(folder, change(base_model().SerializeToString()))
    return build


def _external(location: str, *, prepare: Callable[[Path], None] | None = None, offset: int | None = None,
              length: int | None = WEIGHT_BYTES, extra: dict[str, str] | None = None) -> Callable[[Path], Path]:
    """W stored as external data at ``location``; ``prepare`` makes the files it points at."""
    def build(folder: Path) -> Path:
        if prepare is not None:
            prepare(folder)
        model = base_model()
        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        entries = {"location": location}
        if offset is not None:
            entries["offset"] = str(offset)
        if length is not None:
            entries["length"] = str(length)
        entries.update(extra or {})
        for key, value in entries.items():
            weight.external_data.add(key=key, value=value)
        return _write(folder, model)
    return build


def _weights_file(folder: Path, name: str = "weights.bin") -> None:
    (folder / name).write_bytes(_weight().tobytes())


def _replace_name(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """Swap a length-prefixed string in the serialised model (same length keeps it parseable)."""
    def change(data: bytes) -> bytes:
        assert len(old) == len(new) and old in data
        return data.replace(old, new, 1)
    return change


def _add_node(*nodes: onnx.NodeProto, outputs: list | None = None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        model = base_model(list(nodes))
        for value in outputs or []:
            model.graph.output.append(value)
        return _write(folder, model)
    return build


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _scalar_const(name: str, value, dtype=TensorProto.INT64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=helper.make_tensor(name, dtype, [], [value]))


def _float_out(name: str, dims=("batch", 10)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _loop(trip: str) -> onnx.NodeProto:
    """Loop(trip, true, logits) whose body only passes its state on: it spins, allocating nothing."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Identity", ["state_in"], ["state_out"], name="carry")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", 10])])
    return helper.make_node("Loop", [trip, "cond", "logits"], ["spun"], name="spin", body=body)


def _spin_forever(folder: Path) -> Path:
    """A Loop whose trip count comes from the input's values: only running it shows it spins."""
    return _add_node(
        _scalar_const("cond", True, TensorProto.BOOL),
        helper.make_node("ReduceMax", ["input"], ["peak"], name="peak", keepdims=0),
        _scalar_const("huge", 1e18, TensorProto.FLOAT),
        helper.make_node("Add", ["peak", "huge"], ["big"], name="big"),
        helper.make_node("Cast", ["big"], ["trip"], name="trip", to=TensorProto.INT64),
        _loop("trip"),
        outputs=[_float_out("spun")])(folder)


def _allocate_from_data(folder: Path) -> Path:
    """ConstantOfShape of a shape computed from the input's values: 9e8 floats (3.6 GB) at run time,
    which only the memory limit (2 GB here) stops."""
    return _add_node(
        _const("one_dim", [1]),
        helper.make_node("ReduceMax", ["input"], ["peak"], name="peak", keepdims=0),
        _scalar_const("scale", 3e4, TensorProto.FLOAT),
        helper.make_node("Add", ["peak", "scale"], ["side_f"], name="side_f"),
        helper.make_node("Cast", ["side_f"], ["side"], name="side", to=TensorProto.INT64),
        helper.make_node("Reshape", ["side", "one_dim"], ["side1"], name="side1"),
        helper.make_node("Concat", ["side1", "side1"], ["shape"], name="shape", axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["block"], name="block"),
        outputs=[_float_out("block", ("rows", "cols"))])(folder)


def _big_weights(folder: Path) -> Path:
    model = base_model()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(20 * 2**20, np.float32), "ballast"))
    return _write(folder, model)


def _cycle(model: onnx.ModelProto) -> None:
    # flatten reads the output of add, which depends on flatten
    model.graph.node[0].input[0] = "logits"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "weights.bin")


def _symlinked_file(folder: Path) -> None:
    (folder / "weights.bin").symlink_to(folder.parent / "secret.bin")


def _symlinked_folder(folder: Path) -> None:
    (folder / "data").symlink_to(folder.parent, target_is_directory=True)


def _hard_link(folder: Path) -> None:
    os.link(folder.parent / "secret.bin", folder / "weights.bin")


def _subfolder(folder: Path) -> None:
    (folder / "weights.bin").mkdir()


def _nested(folder: Path) -> None:
    (folder / "a").mkdir()


def _subgraph_reads_undefined(model: onnx.ModelProto) -> None:
    then = helper.make_graph([helper.make_node("Identity", ["ghost"], ["t"], name="then_id")], "then", [],
                             [_float_out("t")])
    other = helper.make_graph([helper.make_node("Identity", ["logits"], ["e"], name="else_id")], "else", [],
                              [_float_out("e")])
    model.graph.node.extend([_scalar_const("flag", True, TensorProto.BOOL),
                             helper.make_node("If", ["flag"], ["chosen"], name="branch", then_branch=then,
                                              else_branch=other)])
    model.graph.output.append(_float_out("chosen"))


def _function_reads_undefined(model: onnx.ModelProto) -> None:
    function = helper.make_function("local", "Shift", ["x"], ["y"],
                                    [helper.make_node("Add", ["x", "nowhere"], ["y"])],
                                    [helper.make_opsetid("", OPSET)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("Shift", ["logits"], ["shifted"], domain="local", name="shift"))
    model.graph.output.append(_float_out("shifted"))


def _duplicate_output(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Relu", ["mm"], ["flat"], name="again"))


def _initializer_shadowed(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Relu", ["mm"], ["W"], name="shadow"))


def _raw_size(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]


def _typed_count(model: onnx.ModelProto) -> None:
    bias = model.graph.initializer[1]
    bias.ClearField("raw_data")
    bias.float_data.extend([0.1] * 9)


def _negative_dim(model: onnx.ModelProto) -> None:
    model.graph.initializer[1].dims[0] = -10


def _huge_dims(model: onnx.ModelProto) -> None:
    model.graph.initializer[1].ClearField("dims")
    model.graph.initializer[1].dims.extend([2**20, 2**20, 10])


def _unknown_domain(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("evil.example", 1))
    model.graph.node[2].domain = "evil.example"


def _inert_unknown_domain(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("evil.example", 1))  # imported, used by no node


def _odd_names(model: onnx.ModelProto) -> None:
    """Valid UTF-8 that trips naive printing: newlines, escape sequences, right-to-left marks."""
    rename = {"flat": "flat\n\x1b[31mred", "mm": "mm\u202e\u00e9\U0001F600"}
    for node in model.graph.node:
        node.name = node.name + " \u2028 \x1b[2J"
        for items in (node.input, node.output):
            for i, value in enumerate(items):
                items[i] = rename.get(value, value)
    model.doc_string = "\x00\x07 binary-ish doc \uffff"
    model.metadata_props.add(key="\u0000key", value="v\r\n")


def _initializers_as_inputs(model: onnx.ModelProto) -> None:
    """IR 3 style: every initializer also listed as a graph input."""
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))


def _ort_unknown_op(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.node[2].op_type = "NoSuchKernelAnywhere"
    model.graph.node[2].domain = "com.microsoft"


def _bad_reshape(model: onnx.ModelProto) -> None:
    model.graph.node.insert(0, _const("wrong", [3, -1]))
    model.graph.node[1].CopyFrom(helper.make_node("Reshape", ["input", "wrong"], ["flat"], name="flatten"))


def _huge_input(model: onnx.ModelProto) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, (2**16, 2**16, 2**16, 8)):
        dim.Clear()
        dim.dim_value = size


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_ifs(folder: Path, depth: int = 200) -> Path:
    """If inside If, 200 deep, written field by field (protobuf refuses to build it)."""
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]).SerializeToString()
    leaf = _field(1, helper.make_node("Identity", ["mm"], ["logits"]).SerializeToString()) + _field(12, output)

    def branch(name: bytes, graph: bytes) -> bytes:  # NodeProto.attribute: name, g, type = GRAPH
        return _field(5, _field(1, name) + _field(6, graph) + _varint(20 << 3) + _varint(onnx.AttributeProto.GRAPH))

    graph = leaf
    for _ in range(depth):
        node = (_field(1, b"flag") + _field(2, b"logits") + _field(4, b"If") + branch(b"then_branch", graph)
                + branch(b"else_branch", leaf))
        graph = _field(1, node) + _field(12, output)
    model = base_model()
    model.graph.ClearField("node")
    model.graph.ClearField("output")
    data = model.SerializeToString() + _field(7, graph)  # a repeated message field merges into graph
    return _write(folder, data)


def _no_opset(model: onnx.ModelProto) -> None:
    del model.opset_import[:]


# ---------------------------------------------------------------------------------- the cases

REFUSED = 2
TIME_LIMIT = ("--time-limit", "15")


def _refused(pattern: str) -> tuple[Outcome, Outcome]:
    return Outcome(REFUSED, pattern), Outcome(REFUSED, pattern)


def _case(name: str, build, outcome: tuple[Outcome, Outcome], doc: str = "", options: tuple = ()) -> Case:
    return Case(name, build, outcome[0], outcome[1], options or TIME_LIMIT, doc)


CASES: list[Case] = [
    # malformed files
    _case("empty_file", lambda f: _write(f, b""), _refused(r"the file is empty")),
    _case("random_bytes", lambda f: _write(f, np.random.default_rng(7).bytes(4096)),
          _refused(r"not (a valid )?an? ONNX model|not an ONNX model")),
    _case("truncated", _raw(lambda data: data[: len(data) // 2]), _refused(r"not an ONNX model")),
    _case("a_tensor_not_a_model", lambda f: _write(f, onnx.numpy_helper.from_array(_weight()).SerializeToString()),
          _refused(r"not (a valid )?an? ONNX model|not an ONNX model")),
    _case("no_graph", lambda f: _write(f, helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString()),
          _refused(r"no graph")),
    _case("no_opset_import", _proto(_no_opset), _refused(r"imports no opset")),
    # versions and domains
    _case("ir_version_0", _proto(lambda m: setattr(m, "ir_version", 0)), _refused(r"ir_version is 0")),
    _case("ir_version_99", _proto(lambda m: setattr(m, "ir_version", 99)), _refused(r"IR version 99 is not supported")),
    _case("opset_999", _proto(lambda m: setattr(m.opset_import[0], "version", 999)),
          _refused(r"opset 999 of domain 'ai.onnx' is not supported")),
    _case("opset_0", _proto(lambda m: setattr(m.opset_import[0], "version", 0)), _refused(r"opset 0 of domain")),
    _case("unknown_domain", _proto(_unknown_domain), _refused(r"unknown operator domain 'evil.example'")),
    # tensors against their declared shapes
    _case("raw_data_short", _proto(_raw_size), _refused(r"initializer 'W' holds 2556 bytes but its shape \[64, 10\] needs 2560")),
    _case("typed_data_count", _proto(_typed_count), _refused(r"initializer 'b' holds 9 values but its shape \[10\] needs 10")),
    _case("negative_dim", _proto(_negative_dim), _refused(r"initializer 'b' has a negative dimension")),
    _case("dims_overflow", _proto(_huge_dims), _refused(r"initializer 'b' declares more than \d+ elements")),
    # names
    _case("duplicate_output", _proto(_duplicate_output), _refused(r"defines 'flat' twice")),
    _case("initializer_redefined", _proto(_initializer_shadowed), _refused(r"defines 'W' twice")),
    _case("undefined_input", _proto(lambda m: m.graph.node[1].input.__setitem__(1, "W_missing")),
          _refused(r"node 'matmul' reads 'W_missing', which nothing defines")),
    _case("undefined_graph_output", _proto(lambda m: setattr(m.graph.output[0], "name", "nowhere")),
          _refused(r"output 'nowhere' is not defined by any node")),
    _case("non_utf8_node_name", _raw(_replace_name(b"\x06matmul", b"\x06mat\xffal")),
          _refused(r"field 'name' is not valid UTF-8")),
    _case("non_utf8_tensor_name", _raw(_replace_name(b"\x04flat", b"\x04fl\xc3\x28")),
          _refused(r"field '(input|output)' is not valid UTF-8")),
    _case("non_utf8_producer", _raw(_replace_name(b"\x06corpus", b"\x06corp\xe2\x82")),
          _refused(r"field 'producer_name' is not valid UTF-8")),
    # structure
    _case("cycle", _proto(_cycle), _refused(r"has a cycle through node")),
    _case("nesting_too_deep", _nested_ifs, _refused(r"protobuf decoding failed")),
    _case("subgraph_reads_undefined", _proto(_subgraph_reads_undefined),
          _refused(r"subgraph of node 'branch' node 'then_id' reads 'ghost'")),
    _case("function_reads_undefined", _proto(_function_reads_undefined),
          _refused(r"function 'Shift' node 'Add' reads 'nowhere'")),
    # external data
    _case("external_parent_escape", _external("../secret.bin"), _refused(r"'../secret.bin' leaves the model's folder")),
    _case("external_nested_escape", _external("a/../../secret.bin", prepare=_nested), _refused(r"leaves the model's folder")),
    _case("external_absolute", _external("/etc/passwd", length=None), _refused(r"'/etc/passwd' is absolute")),
    _case("external_dev_zero", _external("/dev/zero"), _refused(r"is absolute")),
    _case("external_symlinked_file", _external("weights.bin", prepare=_symlinked_file), _refused(r"symbolic link")),
    _case("external_symlinked_folder", _external("data/secret.bin", prepare=_symlinked_folder), _refused(r"symbolic link")),
    _case("external_hard_link", _external("weights.bin", prepare=_hard_link), _refused(r"2 hard links")),
    _case("external_fifo", _external("weights.bin", prepare=_fifo), _refused(r"is not a regular file"),
          doc="a FIFO would block a reader forever"),
    _case("external_folder", _external("weights.bin", prepare=_subfolder), _refused(r"is not a regular file")),
    _case("external_missing", _external("weights.bin"), _refused(r"'weights.bin' does not exist")),
    _case("external_nul", _external("weights.bin\x00../../secret.bin", prepare=_weights_file), _refused(r"NUL byte")),
    _case("external_unknown_key", _external("weights.bin", prepare=_weights_file, extra={"exec": "rm -rf"}),
          _refused(r"unknown external-data key\(s\) \['exec'\]")),
    _case("external_offset_past_end", _external("weights.bin", prepare=_weights_file, offset=2**20),
          _refused(r"lies outside 'weights.bin' \(2560 bytes\)")),
    _case("external_negative_offset", _external("weights.bin", prepare=_weights_file, offset=-8),
          _refused(r"lies outside")),
    _case("external_wrong_length", _external("weights.bin", prepare=_weights_file, length=1024),
          _refused(r"holds 1024 bytes but the tensor's shape \[64, 10\] needs 2560")),
    _case("external_bad_checksum", _external("weights.bin", prepare=_weights_file, extra={"checksum": "0" * 40}),
          _refused(r"does not match its SHA-1 checksum")),
    _case("external_malformed_checksum", _external("weights.bin", prepare=_weights_file, extra={"checksum": "md5:xyz"}),
          _refused(r"is not a SHA-1 hex digest")),
    _case("external_good_checksum", _external("weights.bin", prepare=_weights_file,
                                              extra={"checksum": _sha1(_weight().tobytes())}), (OK, OK),
          doc="a matching checksum is verified and accepted"),
    # static budget
    _case("constant_of_shape_huge", _add_node(_const("shape", [2**20, 2**20]),
                                              helper.make_node("ConstantOfShape", ["shape"], ["block"], name="bomb"),
                                              outputs=[_float_out("block")]),
          _refused(r"ConstantOfShape node 'bomb' would produce 1.1e\+12 elements")),
    _case("expand_huge", _add_node(_const("shape", [2**16, 2**16, 64]),
                                   helper.make_node("Expand", ["logits", "shape"], ["wide"], name="widen"),
                                   outputs=[_float_out("wide")]),
          _refused(r"Expand node 'widen' would produce")),
    _case("tile_huge", _add_node(_const("reps", [2**20, 2**20]),
                                 helper.make_node("Tile", ["logits", "reps"], ["tiles"], name="tiles"),
                                 outputs=[_float_out("tiles")]),
          _refused(r"Tile node 'tiles' would produce")),
    _case("loop_int64_max", _add_node(_scalar_const("trip", 2**63 - 1), _scalar_const("cond", True, TensorProto.BOOL),
                                      _loop("trip"), outputs=[_float_out("spun")]),
          _refused(r"Loop node 'spin' has a constant trip count of 9223372036854775807")),
    _case("input_huge", _proto(_huge_input), _refused(r"input 'input' declares .* over \d+ elements")),
    _case("weights_over_memory_limit", _big_weights,
          (OK, Outcome(REFUSED, r"the input model: ONNX Runtime session: the model's tensors hold 0.08 GiB, "
                                r"more than the memory limit of 0.07 GiB")),
          options=("--memory-limit-gb", "0.07"), doc="inspect needs no memory for weights; running does"),
    # what only running shows: the limits stop it
    _case("loop_from_data", _spin_forever, (OK, Outcome(REFUSED, r"the input model: ONNX Runtime session did not finish within 15 s")),
          doc="trip count computed from the input's values"),
    _case("allocation_from_data", _allocate_from_data,
          (OK, Outcome(REFUSED, r"the input model: ONNX Runtime (session ran out of memory|session crashed|cannot load or run)")),
          options=("--time-limit", "60", "--memory-limit-gb", "2"),
          doc="ConstantOfShape of a shape computed from the input's values"),
    # ONNX Runtime refuses or fails: one line, no output
    _case("ort_unknown_kernel", _proto(_ort_unknown_op),
          (OK, Outcome(REFUSED, r"the input model: ONNX Runtime cannot load or run the model"))),
    _case("runtime_reshape_error", _proto(_bad_reshape),
          (OK, Outcome(REFUSED, r"the input model: ONNX Runtime cannot load or run the model"))),
    # odd but valid: must work
    _case("odd_but_valid_names", _proto(_odd_names), (OK, OK)),
    _case("inert_unknown_domain", _proto(_inert_unknown_domain), (OK, OK)),
    _case("initializers_as_inputs", _proto(_initializers_as_inputs), (OK, OK)),
    _case("external_data_plain", _external("weights.bin", prepare=_weights_file), (OK, OK)),
]


def build(case: Case, root: Path) -> Path:
    """Write ``case`` under ``root``: ``root/secret.bin`` and the model in ``root/model/``."""
    (root / "secret.bin").write_bytes(SECRET)
    folder = root / "model"
    folder.mkdir()
    return case.build(folder)
