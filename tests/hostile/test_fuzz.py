"""Property-based fuzzing of model loading: mutated bytes and protobuf fields.

Every mutated model must either load (and then inspect cleanly) or be refused with a
``ModelError`` whose message is one line: never another exception, a hang or a crash.
The examples are derandomized so CI is reproducible; set ``derandomize=False`` locally to
explore new cases (that is how the newline-in-a-name case was found).
"""
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxpress as ox
from onnxpress import samples
from onnxpress.errors import ModelError

SOURCE = samples.DIGITS_MODEL.read_bytes()


def _load_or_refuse(tmp_path, data: bytes) -> None:
    path = tmp_path / "fuzzed.onnx"
    path.write_bytes(data)
    try:
        model = ox.load(path)
    except ModelError as err:
        assert "\n" not in str(err) and "fuzzed.onnx" in str(err)
        return
    ox.inspect(model)


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SOURCE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(SOURCE)))
def test_mutated_bytes_load_or_are_refused(tmp_path, flips, cut):
    data = bytearray(SOURCE[:max(cut, 1)])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    _load_or_refuse(tmp_path, bytes(data))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_fields_load_or_are_refused(tmp_path, data):
    proto = onnx.load_from_string(SOURCE)
    graph = proto.graph
    choice = data.draw(st.sampled_from(["dims", "name", "opset", "input", "ir", "raw", "dtype", "output"]))
    if choice == "dims":
        tensor = data.draw(st.sampled_from(list(graph.initializer)))
        tensor.dims[0] = data.draw(st.integers(-5, 2**40))
    elif choice == "name":
        node = data.draw(st.sampled_from(list(graph.node)))
        node.output[0] = data.draw(st.sampled_from([graph.node[0].output[0], "", "input", "x" * 300]))
    elif choice == "opset":
        proto.opset_import[0].version = data.draw(st.integers(-3, 1000))
    elif choice == "input":
        node = data.draw(st.sampled_from(list(graph.node)))
        node.input[0] = data.draw(st.text(min_size=0, max_size=12))
    elif choice == "ir":
        proto.ir_version = data.draw(st.integers(-1, 200))
    elif choice == "raw":
        tensor = data.draw(st.sampled_from([t for t in graph.initializer if t.raw_data]))
        tensor.raw_data = tensor.raw_data[: data.draw(st.integers(0, len(tensor.raw_data)))]
    elif choice == "dtype":
        tensor = data.draw(st.sampled_from(list(graph.initializer)))
        tensor.data_type = data.draw(st.integers(0, 30))
    else:
        graph.output[0].name = data.draw(st.text(min_size=0, max_size=8))
    _load_or_refuse(tmp_path, proto.SerializeToString())
