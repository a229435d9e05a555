import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress import _proto
from onnxpress.errors import ModelError

from conftest import ort_run


def _save_external(model: ir.Model, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    ir.save(model, path, external_data=f"{name}.data", size_threshold_bytes=0)
    return path


def _retarget(path: Path, location: str) -> None:
    """Point every external tensor of the saved model at ``location`` (a hostile edit)."""
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())


def test_load_from_every_source_gives_the_same_model(tmp_path, small_model):
    path = tmp_path / "m.onnx"
    ox.save(small_model, path)
    data = path.read_bytes()
    feed = {"x": np.ones((2, 4), np.float32)}
    expected = ort_run(small_model, feed)[0]
    for source in (path, str(path), data, onnx.load(str(path)), small_model):
        model = ox.load(source)
        assert isinstance(model, ir.Model)
        np.testing.assert_array_equal(ort_run(model, feed)[0], expected)


def test_missing_file_and_folder_are_named(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: no such file"):
        ox.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        ox.load(tmp_path)


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty"),
    (b"this is certainly not a model \xff\xfe", "not an ONNX model"),
    (onnx.ModelProto().SerializeToString() + b"\x08\x07", "no graph"),
])
def test_not_an_onnx_model(tmp_path, content, reason):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=reason) as info:
        ox.load(path)
    assert "bad.onnx" in str(info.value)


def test_external_data_loads_lazily_and_round_trips(tmp_path, small_model):
    path = _save_external(small_model, tmp_path)
    model = ox.load(path)
    weight = model.graph.initializers["w"].const_value
    assert isinstance(weight, ir.ExternalTensor)
    assert Path(weight.base_dir) == tmp_path.resolve()
    feed = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    np.testing.assert_array_equal(ort_run(model, feed)[0], ort_run(small_model, feed)[0])


def test_to_proto_never_hands_out_external_references(tmp_path, small_model):
    model = ox.load(_save_external(small_model, tmp_path))
    proto = _proto.to_proto(model)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)  # model untouched


@pytest.mark.parametrize("location, reason", [
    ("../secret.bin", "leaves the model's folder"),
    ("sub/../../secret.bin", "leaves the model's folder"),
    ("/etc/passwd", "is absolute"),
    ("missing.data", "does not exist"),
])
def test_external_locations_outside_the_folder_are_refused(tmp_path, small_model, location, reason):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path = _save_external(small_model, folder)
    _retarget(path, location)
    with pytest.raises(ModelError, match=reason) as info:
        ox.load(path)
    assert "initializer" in str(info.value) and "m.onnx" in str(info.value)


def test_symlinks_and_hard_links_are_refused(tmp_path, small_model):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_external(small_model, folder)
    outside = tmp_path / "outside.data"
    os.replace(folder / "m.onnx.data", outside)
    (folder / "m.onnx.data").symlink_to(outside)
    with pytest.raises(ModelError, match="symbolic link"):
        ox.load(path)
    (folder / "m.onnx.data").unlink()
    os.link(outside, folder / "m.onnx.data")
    with pytest.raises(ModelError, match="hard links"):
        ox.load(path)
    (folder / "m.onnx.data").unlink()
    (tmp_path / "linkdir").mkdir()
    (folder / "sub").symlink_to(tmp_path / "linkdir")
    os.replace(outside, tmp_path / "linkdir" / "m.onnx.data")
    _retarget(path, "sub/m.onnx.data")
    with pytest.raises(ModelError, match="symbolic link"):
        ox.load(path)


def test_external_offsets_past_the_file_and_wrong_lengths_are_refused(tmp_path, small_model):
    path = _save_external(small_model, tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.name == "w")
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = "100000"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match="lies outside"):
        ox.load(path)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = "0"
        if entry.key == "length":
            entry.value = "4"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match="needs 48"):
        ox.load(path)


def test_external_data_is_refused_without_a_folder(tmp_path, small_model):
    proto = onnx.load(str(_save_external(small_model, tmp_path)), load_external_data=False)
    with pytest.raises(ModelError, match="external data"):
        ox.load(proto)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, small_model, monkeypatch):
    path = tmp_path / "out.onnx"
    ox.save(small_model, path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_proto, "to_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        ox.save(small_model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_save_with_external_data_replaces_the_old_data_file(tmp_path, small_model):
    path = tmp_path / "out.onnx"
    ox.save(small_model, path, external_data=True, size_threshold_bytes=0)
    first = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == 2 and first[1].startswith("out.onnx.") and first[1].endswith(".data")
    ox.save(small_model, path, external_data=True, size_threshold_bytes=0)
    second = sorted(p.name for p in tmp_path.iterdir())
    assert len(second) == 2 and second != first  # a new data file, the stale one removed
    ox.save(small_model, path, external_data=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    feed = {"x": np.ones((1, 4), np.float32)}
    np.testing.assert_array_equal(ort_run(ox.load(path), feed)[0], ort_run(small_model, feed)[0])


def test_save_chooses_external_data_near_the_protobuf_limit(tmp_path, small_model, monkeypatch):
    monkeypatch.setattr(_proto, "PROTOBUF_LIMIT_BYTES", _proto._MARGIN_BYTES + 40)  # w is 48 bytes
    path = ox.save(small_model, tmp_path / "auto.onnx", size_threshold_bytes=0)
    assert len(list(tmp_path.glob("auto.onnx.*.data"))) == 1
    with pytest.raises(ModelError, match="2 GB"):
        ox.save(small_model, tmp_path / "embedded.onnx", external_data=False)
    assert isinstance(ox.load(path).graph.initializers["w"].const_value, ir.ExternalTensor)


def test_saving_a_loaded_model_does_not_touch_its_source(tmp_path, small_model):
    source = _save_external(small_model, tmp_path)
    stamp = [(p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tmp_path.iterdir())]
    model = ox.load(source)
    ox.save(model, tmp_path / "copy.onnx", external_data=True, size_threshold_bytes=0)
    assert [(p.name, p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(tmp_path.iterdir())
            if p.name.startswith("m.onnx")] == stamp


def test_resaving_over_the_source_keeps_the_data_the_model_still_reads(tmp_path, small_model):
    path = ox.save(small_model, tmp_path / "a.onnx", external_data=True, size_threshold_bytes=0)
    model = ox.load(path)
    ox.save(model, path, external_data=True, size_threshold_bytes=0)
    feed = {"x": np.ones((1, 4), np.float32)}
    np.testing.assert_array_equal(ort_run(model, feed)[0], ort_run(small_model, feed)[0])
    np.testing.assert_array_equal(ort_run(ox.load(path), feed)[0], ort_run(small_model, feed)[0])


def test_a_fifo_as_external_data_is_refused_without_blocking(tmp_path, small_model):
    path = _save_external(small_model, tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    os.mkfifo(tmp_path / "m.onnx.data")  # opening it for reading would block forever
    with pytest.raises(ModelError, match="is not a regular file"):
        ox.load(path)


def test_unknown_external_data_keys_and_folders_are_refused(tmp_path, small_model):
    path = _save_external(small_model, tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    entry = proto.graph.initializer[0].external_data.add()
    entry.key, entry.value = "exec", "rm -rf /"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match=r"unknown external-data key\(s\) \['exec'\]"):
        ox.load(path)
    (tmp_path / "folder").mkdir()
    path = _save_external(small_model, tmp_path, "n.onnx")
    _retarget(path, "folder")
    with pytest.raises(ModelError, match="is not a regular file"):
        ox.load(path)
