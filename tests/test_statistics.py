import numpy as np
import onnx_ir as ir
import pytest

from onnxpress import statistics
from onnxpress.errors import DataError
from onnxpress.statistics import TensorStats

SEQ_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
seq (float[1, S, 4] x) => (float[1, S, 3] y)
<float[4, 3] w = {0.5, -1.0, 0.25, 1.5, 0.75, -0.5, -0.25, 1.0, 2.0, 0.1, -0.3, 0.6}>
{
    h = MatMul(x, w)
    y = Relu(h)
}
"""


def test_streaming_ranges_match_numpy_on_growing_data(rng):
    stats = TensorStats("t", bins=2048)
    chunks = [rng.standard_normal(5000).astype(np.float32) * scale for scale in (0.1, 1.0, 3.0, 10.0)]
    for chunk in chunks:  # the histogram's range doubles several times on the way
        stats.update(chunk)
    data = np.concatenate(chunks)
    assert stats.range("minmax") == (data.min(), data.max())
    low, high = stats.range("percentile", 99.0)
    width = stats.hist_range / stats.bins
    assert abs(high - np.percentile(data, 99.5)) <= 2 * width
    assert abs(low - np.percentile(data, 0.5)) <= 2 * width
    assert stats.count == data.size and stats.mean == pytest.approx(data.mean(), abs=1e-5)
    assert stats.hist_pos.sum() + stats.hist_neg.sum() == data.size


def test_entropy_clips_heavy_tails_but_not_uniform_data(rng):
    heavy = TensorStats("heavy")
    heavy.update(np.concatenate([rng.standard_normal(100_000), [60.0, -55.0]]).astype(np.float32))
    low, high = heavy.range("entropy")
    assert 2.0 < high < 30.0 and -30.0 < low < -2.0
    uniform = TensorStats("uniform")
    uniform.update(rng.uniform(0, 1, 100_000).astype(np.float32))
    assert uniform.range("entropy")[1] > 0.9


def test_channel_statistics_are_exact(rng):
    stats = TensorStats("c", channel_axis=1, full_second_moment=True)
    batches = [rng.standard_normal((2, 3, 5)).astype(np.float32) for _ in range(4)]
    for batch in batches:
        stats.update(batch)
    stats.flush()
    rows = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, 3) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(stats.channel_absmax, np.abs(rows).max(0))
    np.testing.assert_allclose(stats.channel_mean(), rows.mean(0))
    np.testing.assert_allclose(stats.channel_mean_square(), (rows ** 2).mean(0))
    np.testing.assert_allclose(stats.second_moment, rows.T @ rows, rtol=1e-5, atol=1e-4)  # float32 products


def test_collect_streams_samples_of_different_lengths(rng):
    model = ir.from_onnx_text(SEQ_TEXT)
    feeds = [{"x": rng.standard_normal((1, length, 4)).astype(np.float32)} for length in (3, 9, 5, 1)]
    done = []
    result = statistics.collect(model, feeds, channel_axes={"x": -1}, progress=lambda d, t: done.append((d, t)))
    assert result.samples == 4 and done[-1] == (4, 4)
    assert set(result.tensors) == {"x", "h", "y"}
    everything = np.concatenate([f["x"].reshape(-1, 4) for f in feeds])
    assert result["x"].count == everything.size
    np.testing.assert_allclose(result["x"].channel_absmax, np.abs(everything).max(0), rtol=1e-6)
    assert result["y"].min == 0.0
    assert result.producers["h"][0] == "MatMul"
    assert statistics.collect(model, feeds, limit=2).samples == 2


def test_memory_does_not_grow_with_samples(rng):
    model = ir.from_onnx_text(SEQ_TEXT)
    few = statistics.collect(model, [{"x": rng.standard_normal((1, 7, 4)).astype(np.float32)} for _ in range(5)])
    many = statistics.collect(model, [{"x": rng.standard_normal((1, 7, 4)).astype(np.float32)} for _ in range(50)])
    for name in few.tensors:
        assert few[name].hist_pos.nbytes == many[name].hist_pos.nbytes  # fixed-size state per tensor


@pytest.mark.parametrize("feeds, message", [
    ([], "gave no samples"),
    ([{"z": np.zeros((1, 2, 4), np.float32)}], r"missing input\(s\) \['x'\]"),
    ([{"x": np.zeros((1, 2, 4), np.float64)}], r"input 'x' wants float32 \[.*\], the data gives float64 \[1,2,4\]"),
    ([{"x": np.zeros((1, 2, 5), np.float32)}], r"the data gives \[1,2,5\]"),
])
def test_bad_calibration_data_is_named(feeds, message):
    with pytest.raises(DataError, match=message):
        statistics.collect(ir.from_onnx_text(SEQ_TEXT), feeds)
