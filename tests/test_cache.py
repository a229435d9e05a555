"""The cache of pass results: full-digest keys over every part, model and JSON round trips,
corrupted entries recomputed, LRU eviction, atomic writes, and a pipeline that reuses results."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import pytest

import onnxpress as ox
from onnxpress import cache as cache_module
from onnxpress.cache import Cache, data_digest, make_key, model_digest, pass_config, versions
from onnxpress.pipeline import _json_safe
from onnxpress.targets import FOLDER as TARGETS

from conftest import SMALL_TEXT, model_from_text, ort_run

HEX64 = re.compile(r"[0-9a-f]{64}")


def _with_weight(model: ir.Model, name: str, array: np.ndarray) -> ir.Model:
    changed = model.clone()
    changed.graph.initializers[name].const_value = ir.tensor(array, name=name)
    return changed


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("??/*") if HEX64.fullmatch(p.name))


# ------------------------------------------------------------------------------------ keys

def test_key_is_full_sha256_and_canonical():
    key = make_key(model="a", config={"b": 1, "a": (1, 2)}, seed=np.int64(3))
    assert HEX64.fullmatch(key)
    assert key == make_key(seed=3, config={"a": [1, 2], "b": 1}, model="a")  # order, tuples, numpy
    with pytest.raises(TypeError, match="not JSON data"):
        make_key(model=object())


@pytest.mark.parametrize("part, other", [
    ("config", {"pass": "quantize", "options": {"per_channel": False}}),
    ("calibration", data_digest([{"x": np.ones(2, np.float32)}])),
    ("versions", {**versions(), "onnxruntime": "0.0.0"}),
    ("target", {"name": "cpu", "digest": "0" * 64}),
    ("seed", 1),
])
def test_key_changes_with_each_part(small_model, part, other):
    parts = dict(model=model_digest(small_model), config=pass_config(ox.passes.Quantize()),
                 calibration=data_digest(None), versions=versions(), target={"name": "cpu", "digest": "f" * 64},
                 seed=0)
    assert make_key(**parts) != make_key(**{**parts, part: other})


def test_model_digest_covers_bytes_names_and_structure(small_model):
    digest = model_digest(small_model)
    assert HEX64.fullmatch(digest)
    assert model_digest(small_model.clone()) == digest
    w = small_model.graph.initializers["w"].const_value.numpy().copy()
    w[1, 2] = np.nextafter(w[1, 2], np.float32(10))  # one ulp in one weight
    assert model_digest(_with_weight(small_model, "w", w)) != digest
    assert model_digest(_with_weight(small_model, "w", w.astype(np.float64))) != digest
    renamed = small_model.clone()
    next(iter(renamed.graph)).name = "other"
    assert model_digest(renamed) != digest
    assert small_model.graph.initializers["w"].const_value.dtype == ir.DataType.FLOAT  # input left as it was


def test_model_digest_hashes_external_data_by_bytes_not_location(tmp_path, small_model):
    saved = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        ox.save(small_model, tmp_path / folder / "m.onnx", external_data=True, size_threshold_bytes=0)
        saved.append(ox.load(tmp_path / folder / "m.onnx"))
    assert any(isinstance(v.const_value, ir.ExternalTensor) for v in saved[0].graph.initializers.values())
    assert model_digest(saved[0]) == model_digest(saved[1]) == model_digest(small_model)


def test_data_digest_covers_order_names_dtypes_shapes_and_bytes(digits):
    a, b = np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32)
    base = data_digest([{"x": a}, {"x": b}])
    assert HEX64.fullmatch(base) and base == data_digest([{"x": a.copy()}, {"x": b.copy()}])
    assert data_digest(None) == data_digest(None) != data_digest([])
    for other in ([{"x": b}, {"x": a}], [{"y": a}, {"x": b}], [{"x": a.astype(np.float64)}, {"x": b}],
                  [{"x": a.reshape(4, 1)}, {"x": b}], [{"x": a + 1e-7}, {"x": b}], [{"x": a}]):
        assert data_digest(other) != base
    calibration = digits[1]
    assert data_digest(calibration) == data_digest(calibration) == data_digest(list(calibration))


def test_versions_name_onnxpress_and_the_libraries():
    found = versions()
    for library in ("onnxpress", "onnx", "onnx_ir", "onnxruntime", "onnxsim", "onnxscript", "numpy", "torch"):
        assert isinstance(found[library], str) and found[library]
    assert found["onnxpress"] != "absent" and found["numpy"] == np.__version__


class _Opaque(ir.passes.InPlacePass):
    def __init__(self) -> None:
        super().__init__()
        self.hook = lambda model: model  # no canonical form

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


def test_pass_config_reads_options_and_refuses_what_it_cannot_key(small_model):
    config = pass_config(ox.passes.Quantize(per_channel=False, exclude=("a",)))
    assert config["pass"] == "quantize"
    assert config["options"]["per_channel"] is False and config["options"]["exclude"] == ["a"]
    assert pass_config(ox.passes.Quantize()) != config
    plain = pass_config(common_passes.LiftConstantsToInitializersPass(size_limit=4))
    assert plain == {"pass": "onnx_ir.passes.common.constant_manipulation:LiftConstantsToInitializersPass",
                     "options": {"lift_all_constants": False, "size_limit": 4}}
    assert pass_config(_Opaque()) is None
    teacher = pass_config(ox.passes.Distill(teacher=small_model))["options"]["teacher"]
    assert teacher == {"model": model_digest(small_model)}
    local = pass_config(_Shift())
    assert local["code"] == cache_module._file_sha256(Path(__file__))[0]  # a pass outside onnxpress


# ------------------------------------------------------------------------------ the store

def test_model_and_json_round_trip(tmp_path, small_model):
    store = Cache(tmp_path / "c")
    key, other = make_key(n=1), make_key(n=2)
    assert store.get_model(key) is None and store.misses == 1
    store.put_model(key, small_model, {"modified": True, "statistics": {"n": 3}})
    model, meta = store.get_model(key)
    assert meta == {"modified": True, "statistics": {"n": 3}}
    assert model_digest(model) == model_digest(small_model)
    feed = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    assert np.array_equal(ort_run(model, feed)[0], ort_run(small_model, feed)[0])
    store.put_json(other, {"trials": [1.5, None, "a"], "best": (1, 2)})
    assert store.get_json(other) == {"trials": [1.5, None, "a"], "best": [1, 2]}
    assert (store.hits, store.misses, store.corrupted) == (2, 1, 0)
    assert store.size() > 0 and len(_entries(store.folder)) == 2
    assert _entries(store.folder)[0].parent.name == _entries(store.folder)[0].name[:2]
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.get_json("abc")
    store.clear()
    assert store.size() == 0 and store.get_json(other) is None


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXPRESS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Cache().folder == tmp_path / "xdg" / "onnxpress"
    monkeypatch.setenv("ONNXPRESS_CACHE", str(tmp_path / "mine"))
    assert Cache().folder == tmp_path / "mine"
    with pytest.raises(ValueError, match="max_bytes"):
        Cache(tmp_path, max_bytes=-1)


def test_large_model_is_cached_with_external_data_and_read_into_memory(tmp_path, small_model, monkeypatch):
    monkeypatch.setattr(cache_module, "EXTERNAL_DATA_BYTES", 0)  # as past ~1.5 GB of weights
    store = Cache(tmp_path)
    key = make_key(n=1)
    store.put_model(key, small_model, {})
    entry = _entries(tmp_path)[0]
    assert any(p.name.endswith(".data") for p in entry.iterdir())
    model, _ = store.get_model(key)
    store.clear()  # the entry's files are gone: the loaded model does not need them
    assert not any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    feed = {"x": np.ones((1, 4), np.float32)}
    assert np.array_equal(ort_run(model, feed)[0], ort_run(small_model, feed)[0])


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupted_entry_is_detected_removed_and_recomputed(tmp_path, small_model, damage):
    store = Cache(tmp_path)
    key = make_key(n=1)
    store.put_model(key, small_model, {"modified": False})
    entry = _entries(tmp_path)[0]
    payload = entry / ("meta.json" if damage == "meta" else "model.onnx")
    data = bytearray(payload.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0x20
    payload.write_bytes(bytes(data))
    assert store.get_model(key) is None
    assert (store.corrupted, store.misses, store.hits) == (1, 1, 0)
    assert not entry.exists()
    store.put_model(key, small_model, {"modified": False})  # the caller recomputes and stores again
    assert store.get_model(key)[1] == {"modified": False} and store.hits == 1


def test_corrupted_json_is_detected(tmp_path):
    store = Cache(tmp_path)
    key = make_key(n=1)
    store.put_json(key, {"a": 1})
    value = _entries(tmp_path)[0] / "value.json"
    value.write_bytes(value.read_bytes().replace(b"1", b"2"))
    assert store.get_json(key) is None and store.corrupted == 1


def test_an_entry_of_another_kind_is_a_miss_left_in_place(tmp_path):
    store = Cache(tmp_path)
    key = make_key(n=1)
    store.put_json(key, [1])
    assert store.get_model(key) is None and (store.misses, store.corrupted) == (1, 0)
    assert store.get_json(key) == [1]


def test_lru_eviction_keeps_what_was_used_last(tmp_path):
    store = Cache(tmp_path, max_bytes=10**9)
    keys = [make_key(n=i) for i in range(4)]
    store.put_json(keys[0], "x" * 100)
    one = store.size()
    store.max_bytes = 3 * one + one // 2  # room for three entries
    store.put_json(keys[1], "x" * 100)
    store.put_json(keys[2], "x" * 100)
    assert store.get_json(keys[0]) is not None  # a hit makes keys[0] the most recently used
    store.put_json(keys[3], "x" * 100)  # evicts keys[1], the least recently used
    assert store.get_json(keys[1]) is None
    assert all(store.get_json(k) is not None for k in (keys[0], keys[2], keys[3]))
    assert store.size() <= store.max_bytes
    store.get_json(keys[2])
    store.max_bytes = one + one // 2
    assert store.evict() == 2
    assert [p.name for p in _entries(tmp_path)] == [keys[2]]


def test_a_write_that_fails_midway_leaves_no_entry(tmp_path, monkeypatch, small_model):
    store = Cache(tmp_path)
    key = make_key(n=1)
    write = cache_module._write_file

    def half_then_fail(path, data):
        write(path, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "_write_file", half_then_fail)
    with pytest.raises(OSError):
        store.put_json(key, {"a": 1})
    with pytest.raises(OSError):
        store.put_model(key, small_model, {})  # fails writing meta.json, after the model
    monkeypatch.setattr(cache_module, "_write_file", write)
    assert store.get_json(key) is None and store.get_model(key) is None and store.corrupted == 0
    assert not any(tmp_path.rglob("*.*")), "a staging folder was left behind"


_KILLED_WRITER = """
import sys, time
from onnxpress import cache, samples
import onnxpress as ox

def stall(path, data):
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    print("written", flush=True)
    time.sleep(60)

cache._write_file = stall
cache.Cache(sys.argv[1]).put_model(cache.make_key(n=1), ox.load(samples.DIGITS_MODEL), {})
"""


def test_a_writer_killed_midway_leaves_no_entry(tmp_path):
    import signal
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert any(tmp_path.glob("??/.*.tmp"))  # its staging folder is there, out of sight
    store = Cache(tmp_path)
    assert store.get_model(make_key(n=1)) is None and store.size() == 0 and store.corrupted == 0

def test_staging_left_by_a_killed_writer_is_invisible_and_cleaned(tmp_path):
    store = Cache(tmp_path)
    key = make_key(n=1)
    staging = tmp_path / key[:2] / f".{key}.abc.tmp"
    staging.mkdir(parents=True)
    (staging / "value.json").write_text("{")
    old = time.time() - 7200
    os.utime(staging, (old, old))
    assert store.get_json(key) is None and store.size() == 0
    store.evict()
    assert not staging.exists()


def test_concurrent_writers_of_one_key_keep_the_first(tmp_path, monkeypatch):
    first, second = Cache(tmp_path), Cache(tmp_path)
    key = make_key(n=1)
    write = cache_module._write_file

    def meanwhile(path, data):  # the other process publishes the key while this one writes
        monkeypatch.setattr(cache_module, "_write_file", write)
        first.put_json(key, {"by": "first"})
        write(path, data)

    monkeypatch.setattr(cache_module, "_write_file", meanwhile)
    second.put_json(key, {"by": "second"})
    assert second.get_json(key) == {"by": "first"}
    assert len(_entries(tmp_path)) == 1 and not list(tmp_path.glob("??/.*"))


# --------------------------------------------------------------------------- the pipeline

def test_second_pipeline_run_reuses_every_pass(tmp_path, digits):
    model, calibration = digits[0], digits[1]
    store = Cache(tmp_path)

    def run(quantize: ox.passes.Quantize):
        pipeline = ox.Pipeline([ox.passes.Simplify(), quantize], cache=store, latency_runs=0)
        start = time.perf_counter()
        result = pipeline.run(model, calibration=calibration)
        return result, time.perf_counter() - start

    first, first_seconds = run(ox.passes.Quantize())
    assert (store.hits, store.misses) == (0, 2)
    second, second_seconds = run(ox.passes.Quantize())
    assert (store.hits, store.misses) == (2, 2)
    assert all(r.statistics["cached"] is True for r in second.records)
    assert [r.modified for r in second.records] == [r.modified for r in first.records]
    for before, after in zip(first.records, second.records):
        assert {k: v for k, v in after.statistics.items() if k != "cached"} == _json_safe(before.statistics)
    assert second.records[1].accuracy is not None and second.records[1].checked  # checks still run
    assert second_seconds <= 0.2 * first_seconds, (first_seconds, second_seconds)
    for feed in calibration.take(4):
        assert np.array_equal(ort_run(first.model, feed)[0], ort_run(second.model, feed)[0])
    run(ox.passes.Quantize(per_channel=False))  # simplify hits, the changed quantize misses
    assert (store.hits, store.misses) == (3, 3)


def test_seed_target_and_metric_are_part_of_the_key(tmp_path, small_model):
    store = Cache(tmp_path)

    def run(metric=None, **options):
        ox.Pipeline([ox.passes.Simplify()], cache=store, latency_runs=0, **options).run(small_model, metric=metric)

    run()
    run(seed=1)
    assert (store.hits, store.misses) == (0, 2)
    profile = tmp_path / "profiles" / "cpu.toml"  # same name, another tolerance
    profile.parent.mkdir()
    text = (TARGETS / "cpu.toml").read_text()
    assert "cosine = 0.99 " in text
    profile.write_text(text.replace("cosine = 0.99 ", "cosine = 0.98 "))
    run(target="cpu")  # the pipeline checks on the cpu profile without a target too: a hit
    run(target=str(profile))
    assert (store.hits, store.misses) == (1, 3)
    run(metric=lambda outputs: 1.0)
    assert (store.hits, store.misses) == (1, 3)  # a run with a metric does not use the cache


class _Shift(ox.Pass, ir.passes.InPlacePass):
    """Add ``offset`` to the initializer ``one`` (a lossy pass with a remedy, for the floor)."""

    name = "shift_for_cache_test"
    runs = 0

    def __init__(self, *, offset: float = 50.0) -> None:
        super().__init__()
        self.offset = offset

    def call(self, model: ir.Model) -> ox.PassResult:
        type(self).runs += 1
        value = model.graph.initializers["one"]
        value.const_value = ir.tensor(value.const_value.numpy() + np.float32(self.offset), name="one")
        return ox.PassResult(model, modified=self.offset != 0.0, statistics={"offset": self.offset})

    def remedy(self, floor: float) -> ox.Pass:
        return self.with_options(offset=0.0)


def test_the_floor_remedy_is_cached_too(tmp_path):
    model = model_from_text(SMALL_TEXT)
    store = Cache(tmp_path)
    pipeline = ox.Pipeline([_Shift()], cache=store, latency_runs=0, accuracy_floor=0.999)
    _Shift.runs = 0
    first = pipeline.run(model).records[0]
    assert _Shift.runs == 2 and first.floor["met"] and "remedy" in first.statistics
    second = pipeline.run(model).records[0]
    assert _Shift.runs == 2 and (store.hits, store.misses) == (2, 2)
    assert second.floor == first.floor and second.statistics["cached"] is True
    assert second.statistics["remedy"]["before"]["cosine"] == first.statistics["remedy"]["before"]["cosine"]

