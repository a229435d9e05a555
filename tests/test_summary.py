import json

import onnxpress as ox
from onnxpress import samples


def test_inspect_counts_what_is_in_the_model(small_model):
    summary = ox.inspect(small_model)
    assert summary.opsets == {"": 18}
    assert [(i.name, i.dtype, i.shape) for i in summary.inputs] == [("x", "float", ["N", 4])]
    assert [(o.name, o.shape) for o in summary.outputs] == [("y", ["N", 3])]
    assert summary.nodes == 6
    assert summary.ops == {"Add": 2, "Identity": 1, "MatMul": 1, "Relu": 1, "Sigmoid": 1}
    assert summary.parameters == 12 + 3 + 3
    assert summary.bytes_by_dtype == {"float": 18 * 4}
    assert [t.name for t in summary.largest] == ["w", "b", "one"]
    text = summary.to_text()
    assert "MatMul" in text and "x: float[N, 4]" in text and "parameters: 18" in text
    assert json.loads(summary.to_json())["nodes"] == 6


def test_inspect_the_sample():
    summary = ox.inspect(samples.DIGITS_MODEL)
    assert summary.inputs[0].shape == ["batch", 1, 8, 8]
    assert summary.ops["Conv"] == 3 and summary.ops["Gemm"] == 2
    assert 30_000 < summary.parameters < 60_000
