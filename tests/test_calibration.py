import numpy as np
import pytest

from onnxpress import calibration
from onnxpress.errors import DataError


def test_npz_file_is_cut_into_batches(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.arange(10 * 4, dtype=np.float32).reshape(10, 4), label=np.arange(10))
    source = calibration.from_npz(tmp_path / "c.npz", batch_size=4, keys=["x"])
    feeds = list(source)
    assert len(source) == 3 and [f["x"].shape[0] for f in feeds] == [4, 4, 2]
    assert set(feeds[0]) == {"x"}
    assert list(source)[2]["x"][0, 0] == 32  # re-iterable, same order
    assert len(calibration.from_npz(tmp_path / "c.npz", limit=3)) == 3


def test_folder_of_npz_files_allows_different_shapes(tmp_path):
    for i, length in enumerate((3, 7, 5)):
        np.savez(tmp_path / f"s{i}.npz", ids=np.ones((1, length), np.int64))
    feeds = list(calibration.from_npz(tmp_path))
    assert [f["ids"].shape for f in feeds] == [(1, 3), (1, 7), (1, 5)]


def test_split_and_take(rng):
    feeds = [{"x": rng.standard_normal((1, 2)).astype(np.float32)} for _ in range(10)]
    source = calibration.from_feeds(feeds)
    calib, held_out = source.split(0.7)
    assert (len(calib), len(held_out)) == (7, 3)
    assert np.array_equal(list(held_out)[0]["x"], feeds[7]["x"])
    assert len(source.take(4)) == 4


def test_one_shot_iterators_are_kept(rng):
    source = calibration.from_feeds({"x": np.zeros(2)} for _ in range(3))
    assert len(list(source)) == 3 and len(list(source)) == 3


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "none.npz", "no such file"),
    (lambda p: (p / "junk.npz").write_bytes(b"junk") and p / "junk.npz", "not a readable .npz"),
    (lambda p: p, "no .npz files"),
])
def test_bad_sources_are_named(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        list(calibration.from_npz(make(tmp_path)))


def test_mismatched_sample_axes(tmp_path):
    np.savez(tmp_path / "c.npz", a=np.zeros((3, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DataError, match="share a leading sample axis"):
        calibration.from_npz(tmp_path / "c.npz")
    with pytest.raises(DataError, match=r"no array\(s\) \['x'\]"):
        calibration.from_npz(tmp_path / "c.npz", keys=["x"])


def test_non_mapping_samples():
    with pytest.raises(DataError, match="sample 1 is a list"):
        list(calibration.from_feeds([{"x": np.zeros(1)}, [1, 2]]))
