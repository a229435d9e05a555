"""Generated inputs fit the model: -1 and 0 dims are unknown, unknown sizes are found by trial
runs (multiples of 64, reflect padding, strided convolutions), given shapes are honoured and
checked, ids stay inside the table they index, and when nothing works the error asks for data."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as helper
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import feeds
from onnxpress.errors import DataError

# An FPN-like join: a branch pooled by 64 and upsampled back is concatenated with the input, so
# both sides must be multiples of 64 (224 is not, 320 is).
FPN = """
<ir_version: 8, opset_import: ["" : 13]>
fpn (float[N, 3, H, W] x) => (float[N, 6, H, W] y) <float[4] scales = {1.0, 1.0, 64.0, 64.0}> {
    p = AveragePool <kernel_shape = [64, 64], strides = [64, 64]> (x)
    u = Resize <mode = "nearest"> (p, , scales)
    y = Concat <axis = 1> (x, u)
}
"""

# Reflect padding by 8 needs more than 8 samples (a VAD's front end); the old default length was 8.
REFLECT = """
<ir_version: 8, opset_import: ["" : 13]>
vad (float[N, T] audio) => (float[N, L] y) <int64[4] pads = {0, 8, 0, 8}> {
    y = Pad <mode = "reflect"> (audio, pads)
}
"""

# Two stride-2 convolutions without padding and a 5x5 kernel: 1x1 and 8x8 images are too small.
STRIDED = """
<ir_version: 8, opset_import: ["" : 13]>
cnn (float[N, 3, H, W] x) => (float[N, 4] y) <float[4, 3, 5, 5] w1 = {{{w1}}}, float[4, 4, 5, 5] w2 = {{{w2}}}> {{
    a = Conv <kernel_shape = [5, 5], strides = [2, 2]> (x, w1)
    b = Conv <kernel_shape = [5, 5], strides = [2, 2]> (a, w2)
    p = GlobalAveragePool (b)
    y = Flatten (p)
}}
"""

# Token ids index a 50-row embedding through a Cast; the mask shares their length and stays 0/1.
EMBEDDING = """
<ir_version: 8, opset_import: ["" : 13]>
embed ({dtype}[B, S] ids, int64[B, S] mask) => (float[B, S, 4] y)
<float[{rows}, 4] table = {{{table}}}, int64[1] axes = {{2}}> {{
    i = Cast <to = 7> (ids)
    e = Gather (table, i)
    m = Cast <to = 1> (mask)
    n = Unsqueeze (m, axes)
    y = Mul (e, n)
}}
"""

# Only a length of exactly 7 fits the Reshape: no candidate works.
ONLY_SEVEN = """
<ir_version: 8, opset_import: ["" : 13]>
seven (float[N, T] x) => (float[1, 7] y) <int64[2] shape = {1, 7}> {
    y = Reshape (x, shape)
}
"""


def _values(count: int) -> str:
    """``count`` random floats written for an initializer in ONNX text."""
    return ", ".join(f"{v:.4f}" for v in np.random.default_rng(count).standard_normal(count))


def _strided() -> ir.Model:
    return ir.from_onnx_text(STRIDED.format(w1=_values(4 * 3 * 25), w2=_values(4 * 4 * 25)))


def _embedding(dtype: str = "int64", rows: int = 50) -> ir.Model:
    return ir.from_onnx_text(EMBEDDING.format(dtype=dtype, rows=rows, table=_values(rows * 4)))


def _relu_file(tmp_path, shape) -> ir.Model:
    """A Relu model saved with ``shape`` as written (-1, 0 or None), then loaded as a user would."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return ox.load(path)


def _self_check(model: ir.Model, **options) -> ox.ValidationReport:
    report = ox.validate(model, reference=model, measure_latency=False, measure_memory=False, **options)
    assert report.passed, report.failures
    return report


@pytest.mark.parametrize("dims", [[-1, 3, 0, 8], [0, 3, -1, 8]], ids=["paddle-minus-one", "zero"])
def test_dims_of_minus_one_and_zero_are_unknown(tmp_path, dims):
    model = _relu_file(tmp_path, dims)
    assert [feeds._dim(d) for d in model.graph.inputs[0].shape] == [None, 3, None, 8]
    assert [feeds._dim(d) for d in model.graph.outputs[0].shape] == [None, 3, None, 8]
    (feed,) = feeds.random_feeds(model, 1)
    assert feed["x"].shape[:2] == (1, 3) and feed["x"].shape[2] > 0 and feed["x"].shape[3] == 8
    feeds.check_feed(model, {"x": np.ones((2, 3, 5, 8), np.float32)})  # no "the model wants -1"
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    _self_check(model)


def test_an_input_without_a_shape_asks_for_its_shape(tmp_path):
    model = _relu_file(tmp_path, None)
    with pytest.raises(DataError, match=r"input 'x' has no declared shape: give data, or .*--input-shape") as err:
        feeds.random_feeds(model, 1)
    assert "\n" not in str(err.value)
    (feed,) = feeds.random_feeds(model, 1, input_shapes={"x": [2, 5]})
    assert feed["x"].shape == (2, 5)
    report = _self_check(model, input_shapes={"x": (2, 5)})
    assert "inputs generated with the given shapes: x=2x5" in report.notes


def test_image_sides_that_must_be_multiples_of_64_are_found():
    model = ir.from_onnx_text(FPN)
    plan = feeds.plan_inputs(model)
    assert plan.shapes == {"x": (1, 3, 320, 320)}
    assert plan.notes[0].startswith("inputs generated with image size 320x320 (the first size the model accepted")
    assert "224x224 failed" in plan.notes[0]
    report = _self_check(model)
    assert plan.notes[0] in report.notes


def test_a_strided_cnn_gets_an_image_it_can_take():
    model = _strided()
    (feed,) = feeds.random_feeds(model, 1)
    assert feed["x"].shape == (1, 3, 224, 224)
    _self_check(model)


def test_reflect_padding_gets_more_samples_than_it_pads():
    model = ir.from_onnx_text(REFLECT)
    plan = feeds.plan_inputs(model)
    assert plan.shapes["audio"][0] == 1 and plan.shapes["audio"][1] > 8
    assert plan.notes[0].startswith(f"inputs generated with sequence length {plan.shapes['audio'][1]}")
    _self_check(model)


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_ids_stay_inside_the_table_they_index(dtype):
    model = _embedding(dtype)
    generated = feeds.random_feeds(model, 8, seed=3)
    ids = np.concatenate([f["ids"].ravel() for f in generated])
    assert generated[0]["ids"].dtype == np.dtype(dtype)
    assert ids.min() >= 0 and ids.max() < 50 and ids.max() > 1  # the whole table, not only 0/1
    masks = np.concatenate([f["mask"].ravel() for f in generated])
    assert set(np.unique(masks)) <= {0, 1}  # no table behind it: 0 or 1
    assert generated[0]["ids"].shape == generated[0]["mask"].shape  # one length for the shared 'S'
    plan = feeds.plan_inputs(model)
    assert "input 'ids': ids drawn in [0, 50), the rows of the table 'table' it indexes" in plan.notes
    _self_check(model)


def test_a_given_shape_fixes_the_dims_sharing_its_names():
    model = _embedding()
    plan = feeds.plan_inputs(model, input_shapes={"ids": [2, 40]})
    assert plan.shapes == {"ids": (2, 40), "mask": (2, 40)}
    _self_check(model, input_shapes={"ids": [2, 40]})


@pytest.mark.parametrize("shapes, message", [
    ({"nope": [1, 3, 8, 8]}, "input shape given for 'nope', which the model does not take (inputs: x)"),
    ({"x": [1, 3, 8]}, "input shape x=1x3x8 has rank 3, the model's input has rank 4"),
    ({"x": [1, 4, 8, 8]}, "input shape x=1x4x8x8 has 4 on axis 1, the model wants 3"),
])
def test_given_shapes_that_do_not_fit_are_named(shapes, message):
    with pytest.raises(DataError) as err:
        feeds.plan_inputs(ir.from_onnx_text(FPN), input_shapes=shapes)
    assert message in str(err.value)


@pytest.mark.parametrize("shapes", [{"x": [1, 0]}, {"x": "1x3"}, {"x": [1, True]}])
def test_malformed_input_shapes_are_refused(shapes):
    with pytest.raises(ValueError, match="input_shapes: the shape of 'x' must be a list of positive integers"):
        feeds.check_input_shapes(shapes)


def test_when_no_size_works_the_error_asks_for_data():
    with pytest.raises(DataError) as err:
        feeds.random_feeds(ir.from_onnx_text(ONLY_SEVEN), 1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the model ran with none of the input sizes tried (sequence length 16, ")
    assert "Reshape" in message and "--input-shape NAME=" in message
    (feed,) = feeds.random_feeds(ir.from_onnx_text(ONLY_SEVEN), 1, input_shapes={"x": [1, 7]})
    assert feed["x"].shape == (1, 7)


def test_fixed_shapes_need_no_trial(monkeypatch):
    monkeypatch.setattr(feeds, "_trial", lambda *a: pytest.fail("no trial run for fixed shapes"))
    model = ir.from_onnx_text(REFLECT.replace("[N, T]", "[N, 20]"))
    assert feeds.plan_inputs(model).shapes == {"audio": (1, 20)}


def test_a_half_known_image_tries_a_square_first():
    model = ir.from_onnx_text(FPN.replace("H, W", "128, W"))
    plan = feeds.plan_inputs(model)
    assert plan.shapes == {"x": (1, 3, 128, 128)}
    assert plan.notes[0].startswith("inputs generated with image size 128x128 (")


def test_a_table_of_no_rows_is_named():
    model = _embedding(rows=0)
    with pytest.raises(DataError, match="input 'ids' indexes 'table', a table of no rows"):
        feeds.plan_inputs(model)


@pytest.mark.parametrize("text, expected", [
    ("images=1x3x320x320", ("images", (1, 3, 320, 320))),
    ("input:0=1,16", ("input:0", (1, 16))),
    ("a=b=4", ("a=b", (4,))),
])
def test_input_shapes_parse(text, expected):
    assert feeds.parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["1x3x320x320", "=1x3", "x=", "x=1x-3", "x=1x0", "x=1xax3", "x=1.5"])
def test_malformed_input_shape_text_is_refused(text):
    with pytest.raises(ValueError) as err:
        feeds.parse_input_shape(text)
    assert text in str(err.value) or "NAME=DIMS" in str(err.value)


def test_an_input_without_a_shape_is_given_the_rank_of_its_data(tmp_path):
    model = _relu_file(tmp_path, None)
    assert feeds.unshaped_inputs(model) == ["x"]
    with pytest.raises(DataError, match=r"input 'x' declares no shape and the data gives it ranks \[2, 3\]"):
        feeds.declare_ranks(model.clone(), [{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 2, 3), np.float32)}])
    assert feeds.declare_ranks(model, [], input_shapes={"x": [1, 3, 8, 8]}) == {"x": 4}
    assert [feeds._dim(d) for d in model.graph.inputs[0].shape] == [None] * 4
    assert feeds.unshaped_inputs(model) == [] and feeds.declare_ranks(model, []) == {}
