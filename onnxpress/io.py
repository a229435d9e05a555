"""Model I/O: ``load`` admits a model from anything a user has, ``save`` writes it atomically.

Loading never follows an external-data reference before checking it: the location must be
relative, resolve inside the model's folder without passing through a symlink, name a regular
file with a single link, and the offset and length must lie inside that file and match the
tensor. Tensors in external files stay on disk (memory-mapped lazily by onnx-ir).

Saving writes into a private temporary folder beside the destination, syncs, then renames:
an interrupted save leaves the old files or the new ones, never a mix. External-data file
names are always chosen here, never taken from the input model.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Union

import google.protobuf.message
import onnx
import onnx_ir as ir

from onnxpress import _proto, _weights
from onnxpress.errors import ModelError

logger = logging.getLogger(__name__)

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto, ir.Model]

_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}


def load(source: ModelSource, *, check_external_data: bool = True) -> ir.Model:
    """Load a model from a path, bytes, an ``onnx.ModelProto`` or an ``onnx_ir.Model``.

    Args:
        source: where the model is. An ``ir.Model`` is returned as it is.
        check_external_data: refuse external-data references that leave the model's folder
            (always on for paths; exists for tests of the checks themselves).

    Raises:
        ModelError: the file is missing, is not an ONNX model, or refers to external data
            outside its folder; the message names the file and tensor.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        _admit_structure(source, "<ModelProto>")
        _refuse_external(source, "<ModelProto>")
        return _free_unknown_dims(_proto.from_proto(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(source), "<bytes>")
        _refuse_external(proto, "<bytes>")
        return _free_unknown_dims(_proto.from_proto(proto))
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(source), check_external_data=check_external_data)
    raise ModelError(f"cannot load a model from {type(source).__name__}: give a path, bytes, "
                     "an onnx.ModelProto or an onnx_ir.Model")


def _load_path(path: Path, *, check_external_data: bool) -> ir.Model:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    if not stat.S_ISREG(path.stat().st_mode):
        raise ModelError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read: {err.strerror}") from err
    proto = _parse(data, str(path))
    folder = path.resolve().parent
    if check_external_data:
        for tensor, where in _proto.tensor_protos(proto):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _check_external(tensor, where, folder, path)
    model = _free_unknown_dims(_proto.from_proto(proto))
    ir.external_data.set_base_dir(model.graph, str(folder))
    for function in model.functions.values():
        ir.external_data.set_base_dir(function.graph, str(folder))
    return model


def _free_unknown_dims(model: ir.Model) -> ir.Model:
    """Make dims declared as -1 or 0 on the main graph's inputs and outputs unknown.

    Paddle exports write -1 for a free dim; a fixed 0 would admit only empty tensors (ONNX
    Runtime holds feeds to it) and fails the checker's strict shape inference against any
    other inferred size. Both mean "unknown" in real files.
    """
    count = 0
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is not None and any(isinstance(d, int) and d <= 0 for d in value.shape):
            value.shape = ir.Shape([None if isinstance(d, int) and d <= 0 else d for d in value.shape])
            count += 1
    if count:
        logger.info("load: %d graph input(s)/output(s) declare a dim of -1 or 0: made unknown", count)
    return model


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{name}: not an ONNX model (the file is empty)")
    try:
        proto = _proto.parse(data)
    except google.protobuf.message.DecodeError as err:
        raise ModelError(f"{name}: not an ONNX model (protobuf decoding failed: {err})") from err
    _admit_structure(proto, name)
    return proto


def _admit_structure(proto: onnx.ModelProto, name: str) -> None:
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelError(f"{name}: not an ONNX model (it has no graph)")
    if not proto.opset_import:
        raise ModelError(f"{name}: not a valid ONNX model (it imports no opset)")
    if proto.ir_version <= 0:
        raise ModelError(f"{name}: not a valid ONNX model (ir_version is {proto.ir_version})")
    from onnxpress.admission import admit

    admit(proto, name)


def _refuse_external(proto: onnx.ModelProto, name: str) -> None:
    for tensor, where in _proto.tensor_protos(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(f"{name}: {where} refers to external data, which can only be "
                             "loaded from a model file path")


def _check_external(tensor: onnx.TensorProto, where: str, folder: Path, model_path: Path) -> None:
    """Refuse an external-data reference unless it stays safely inside ``folder``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    prefix = f"{model_path}: {where}"
    unknown = set(info) - _EXTERNAL_KEYS
    if unknown:
        raise ModelError(f"{prefix}: unknown external-data key(s) {sorted(unknown)}")
    location = info.get("location", "")
    if not location:
        raise ModelError(f"{prefix}: external data without a location")
    if "\x00" in location:
        raise ModelError(f"{prefix}: external-data location contains a NUL byte")
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise ModelError(f"{prefix}: external-data location '{location}' is absolute; "
                         "only paths inside the model's folder are accepted")
    if ".." in relative.parts or "\\" in location:
        raise ModelError(f"{prefix}: external-data location '{location}' leaves the model's folder")
    current = folder
    for part in relative.parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            raise ModelError(f"{prefix}: external-data file '{location}' does not exist") from None
        if stat.S_ISLNK(mode):
            raise ModelError(f"{prefix}: external-data location '{location}' passes through a "
                             "symbolic link; refused")
    info_stat = current.stat()
    if not stat.S_ISREG(info_stat.st_mode):
        raise ModelError(f"{prefix}: external-data location '{location}' is not a regular file")
    if info_stat.st_nlink != 1:
        raise ModelError(f"{prefix}: external-data file '{location}' has {info_stat.st_nlink} "
                         "hard links; refused (it may be a file from outside the model's folder)")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else info_stat.st_size - offset
    except ValueError:
        raise ModelError(f"{prefix}: external-data offset or length is not an integer") from None
    if offset < 0 or length < 0 or offset + length > info_stat.st_size:
        raise ModelError(f"{prefix}: external data [{offset}, {offset + length}) lies outside "
                         f"'{location}' ({info_stat.st_size} bytes)")
    expected = _proto.tensor_nbytes(tensor)
    if expected is not None and expected != length:
        raise ModelError(f"{prefix}: external data holds {length} bytes but the tensor's shape "
                         f"{list(tensor.dims)} needs {expected}")
    if "checksum" in info:
        _verify_checksum(current, offset, length, info["checksum"], prefix, location)


def _verify_checksum(path: Path, offset: int, length: int, checksum: str, prefix: str, location: str) -> None:
    """The ONNX spec's ``checksum`` is a SHA-1 hex digest "of the file"; writers differ on
    whether that means the tensor's bytes or the whole file, so either is accepted."""
    want = checksum.strip().lower()
    if len(want) != 40 or any(c not in "0123456789abcdef" for c in want):
        raise ModelError(f"{prefix}: external-data checksum '{checksum[:48]}' is not a SHA-1 hex digest")
    with open(path, "rb") as handle:
        if _sha1(handle, offset, length) == want or _sha1(handle, 0, path.stat().st_size) == want:
            return
    raise ModelError(f"{prefix}: external data in '{location}' does not match its SHA-1 checksum "
                     "(the file is corrupt or was changed)")


def _sha1(handle, offset: int, length: int) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    handle.seek(offset)
    while length > 0:
        block = handle.read(min(length, 2**22))
        if not block:
            break
        digest.update(block)
        length -= len(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- save

def save(model: ModelSource, path: str | os.PathLike, *, external_data: bool | None = None,
         size_threshold_bytes: int = 1024) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    Args:
        model: the model (anything ``load`` accepts).
        path: destination ``.onnx`` file.
        external_data: ``True`` writes tensors of more than ``size_threshold_bytes`` to
            ``<name>.<token>.data`` beside the model; ``False`` embeds everything (fails past the
            2 GB protobuf limit); ``None`` (default) picks external data when the model's
            tensors come near that limit.
        size_threshold_bytes: smallest tensor moved to the external file.
    """
    model = load(model)
    dest = Path(path)
    if dest.is_dir():
        raise ModelError(f"{dest}: is a folder; give a file name for the model")
    if not dest.parent.exists():
        raise ModelError(f"{dest.parent}: output folder does not exist")
    use_external = not _proto.fits_in_protobuf(model) if external_data is None else external_data
    if not use_external and not _proto.fits_in_protobuf(model):
        raise ModelError(f"{dest}: the model's tensors exceed protobuf's 2 GB limit; save with "
                         "external_data=True")
    previous_data = _our_data_files(dest) if dest.exists() else set()
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        staged_model = staging / dest.name
        data_name = None
        if use_external:
            data_name = f"{dest.name}.{secrets.token_hex(4)}.data"
            # One tensor at a time: a model past the protobuf limit is never whole in memory.
            _weights.write_external(model, staging, dest.name, data_name, size_threshold_bytes)
        else:
            staged_model.write_bytes(_proto.to_bytes(model))
        for staged in staging.iterdir():
            sync(staged)
        # The data file first: until the model file is replaced, the old model and its old
        # data file stay intact and consistent.
        if data_name is not None:
            os.replace(staging / data_name, dest.parent / data_name)
        os.replace(staged_model, dest)
        sync(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    in_use = _external_files(model)
    # Data files of earlier saves to this name, including orphans of a save killed between
    # its two renames: only the new one (and any the saved model still reads) stays.
    previous_data |= {p.name for p in dest.parent.glob(f"{dest.name}.*.data")}
    for stale in previous_data - ({data_name} if data_name else set()):
        stale_path = (dest.parent / stale).resolve()
        if stale_path in in_use:  # the model being saved still reads its weights from it
            logger.warning("kept %s: the saved model was loaded from it and still uses it", stale_path)
            continue
        stale_path.unlink(missing_ok=True)
    logger.info("saved %s%s", dest, f" with external data {data_name}" if data_name else "")
    return dest


def _external_files(model: ir.Model) -> set[Path]:
    """Resolved paths of the files the model's lazy external tensors read from."""
    files = set()
    for graph in _proto.graphs(model):
        tensors = [v.const_value for v in graph.initializers.values()]
        tensors += [a.value for n in graph for a in n.attributes.values() if a.type == ir.AttributeType.TENSOR]
        files.update(Path(t.path).resolve() for t in tensors if isinstance(t, ir.ExternalTensor))
    return files


def _our_data_files(dest: Path) -> set[str]:
    """External-data files an earlier ``save`` to ``dest`` wrote (safe to remove once replaced)."""
    try:
        proto = _proto.load_proto(str(dest), load_external_data=False)
    except (OSError, google.protobuf.message.DecodeError):
        return set()
    names = set()
    for tensor, _ in _proto.tensor_protos(proto):
        for entry in tensor.external_data:
            if (entry.key == "location" and entry.value.startswith(dest.name + ".")
                    and entry.value.endswith(".data") and "/" not in entry.value):
                names.add(entry.value)
    return names


def sync(path: Path) -> None:
    """fsync a file or folder (a folder: the names in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
