"""Hostile and malformed models are refused at load with one line naming the culprit."""
import onnx
import onnx.helper as oh
import pytest

import onnxpress as ox
from onnxpress.errors import ModelError


def _model(nodes, inputs=("x",), outputs=("y",), initializers=(), opsets=(("", 18),), ir_version=10):
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info(i, onnx.TensorProto.FLOAT, [2]) for i in inputs],
        [oh.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [2]) for o in outputs],
        initializer=list(initializers))
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir_version
    return model


def _tensor(name, dims, raw=None, floats=None) -> onnx.TensorProto:
    """A float TensorProto written field by field (onnx's helpers refuse the broken ones)."""
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=dims)
    if raw is not None:
        tensor.raw_data = raw
    if floats is not None:
        tensor.float_data.extend(floats)
    return tensor


def _write(tmp_path, model) -> str:
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


CASES = {
    "cycle": (_model([oh.make_node("Relu", ["b"], ["a"], name="n1"), oh.make_node("Relu", ["a"], ["b"], name="n2"),
                      oh.make_node("Relu", ["x"], ["y"])]), "has a cycle through node 'n"),
    "undefined input": (_model([oh.make_node("Add", ["x", "ghost"], ["y"], name="adder")]),
                        "node 'adder' reads 'ghost', which nothing defines"),
    "duplicate output": (_model([oh.make_node("Relu", ["x"], ["y"], name="a"), oh.make_node("Relu", ["x"], ["y"], name="b")]),
                         "defines 'y' twice"),
    "opset 999": (_model([oh.make_node("Relu", ["x"], ["y"])], opsets=(("", 999),)), "opset 999 of domain 'ai.onnx'"),
    "unknown domain": (_model([oh.make_node("Evil", ["x"], ["y"], domain="evil.domain")],
                              opsets=(("", 18), ("evil.domain", 1))), "unknown operator domain 'evil.domain'"),
    "ir version": (_model([oh.make_node("Relu", ["x"], ["y"])], ir_version=99), "IR version 99 is not supported"),
    "size mismatch": (_model([oh.make_node("Add", ["x", "w"], ["y"])], initializers=[
        _tensor("w", [1000], raw=b"\0" * 8)]),
        "initializer 'w' holds 8 bytes but its shape [1000] needs 4000"),
    "negative dim": (_model([oh.make_node("Add", ["x", "w"], ["y"])], initializers=[
        _tensor("w", [-2])]), "negative dimension [-2]"),
    "huge dims": (_model([oh.make_node("Add", ["x", "w"], ["y"])], initializers=[
        _tensor("w", [2**20, 2**20])]), "declares more than"),
    "typed count": (_model([oh.make_node("Add", ["x", "w"], ["y"])], initializers=[
        _tensor("w", [3], floats=[1.0, 2.0])]), "holds 2 values but its shape [3] needs 3"),
    "undefined output": (_model([oh.make_node("Relu", ["x"], ["z"])]), "output 'y' is not defined"),
    "subgraph reads nothing": (_model([oh.make_node("If", ["c"], ["y"], name="branch",
                                                    then_branch=oh.make_graph([oh.make_node("Relu", ["nowhere"], ["t"])], "t", [],
                                                                              [oh.make_tensor_value_info("t", 1, [2])]),
                                                    else_branch=oh.make_graph([oh.make_node("Relu", ["x"], ["e"])], "e", [],
                                                                              [oh.make_tensor_value_info("e", 1, [2])]))],
                                      inputs=("x", "c")), "subgraph of node 'branch' node 'Relu' reads 'nowhere'"),
    "huge ConstantOfShape": (_model([oh.make_node("ConstantOfShape", ["s"], ["y"], name="blow_up")], inputs=(),
                                    initializers=[oh.make_tensor("s", onnx.TensorProto.INT64, [3], [4096, 4096, 4096])]),
                             "ConstantOfShape node 'blow_up' would produce 6.87e+10 elements"),
    "huge Expand": (_model([oh.make_node("Expand", ["x", "s"], ["y"], name="wide")],
                           initializers=[oh.make_tensor("s", onnx.TensorProto.INT64, [2], [2**20, 2**20])]),
                    "Expand node 'wide' would produce"),
    "huge Tile": (_model([oh.make_node("Tile", ["x", "r"], ["y"], name="tiles")],
                         initializers=[oh.make_tensor("r", onnx.TensorProto.INT64, [1], [2**40])]),
                  "Tile node 'tiles' would produce"),
    "endless Loop": (_model([oh.make_node("Loop", ["m", ""], [], name="spin", body=oh.make_graph(
        [oh.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [oh.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         oh.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, [])])), oh.make_node("Relu", ["x"], ["y"])],
        initializers=[oh.make_tensor("m", onnx.TensorProto.INT64, [], [2**63 - 1])]),
        "Loop node 'spin' has a constant trip count of 9223372036854775807"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_models_are_refused_with_one_clear_line(tmp_path, case):
    model, message = CASES[case]
    path = _write(tmp_path, model)
    with pytest.raises(ModelError, match="hostile.onnx") as info:
        ox.load(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_subgraphs_see_the_outer_scope(tmp_path):
    then_branch = oh.make_graph([oh.make_node("Relu", ["x"], ["t"])], "t", [], [oh.make_tensor_value_info("t", 1, [2])])
    else_branch = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "e", [], [oh.make_tensor_value_info("e", 1, [2])])
    model = _model([oh.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)], inputs=("x", "c"))
    assert ox.load(_write(tmp_path, model)).graph.node(0).op_type == "If"
