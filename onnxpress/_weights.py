"""Weights of large models: read one at a time, written as they are made, never all in memory.

A model whose tensors hold more than ``LARGE_BYTES`` is *large*. Its weights stay on disk:

- ``read`` gives a tensor's array as a private copy read with ``pread`` (an ``ir.ExternalTensor``
  maps the whole file and keeps every page it touched resident until released; the copy is
  freed when its last reference goes, the mapping is released at once);
- while ``streaming`` is in force (the pipeline turns it on for a large model), a pass's new
  tensors of ``SPILL_MIN_BYTES`` and more are appended to a spill file in the process's private
  workspace as they are made (``keep``) and the model refers to them there;
- ``artefact`` writes what ONNX Runtime loads: the graph as a small ``.onnx`` file in the
  workspace whose tensors refer to data files in the workspace. Spilled tensors are referred to
  where they lie; a tensor read from a user's file is copied into the workspace once per
  process (ONNX Runtime never opens a user's path); the bytes of in-memory tensors are appended
  once per tensor object;
- ``write_external`` streams every tensor of a model into one data file beside a saved model.

The workspace is one private folder per process, removed at exit.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from onnxpress import _proto

LARGE_BYTES = 256 * 2**20
SPILL_MIN_BYTES = 2**20
_ALIGN = 4096  # data offsets on page boundaries (ONNX Runtime maps aligned external data)
_CHUNK = 16 * 2**20
# Types read as plain little-endian arrays; packed ones (4-bit, 2-bit) are unpacked by onnx-ir.
_PLAIN = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8, ir.DataType.UINT8,
          ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32, ir.DataType.UINT32, ir.DataType.INT64,
          ir.DataType.UINT64, ir.DataType.BOOL}

_streaming: contextvars.ContextVar[bool] = contextvars.ContextVar("onnxpress_streaming", default=False)


def is_large(model: ir.Model) -> bool:
    """Whether ``model``'s tensors hold more than ``LARGE_BYTES``."""
    return _proto.weight_bytes(model) > LARGE_BYTES


@contextlib.contextmanager
def streaming(on: bool = True) -> Iterator[None]:
    """New tensors made by passes in this block go to the workspace's spill file (``keep``)."""
    token = _streaming.set(on)
    try:
        yield
    finally:
        _streaming.reset(token)


def is_streaming() -> bool:
    return _streaming.get()


# ------------------------------------------------------------------------------------ reading

def read(tensor: ir.TensorProtocol) -> np.ndarray:
    """The tensor's array. An external tensor is read into a private copy and its file mapping
    released, so reading every weight of a model one after another holds one at a time."""
    if not isinstance(tensor, ir.ExternalTensor):
        return tensor.numpy()
    if tensor.dtype in _PLAIN:
        dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
        count = tensor.size
        buffer = bytearray(count * dtype.itemsize)
        with open(tensor.path, "rb", buffering=0) as handle:
            view, done, offset = memoryview(buffer), 0, tensor.offset or 0
            while done < len(buffer):
                got = os.preadv(handle.fileno(), [view[done:done + _CHUNK]], offset + done)
                if got <= 0:
                    raise OSError(f"{tensor.path}: external data of '{tensor.name}' ends early")
                done += got
        array = np.frombuffer(buffer, dtype=dtype).reshape(tensor.shape.numpy())
        return array.astype(array.dtype.newbyteorder("="), copy=False)
    array = np.array(tensor.numpy(), copy=True)
    release(tensor)
    return array


def release(tensor: ir.TensorProtocol) -> None:
    """Unmap an external tensor's file (its pages leave this process); it maps again when read."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # an array still views the mapping: it goes with that array
            pass


def release_all(model: ir.Model) -> None:
    """``release`` every external tensor of ``model``."""
    for tensor in _tensors(model):
        release(tensor)


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for graph in _proto.graphs(model):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value


def _storable(tensor: ir.TensorProtocol | None, threshold: int) -> bool:
    """Whether ``tensor`` goes to a data file: ``threshold`` bytes and more, not strings."""
    return tensor is not None and tensor.nbytes >= threshold and tensor.dtype != ir.DataType.STRING


def _attributes_in_memory(model: ir.Model) -> None:
    """Tensor attributes (Constant nodes) read into memory: they stay inside the graph file."""
    for graph in _proto.graphs(model):
        for node in graph:
            for name, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor):
                    node.attributes[name] = ir.AttrTensor(name, ir.Tensor(read(attr.value), dtype=attr.value.dtype,
                                                                          name=attr.value.name))


def _in_memory(value: ir.Value) -> None:
    tensor = value.const_value
    if isinstance(tensor, ir.ExternalTensor):
        value.const_value = ir.Tensor(read(tensor), dtype=tensor.dtype, name=tensor.name)


def _copy_into(tensor: ir.TensorProtocol, handle) -> int:
    """Append ``tensor``'s raw bytes to the open file ``handle`` at the next aligned offset;
    returns that offset. An external tensor is copied in chunks, never mapped."""
    handle.seek(0, os.SEEK_END)
    offset = -handle.tell() % _ALIGN + handle.tell()
    handle.write(b"\0" * (offset - handle.tell()))
    for block in chunks(tensor):
        handle.write(block)
    return offset


def chunks(tensor: ir.TensorProtocol) -> Iterator[bytes]:
    """The tensor's stored bytes (little-endian; packed types packed) in blocks: an external
    tensor is read from its file a block at a time, never mapped."""
    if not isinstance(tensor, ir.ExternalTensor):
        yield tensor.tobytes()
        return
    remaining, position = tensor.nbytes, tensor.offset or 0
    with open(tensor.path, "rb", buffering=0) as source:
        while remaining > 0:
            block = os.pread(source.fileno(), min(remaining, _CHUNK), position)
            if not block:
                raise OSError(f"{tensor.path}: external data of '{tensor.name}' ends early")
            yield block
            remaining -= len(block)
            position += len(block)


# ---------------------------------------------------------------------------------- workspace

class _Workspace:
    """The process's private folder: spill files and the artefacts ONNX Runtime loads."""

    def __init__(self) -> None:
        _remove_orphans()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        self.lock = threading.Lock()
        self.spill_name = "spill.data"
        self.handle = open(self.folder / self.spill_name, "ab+")  # noqa: SIM115 (lives with the process)
        # Where a tensor that is not in the workspace was copied: by the file region it came
        # from (tensors of users' files), or by the tensor object (in memory).
        self.copies: dict[tuple, int] = {}
        self.objects: dict[int, tuple[weakref.ref, int]] = {}
        atexit.register(self.remove)

    def append(self, tensor: ir.TensorProtocol) -> int:
        with self.lock:
            offset = _copy_into(tensor, self.handle)
            self.handle.flush()
            return offset

    def external(self, tensor: ir.TensorProtocol, offset: int) -> ir.ExternalTensor:
        return ir.ExternalTensor(self.spill_name, offset=offset, length=tensor.nbytes, dtype=tensor.dtype,
                                 shape=ir.Shape(tensor.shape), name=tensor.name, base_dir=str(self.folder))

    def owns(self, tensor: ir.TensorProtocol) -> bool:
        return isinstance(tensor, ir.ExternalTensor) and Path(tensor.path).parent == self.folder

    def offset_of(self, tensor: ir.TensorProtocol) -> int:
        """Where ``tensor``'s bytes lie in the spill file, copied there on first need."""
        if isinstance(tensor, ir.ExternalTensor):
            info = os.stat(tensor.path)
            key = (info.st_dev, info.st_ino, info.st_mtime_ns, tensor.offset, tensor.length)
            if key not in self.copies:
                self.copies[key] = self.append(tensor)
            return self.copies[key]
        entry = self.objects.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        offset = self.append(tensor)
        key = id(tensor)
        try:
            self.objects[key] = (weakref.ref(tensor, lambda _, k=key: self.objects.pop(k, None)), offset)
        except TypeError:
            pass
        return offset

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)


_PREFIX = "onnxpress-weights-"


def _remove_orphans() -> None:
    """Remove the workspaces of processes that are gone (killed before their exit handler ran):
    a large model's copy and spill files would otherwise stay in the temporary folder."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        try:
            pid = int(folder.name[len(_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


_WORKSPACE: _Workspace | None = None
_WORKSPACE_LOCK = threading.Lock()


def workspace() -> _Workspace:
    global _WORKSPACE
    with _WORKSPACE_LOCK:
        if _WORKSPACE is None or not _WORKSPACE.folder.exists():
            _WORKSPACE = _Workspace()
        return _WORKSPACE


def keep(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
    """``tensor`` as the model should hold it: while ``streaming``, one of ``SPILL_MIN_BYTES``
    and more is written to the spill file and an external tensor referring to it returned."""
    if not _streaming.get() or not _storable(tensor, SPILL_MIN_BYTES):
        return tensor
    space = workspace()
    if space.owns(tensor):
        return tensor
    return space.external(tensor, space.append(tensor))


def spill(model: ir.Model) -> int:
    """``keep`` every initializer of ``model`` in place (for tensors a pass made without it) and
    release every external tensor's mapping. Returns the count moved to the spill file."""
    moved = 0
    for graph in _proto.graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and not isinstance(tensor, ir.ExternalTensor):
                kept = keep(tensor)
                if kept is not tensor:
                    value.const_value = kept
                    moved += 1
    release_all(model)
    return moved


def park(outputs: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``outputs`` written to the workspace and given back as read-only memory maps: pages the
    kernel can drop under pressure and read again, where arrays in memory could only be swapped."""
    folder = workspace().folder / f"outputs-{secrets.token_hex(6)}"
    folder.mkdir()
    parked = []
    for index, values in enumerate(outputs):
        mapped = {}
        for number, (name, array) in enumerate(values.items()):
            path = folder / f"{index}-{number}.npy"
            np.save(path, np.ascontiguousarray(array))
            mapped[name] = np.load(path, mmap_mode="r")
        parked.append(mapped)
    return parked


# ---------------------------------------------------------------------------------- artefacts

def artefact(model: ir.Model, key: str) -> str:
    """The path of ``model`` serialised for ONNX Runtime in the workspace (written once per key):
    a graph file whose initializers of ``SPILL_MIN_BYTES`` and more refer to the spill file."""
    space = workspace()
    path = space.folder / f"model-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if path.exists():
        return str(path)

    def place(tensor: ir.TensorProtocol) -> ir.ExternalTensor:
        return tensor if space.owns(tensor) else space.external(tensor, space.offset_of(tensor))

    staged = path.with_suffix(".tmp")
    staged.write_bytes(_referring(model, SPILL_MIN_BYTES, place).SerializeToString())
    os.replace(staged, path)
    return str(path)


def write_external(model: ir.Model, folder: Path, model_name: str, data_name: str,
                   size_threshold_bytes: int) -> None:
    """Write ``model`` to ``folder / model_name`` with every tensor of ``size_threshold_bytes``
    and more streamed into ``folder / data_name``, one tensor at a time."""
    with open(folder / data_name, "wb") as handle:
        def place(tensor: ir.TensorProtocol) -> ir.ExternalTensor:
            return ir.ExternalTensor(data_name, offset=_copy_into(tensor, handle), length=tensor.nbytes,
                                     dtype=tensor.dtype, shape=ir.Shape(tensor.shape), name=tensor.name,
                                     base_dir=str(folder))

        proto = _referring(model, size_threshold_bytes, place)
    (folder / model_name).write_bytes(proto.SerializeToString())


def _referring(model: ir.Model, threshold: int, place) -> onnx.ModelProto:
    """``model`` serialised with each initializer of ``threshold`` bytes and more referring to
    where ``place(tensor)`` put it, the rest (and tensor attributes) inside the graph."""
    copy = model.clone()  # shares the tensors; only the copy's references change
    for graph in _proto.graphs(copy):
        for value in graph.initializers.values():
            if _storable(value.const_value, threshold):
                value.const_value = place(value.const_value)
            else:
                _in_memory(value)
    _attributes_in_memory(copy)
    return ir.serde.serialize_model(copy)
