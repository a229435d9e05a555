"""A content-addressed cache of pass results (and of any JSON a search wants to keep).

A key is the sha256 of canonical JSON (:func:`make_key`) over everything a result depends on:
the input model's bytes (:func:`model_digest`), the pass configuration (:func:`pass_config`),
the calibration and evaluation data (:func:`data_digest`), the versions of onnxpress and the
libraries passes use (:func:`versions`), the target and the seed. Digests are full 64-hex
sha256, never a prefix (Olive's 8-hex-digit key collided: microsoft/Olive#1936).

Layout: one folder per key, ``<folder>/<first 2 hex>/<key>/``, holding the payload
(``model.onnx``, with an external data file past ~1.5 GB of weights, or ``value.json``) and
``meta.json``: each payload file's sha256 and size, and the caller's metadata, itself
checksummed. An entry is written in a private staging folder beside it, synced, and renamed
into place, so a process killed mid-write leaves no entry, and of two processes writing one
key the first rename wins (the other's result is the same by construction). Reads verify
every checksum: a corrupted entry is counted, removed, and reported as a miss, so the caller
recomputes. A hit sets the entry's recency; :meth:`Cache.evict` removes the least recently
used entries past ``max_bytes``.

The cache folder is trusted like the rest of the user's files; models read from it still go
through ``onnxpress.io.load``'s admission checks.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, _weights
from onnxpress.errors import ModelError

logger = logging.getLogger(__name__)

# Models whose weights exceed this are cached with external data (protobuf stops at 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 2**20

# Libraries the passes use, by distribution name (the key of ``versions()``).
_LIBRARIES = ("onnx", "onnx_ir", "onnxruntime", "onnxsim", "onnxscript", "numpy", "torch")
# Other builds of ONNX Runtime install the same module under another distribution name.
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                      "onnxruntime-qnn", "ort-nightly", "ort-nightly-gpu")
# Modules whose classes are covered by ``versions()``; other pass classes add their file's digest.
_VERSIONED_MODULES = {"onnxpress", "onnx", "onnx_ir", "onnxscript", "onnxsim", "onnxruntime"}

_KEY = re.compile(r"[0-9a-f]{64}")
_MODEL_FILE = "model.onnx"
_VALUE_FILE = "value.json"
_META_FILE = "meta.json"
_FORMAT = 1
# Staging folders older than this are left by killed writers and are removed by ``evict``.
_STALE_SECONDS = 3600.0


# ---------------------------------------------------------------------------------- digests

def model_digest(model: ir.Model) -> str:
    """The sha256 (64 hex) of the model's serialised bytes, every tensor's data included.

    The model is serialised with each tensor replaced by a small tensor holding the sha256 of
    its dtype, shape and bytes (external tensors are read, not named by their file), so large
    models are never serialised whole; the digest covers the same content as the full bytes.
    The input model is left as it was.
    """
    stripped = model.clone()  # tensors are shared; only the clone's references are swapped
    for graph in _proto.graphs(stripped):
        for value in graph.initializers.values():
            if value.const_value is not None:
                value.const_value = _placeholder(value.const_value)
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR:
                    node.attributes[name] = ir.AttrTensor(name, _placeholder(attr.value))
                elif attr.type == ir.AttributeType.TENSORS:
                    node.attributes[name] = ir.AttrTensors(name, [_placeholder(t) for t in attr.value])
    return hashlib.sha256(_proto.to_bytes(stripped)).hexdigest()


def _placeholder(tensor: ir.TensorProtocol) -> ir.Tensor:
    """A uint8 tensor holding the digest of ``tensor``, under its name."""
    return ir.Tensor(np.frombuffer(_tensor_digest(tensor), dtype=np.uint8), name=tensor.name)


def _tensor_digest(tensor: ir.TensorProtocol) -> bytes:
    digest = hashlib.sha256()
    digest.update(repr((str(tensor.dtype), tuple(tensor.shape), tensor.doc_string or "",
                        sorted(tensor.metadata_props.items()))).encode())
    if tensor.dtype == ir.DataType.STRING:
        for item in np.asarray(tensor.numpy()).reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    elif tensor.dtype.bitwidth % 8 or isinstance(tensor, ir.ExternalTensor):
        # Packed sub-byte types: their stored form; a tensor on disk: read a block at a time.
        for block in _weights.chunks(tensor):
            digest.update(block)
    else:
        _update_array(digest, tensor.numpy())
    return digest.digest()


def _update_array(digest, array: np.ndarray) -> None:
    """Hash an array's little-endian bytes without copying a contiguous one."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


_NONE_DIGEST = hashlib.sha256(b"none").hexdigest()


def data_digest(feeds: Iterable[Mapping[str, np.ndarray]] | None) -> str:
    """The sha256 of a sequence of feeds: their order, and each input's name, dtype, shape and
    bytes (inputs sorted by name within a feed). None gives the digest of ``b"none"``.

    Any re-iterable source works (a ``Calibration``); a one-shot iterator is consumed.
    """
    if feeds is None:
        return _NONE_DIGEST
    digest = hashlib.sha256(b"feeds")
    count = 0
    for feed in feeds:
        digest.update(b"feed")
        for name in sorted(feed):
            array = np.asarray(feed[name])
            digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
            if array.dtype.kind in "OUS":
                for item in array.reshape(-1):
                    data = item if isinstance(item, bytes) else str(item).encode()
                    digest.update(len(data).to_bytes(8, "little"))
                    digest.update(data)
            else:
                _update_array(digest, array)
        count += 1
    digest.update(f"count={count}".encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python, onnxpress and every library the passes use (``"absent"`` when one is
    not installed), read from the installed metadata without importing the libraries.

    ``onnxpress-source`` is a digest of onnxpress's own source files, so an editable install
    whose code changed under the same version number does not reuse stale results. An ONNX
    Runtime installed under another distribution (``onnxruntime-gpu``) is named with its version.
    """
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    found = {"python": sys.version.split()[0], "onnxpress": _version("onnxpress"),
             "onnxpress-source": _source_digest()}
    for library in _LIBRARIES:
        if library == "onnxruntime":
            found[library] = next((f"{_version(d)} ({d})" if d != "onnxruntime" else _version(d)
                                   for d in _ORT_DISTRIBUTIONS if _version(d) != "absent"), "absent")
        else:
            found[library] = _version(library)
    return tuple(found.items())


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _source_digest() -> str:
    """The sha256 of onnxpress's source files (the core, passes and target profiles), found
    without importing the passes (the core never does)."""
    import importlib.util

    digest = hashlib.sha256()
    for package in ("onnxpress", "onnxpress.passes", "onnxpress.targets"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            folder = Path(location)
            for path in sorted([*folder.glob("*.py"), *folder.glob("*.toml")]):
                digest.update(f"{package}/{path.name}".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def pass_config(item: ir.passes.PassBase) -> dict[str, Any] | None:
    """The canonical configuration of a pass, or None when it cannot be keyed (never cached).

    An onnxpress pass is ``{"pass": its registry name, "options": {option: value}}`` with every
    option of ``registry.options`` read from the public attribute of that name. A plain
    ``onnx_ir`` pass is ``{"pass": "module:Class", "options": vars(pass)}``. Option values
    must be JSON data; a model is keyed by its digest, an array by its bytes, and a string that
    names a file (``labels="data.npz:label"``) by that file's content too. Any other value
    (a callable, an object) makes the pass uncacheable. A pass class outside onnxpress and the
    versioned libraries adds the digest of its module's source file.
    """
    from onnxpress import registry
    from onnxpress.context import Pass

    cls = type(item)
    class_path = f"{cls.__module__}:{cls.__qualname__}"
    if isinstance(item, Pass):
        name = registry.declared_name(cls) or class_path
        try:
            raw = {option: getattr(item, option) for option in registry.options(cls)}
        except AttributeError as err:
            logger.debug("cache: pass %s keeps an option under another name (%s): not cached", name, err)
            return None
    else:
        name = class_path
        raw = {key: value for key, value in sorted(vars(item).items())}
    options = {}
    for option, value in raw.items():
        canonical = _option_value(value)
        if canonical is _UNKEYABLE:
            logger.debug("cache: pass %s option '%s' (%s) has no canonical form: not cached",
                         name, option, type(value).__name__)
            return None
        options[option] = canonical
    config: dict[str, Any] = {"pass": name, "options": options}
    if cls.__module__.partition(".")[0] not in _VERSIONED_MODULES:
        code = _module_digest(cls)
        if code is None:
            logger.debug("cache: pass %s: the source of %s cannot be read: not cached", name, class_path)
            return None
        config["class"], config["code"] = class_path, code
    return config


_UNKEYABLE = object()


def _option_value(value: Any) -> Any:
    """``value`` as canonical JSON data, or ``_UNKEYABLE``."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            return _string_value(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _option_value(value.item())
    if isinstance(value, np.ndarray):
        return {"array": data_digest([{"array": value}])}
    if isinstance(value, ir.Model):
        return {"model": model_digest(value)}
    if isinstance(value, (list, tuple)):
        items = [_option_value(v) for v in value]
        return _UNKEYABLE if any(v is _UNKEYABLE for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _UNKEYABLE
        items = {k: _option_value(v) for k, v in value.items()}
        return _UNKEYABLE if any(v is _UNKEYABLE for v in items.values()) else items
    return _UNKEYABLE


def _string_value(text: str) -> Any:
    """A string, with the digest of the file it names (``path`` or ``path:key``) if it names one."""
    for candidate in (text, text.rpartition(":")[0]):
        if candidate and len(candidate) < 4096 and "\x00" not in candidate:
            path = Path(candidate)
            try:
                if path.is_file():
                    return {"text": text, "file": str(path.resolve()), "sha256": _file_sha256(path)[0]}
            except OSError:
                continue
    return text


def _module_digest(cls: type) -> str | None:
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:
        return None
    if source is None:
        return None
    try:
        return _file_sha256(Path(source))[0]
    except OSError:
        return None


def make_key(**parts: Any) -> str:
    """The sha256 (64 hex) of ``parts`` as canonical JSON: keys sorted, no whitespace, tuples
    as lists, numpy scalars and arrays as Python values.

    Raises:
        TypeError: a part holds something that is not JSON data.
    """
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


def _canonical(value: Any) -> str:
    def convert(item: Any) -> Any:
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        raise TypeError(f"cache: a {type(item).__name__} is not JSON data")

    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=convert)


# ------------------------------------------------------------------------------------ cache

def default_folder() -> Path:
    """``$ONNXPRESS_CACHE``, else ``$XDG_CACHE_HOME/onnxpress``, else ``~/.cache/onnxpress``."""
    if os.environ.get("ONNXPRESS_CACHE"):
        return Path(os.environ["ONNXPRESS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "onnxpress"


class _Corrupted(Exception):
    """An entry whose files do not match its checksums or cannot be read back."""


class _OtherKind(Exception):
    """An intact entry of another kind or format than asked for (left in place)."""


class Cache:
    """Pass results and JSON values on disk, by key (see the module docstring).

    Args:
        folder: where entries live (created when first written); default ``default_folder()``.
        max_bytes: what the entries may hold in all; past it, each ``put`` evicts the least
            recently used (an entry larger than that alone is evicted at once).

    Attributes:
        hits, misses, corrupted: lookups of this object that found an entry, found none, and
            found a corrupted one (removed; it also counts as a miss).
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, max_bytes: int = 4 * 2**30) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache: max_bytes must be >= 0, got {max_bytes}")
        self.folder = Path(folder).expanduser() if folder is not None else default_folder()
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.corrupted = 0

    def __repr__(self) -> str:
        return f"Cache({str(self.folder)!r}, max_bytes={self.max_bytes})"

    # -- lookups

    def get_model(self, key: str) -> tuple[ir.Model, dict] | None:
        """The model stored under ``key`` (in memory, independent of the cache's files) and the
        metadata stored with it, or None."""
        return self._get(key, "model")

    def put_model(self, key: str, model: ir.Model, meta: dict) -> None:
        """Store ``model`` and ``meta`` (JSON data) under ``key``, then evict past ``max_bytes``.
        A key already stored is only marked used.

        Raises:
            TypeError: ``meta`` is not JSON data (nothing is written).
            OSError, ModelError: the entry cannot be written (nothing is left of it).
        """
        _canonical(meta)  # refuse what cannot be stored before writing anything

        def write(staging: Path) -> None:
            from onnxpress import io

            io.save(model, staging / _MODEL_FILE, external_data=_proto.weight_bytes(model) > EXTERNAL_DATA_BYTES)

        self._put(key, "model", write, meta)

    def get_json(self, key: str) -> Any | None:
        """The JSON value stored under ``key``, or None (also for a stored ``null``)."""
        return self._get(key, "json")

    def put_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON data) under ``key``, then evict past ``max_bytes``.

        Raises:
            TypeError: ``value`` is not JSON data (nothing is written).
            OSError: the entry cannot be written (nothing is left of it).
        """
        text = _canonical(value).encode()
        self._put(key, "json", lambda staging: _write_file(staging / _VALUE_FILE, text), None)

    # -- housekeeping

    def size(self) -> int:
        """Bytes held by the entries."""
        return sum(size for _, _, size in self._entries())

    def evict(self) -> int:
        """Remove the least recently used entries until at most ``max_bytes`` are held, and
        staging folders of writers killed long ago; returns the number of entries removed."""
        self._remove_stale()
        entries = sorted(self._entries(), key=lambda e: (e[1], e[0].name))
        total = sum(size for _, _, size in entries)
        removed = 0
        for path, _, size in entries:
            if total <= self.max_bytes:
                break
            if _remove(path):
                removed += 1
                logger.debug("cache: evicted %s (%d bytes)", path.name, size)
            total -= size
        return removed

    def clear(self) -> None:
        """Remove every entry."""
        for path, _, _ in self._entries():
            _remove(path)
        self._remove_stale(0.0)

    # -- internals

    def _entry(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"cache: a key is 64 lowercase hex digits (make_key), got {key!r}")
        return self.folder / key[:2] / key

    def _get(self, key: str, kind: str) -> Any:
        entry = self._entry(key)
        if not entry.is_dir():
            self.misses += 1
            return None
        try:
            value = self._read(entry, kind)
        except _Corrupted as err:
            logger.warning("cache: entry %s is corrupted (%s): removed, to be recomputed", key, err)
            self.corrupted += 1
            self.misses += 1
            _remove(entry)
            return None
        except _OtherKind as err:
            logger.warning("cache: entry %s: %s", key, err)
            self.misses += 1
            return None
        except FileNotFoundError:  # evicted or removed by another process while being read
            self.misses += 1
            return None
        except OSError as err:
            logger.warning("cache: entry %s cannot be read (%s): recomputed", key, err)
            self.misses += 1
            return None
        self.hits += 1
        _touch(entry / _META_FILE)
        return value

    def _read(self, entry: Path, kind: str) -> Any:
        meta_path = entry / _META_FILE
        if not meta_path.exists():
            raise _Corrupted(f"no {_META_FILE}")
        try:
            record = json.loads(meta_path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            raise _Corrupted(f"{_META_FILE} is not JSON: {err}") from None
        if not isinstance(record, dict) or record.get("check") != _meta_check(record):
            raise _Corrupted(f"{_META_FILE} does not match its checksum")
        if record.get("format") != _FORMAT or record.get("kind") != kind:
            raise _OtherKind(f"entry holds a {record.get('kind')!r} of format {record.get('format')!r}, "
                             f"not a {kind!r} of format {_FORMAT}")
        for name, expected in record["files"].items():
            path = entry / name
            if not path.is_file():
                raise _Corrupted(f"file '{name}' is missing")
            if path.stat().st_size != expected["size"]:
                raise _Corrupted(f"file '{name}' holds {path.stat().st_size} bytes, not {expected['size']}")
            if _file_sha256(path)[0] != expected["sha256"]:
                raise _Corrupted(f"file '{name}' does not match its sha256")
        if kind == "json":
            try:
                return json.loads((entry / _VALUE_FILE).read_bytes())
            except (ValueError, UnicodeDecodeError) as err:
                raise _Corrupted(f"{_VALUE_FILE} is not JSON: {err}") from None
        from onnxpress import io

        try:
            model = io.load(entry / _MODEL_FILE)
        except ModelError as err:
            raise _Corrupted(str(err)) from None
        return _proto.tensors_in_memory(model, release=True), record["meta"]

    def _put(self, key: str, kind: str, write, meta: dict | None) -> None:
        entry = self._entry(key)
        if entry.is_dir():  # already there (a concurrent writer, or a caller that did not look)
            _touch(entry / _META_FILE)
            return
        from onnxpress.io import sync

        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=entry.parent))
        try:
            write(staging)
            files = {}
            for path in sorted(staging.iterdir()):
                if path.is_file():  # io.save's own staging folder is gone once it returns
                    digest, size = _file_sha256(path)
                    files[path.name] = {"sha256": digest, "size": size}
                    sync(path)
            record: dict[str, Any] = {"format": _FORMAT, "kind": kind, "key": key, "files": files,
                                      "created": time.time()}
            if meta is not None:
                record["meta"] = meta
            record["check"] = _meta_check(record)
            _write_file(staging / _META_FILE, _canonical(record).encode())
            _touch(staging / _META_FILE)
            sync(staging)
            try:
                os.replace(staging, entry)
            except OSError:
                if not entry.is_dir():
                    raise
                # Another process stored this key first: its entry stands, ours is dropped.
                logger.debug("cache: entry %s was written concurrently: kept the first", key)
                return
            sync(entry.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.debug("cache: stored %s entry %s", kind, key)
        self.evict()

    def _entries(self) -> list[tuple[Path, int, int]]:
        """(folder, last use in ns, bytes) of every entry."""
        found = []
        if not self.folder.is_dir():
            return found
        for shard in self.folder.iterdir():
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if not _KEY.fullmatch(entry.name):
                    continue
                try:
                    used = (entry / _META_FILE).stat().st_mtime_ns
                except OSError:
                    used = 0
                size = 0
                for path in entry.iterdir():
                    try:
                        size += path.stat().st_size
                    except OSError:
                        pass
                found.append((entry, used, size))
        return found

    def _remove_stale(self, age: float = _STALE_SECONDS) -> None:
        if not self.folder.is_dir():
            return
        limit = time.time() - age
        for shard in self.folder.iterdir():
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for path in shard.glob(".*"):
                try:
                    if path.stat().st_mtime < limit:
                        shutil.rmtree(path, ignore_errors=True)
                except OSError:
                    pass


def _meta_check(record: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "check"}).encode()).hexdigest()


def _file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _touch(path: Path) -> None:
    """Mark a use now (``time_ns``, set explicitly: a coarse file-system clock would tie uses)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def _remove(entry: Path) -> bool:
    """Remove an entry: first renamed out of sight (readers see all of it or none), then deleted."""
    hidden = entry.parent / f".{entry.name}.{secrets.token_hex(4)}.del"
    try:
        os.replace(entry, hidden)
    except OSError:
        return False
    shutil.rmtree(hidden, ignore_errors=True)
    return True
