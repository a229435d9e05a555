from pathlib import Path

import numpy as np
import pytest

from onnxpress import calibration
from onnxpress.errors import DataError, RecipeError


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


def test_a_fifo_among_the_data_files_is_refused_not_waited_on(tmp_path):
    import os

    np.savez(tmp_path / "a.npz", ids=np.ones((1, 3), np.int64))
    os.mkfifo(tmp_path / "b.npz")
    with pytest.raises(DataError, match="b.npz: not a regular file"):
        list(calibration.from_npz(tmp_path))


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


def test_images_are_preprocessed_by_the_spec(tmp_path):
    from PIL import Image

    from onnxpress.calibration import ImageSpec, from_images

    for i, size in enumerate(((40, 30), (64, 48), (30, 30))):
        array = np.full((size[1], size[0], 3), (i * 50, 100, 200), np.uint8)
        Image.fromarray(array).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    spec = ImageSpec(size=24, crop=(20, 20), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    feeds = list(from_images(tmp_path, "pixels", spec))
    assert len(feeds) == 3 and all(f["pixels"].shape == (1, 3, 20, 20) for f in feeds)
    assert feeds[1]["pixels"].dtype == np.float32
    np.testing.assert_allclose(feeds[1]["pixels"][0, :, 5, 5], [(50 / 255 - 0.5) / 0.25, (100 / 255 - 0.5) / 0.25,
                                                                 (200 / 255 - 0.5) / 0.25], rtol=1e-5)
    nhwc = list(from_images(tmp_path, "pixels", ImageSpec(size=(8, 10), layout="NHWC", dtype="uint8", color="BGR")))
    assert nhwc[0]["pixels"].shape == (1, 8, 10, 3) and nhwc[0]["pixels"][0, 0, 0].tolist() == [200, 100, 0]
    grey = list(from_images(tmp_path, "pixels", ImageSpec(color="L"), limit=1))
    assert len(grey) == 1 and grey[0]["pixels"].shape[1] == 1


def test_image_source_errors(tmp_path):
    from onnxpress.calibration import ImageSpec, from_images

    with pytest.raises(DataError, match="no image files"):
        from_images(tmp_path, "x")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        list(from_images(tmp_path, "x"))
    with pytest.raises(ValueError, match="layout must be NCHW or NHWC"):
        ImageSpec(layout="CHW")


def test_dataloader_batches_become_feeds():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(10, 1, 8, 8), torch.arange(10))
    feeds = list(calibration.from_dataloader(DataLoader(data, batch_size=4), ["input"]))
    assert [f["input"].shape for f in feeds] == [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]  # labels ignored
    assert isinstance(feeds[0]["input"], np.ndarray)
    dicts = [{"ids": torch.ones(1, 5, dtype=torch.int64), "mask": torch.ones(1, 5, dtype=torch.int64)}]
    assert list(calibration.from_dataloader(dicts, ["ids"]))[0].keys() == {"ids"}
    with pytest.raises(DataError, match="has no \\['other'\\]"):
        list(calibration.from_dataloader(dicts, ["other"]))
    assert len(calibration.from_dataloader(DataLoader(data, batch_size=4), ["input"], limit=2)) == 2


def test_recipe_calibration_from_images(tmp_path):
    from PIL import Image

    from onnxpress.recipe import load_recipe

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12), i * 60, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "r.toml").write_text('[calibration]\nsource = "imgs"\ntype = "images"\ninput = "input"\n'
                                     'size = [8, 8]\ncolor = "L"\nscale = 0.0625\n[[passes]]\nname = "simplify"\n')
    recipe = load_recipe(tmp_path / "r.toml")
    feeds = list(calibration.read_source(recipe.calibration, base=recipe.path.parent))
    assert len(feeds) == 3 and feeds[2]["input"].shape == (1, 1, 8, 8)
    assert feeds[2]["input"].max() == pytest.approx(120 * 0.0625)
    (tmp_path / "bare.toml").write_text('[calibration]\nsource = "imgs"\n[[passes]]\nname = "simplify"\n')
    bare = load_recipe(tmp_path / "bare.toml").calibration  # the input comes from the model when read
    with pytest.raises(DataError, match="say which input the images feed"):
        calibration.read_source(bare, base=tmp_path)


def test_read_source_feeds_only_the_model_inputs(tmp_path, small_model):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 4), np.float32), label=np.arange(5))
    data = calibration.read_source(tmp_path / "d.npz", model=small_model, name="evaluation")
    assert len(data) == 5 and all(set(feed) == {"x"} for feed in data)
    assert data.name == f"evaluation ({tmp_path / 'd.npz'})"
    assert set(next(iter(calibration.read_source(str(tmp_path / "d.npz"))))) == {"x", "label"}
    np.savez(tmp_path / "other.npz", label=np.arange(5))
    with pytest.raises(DataError, match=r"no array\(s\) \['x'\]"):
        calibration.read_source(tmp_path / "other.npz", model=small_model)


def test_read_source_resolves_relative_paths_against_base(tmp_path, small_model):
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "c.npz", x=np.ones((6, 4), np.float32))
    spec = calibration.DataSource(Path("data/c.npz"), batch_size=4)
    assert [f["x"].shape[0] for f in calibration.read_source(spec, model=small_model, base=tmp_path)] == [4, 2]
    with pytest.raises(DataError, match="no such file"):
        calibration.read_source(spec, model=small_model, base=tmp_path / "elsewhere")


def test_read_source_takes_a_npy_array_for_the_only_input(tmp_path, small_model, minimal_model):
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    assert [set(f) for f in calibration.read_source(tmp_path / "x.npy", model=small_model)] == [{"x"}] * 3
    with pytest.raises(DataError, match="the model has inputs \\['x', 's'\\]"):
        calibration.read_source(tmp_path / "x.npy", model=minimal_model)
    with pytest.raises(DataError, match="say which input it feeds"):
        calibration.read_source(tmp_path / "x.npy")
    spec = calibration.DataSource.from_path(tmp_path / "x.npy", input="s", limit=2)
    assert [set(f) for f in calibration.read_source(spec)] == [{"s"}] * 2
    with pytest.raises(DataError, match=r"missing input\(s\) \['x'\]; the model takes \['s', 'x'\], the data gives"):
        calibration.read_source(spec, model=minimal_model)  # every input must be fed
    with pytest.raises(DataError, match="feeds input 'nope', which the model does not have"):
        calibration.read_source(calibration.DataSource.from_path(tmp_path / "x.npy", input="nope"),
                                model=small_model)


def test_data_source_values_are_checked():
    assert calibration.DataSource.from_path("c.npz").type == "npz"
    with pytest.raises(ValueError, match="'tokenizer' apply to type 'text' only, not 'images'"):
        calibration.DataSource(Path("imgs"), type="images", tokenizer=Path("tok"))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        calibration.DataSource.from_path("c.npz", limit=0)
    with pytest.raises(RecipeError, match=r"r.toml: \[evaluation\]: images: crop must be \[height, width\]"):
        calibration.DataSource.from_table({"source": "imgs", "type": "images", "input": "x", "crop": [1, 2, 3]},
                                          where="r.toml: [evaluation]")


def test_holdout_keeps_the_tail_away_from_the_passes(rng):
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(10)]
    kept, held_out = calibration.holdout(feeds)
    assert (len(kept), len(held_out)) == (8, 2)
    assert [int(f["x"][0, 0]) for f in held_out] == [8, 9] and [int(f["x"][0, 0]) for f in kept] == list(range(8))
    kept, held_out = calibration.holdout(feeds[:3], fraction=0.1)
    assert (len(kept), len(held_out)) == (2, 1)  # at least `minimum` held out
    kept, held_out = calibration.holdout(calibration.from_feeds(feeds), fraction=0.5, minimum=6)
    assert (len(kept), len(held_out)) == (4, 6)
    with pytest.raises(DataError, match="1 sample\\(s\\) cannot be split"):
        calibration.holdout(feeds[:1])
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\)"):
        calibration.holdout(feeds, fraction=1.0)
