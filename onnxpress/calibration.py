"""Calibration and evaluation data: re-iterable sources of ``{input_name: array}`` feeds.

Any iterable of feeds works wherever a source is asked for; ``Calibration`` adds the things
the pipeline needs: iterating more than once, a length, taking the first samples, and
splitting into calibration and held-out parts. Samples may differ in shape.

A :class:`DataSource` says where data lives (a recipe's ``[calibration]`` or ``[evaluation]``
table, or a path given on the command line) and :func:`read_source` is the one reader of it:
given a model, it feeds only the model's inputs (a file may hold labels too).
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from onnxpress import config
from onnxpress.errors import DataError, RecipeError
from onnxpress.feeds import input_specs

if TYPE_CHECKING:
    import onnx_ir as ir

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]


class Calibration:
    """A re-iterable source of feeds.

    Args:
        factory: returns a fresh iterator of feeds each time it is called.
        length: the number of feeds, when known without iterating.
        name: where the data comes from, for messages.
    """

    def __init__(self, factory: Callable[[], Iterable[Mapping[str, np.ndarray]]], *,
                 length: int | None = None, name: str = "data") -> None:
        self._factory = factory
        self._length = length
        self.name = name

    def __iter__(self) -> Iterator[Feed]:
        for index, feed in enumerate(self._factory()):
            if not isinstance(feed, Mapping):
                raise DataError(f"{self.name}: sample {index} is a {type(feed).__name__}, not a "
                                "mapping of input names to arrays")
            yield {str(k): np.asarray(v) for k, v in feed.items()}

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for _ in self._factory())
        return self._length

    def take(self, count: int) -> list[Feed]:
        """The first ``count`` feeds (fewer if the source is shorter)."""
        taken = []
        for feed in self:
            if len(taken) == count:
                break
            taken.append(feed)
        return taken

    def split(self, calibration_share: float) -> tuple["Calibration", "Calibration"]:
        """Split into (calibration, held-out) by position: the first share, then the rest."""
        if not 0.0 < calibration_share < 1.0:
            raise ValueError(f"calibration_share must be in (0, 1), got {calibration_share}")
        total = len(self)
        return self._split_at(max(1, min(total - 1, round(total * calibration_share))))

    def _split_at(self, cut: int) -> tuple["Calibration", "Calibration"]:
        total = len(self)

        def head():
            for index, feed in enumerate(self):
                if index >= cut:
                    return
                yield feed

        def tail():
            for index, feed in enumerate(self):
                if index >= cut:
                    yield feed

        return (Calibration(head, length=cut, name=f"{self.name}[:{cut}]"),
                Calibration(tail, length=total - cut, name=f"{self.name}[{cut}:]"))


def holdout(calibration: Iterable[Mapping[str, np.ndarray]], fraction: float = 0.2,
            minimum: int = 1) -> tuple[Calibration, Calibration]:
    """Split feeds into (kept, held_out): the last ``fraction`` of them, at least ``minimum``, held out.

    The held-out part is for verdicts on data the passes never saw: give the passes ``kept``
    only. The split is by position, so it is the same on every run.

    Raises:
        ValueError: ``fraction`` not in (0, 1) or ``minimum`` < 1.
        DataError: too few feeds to keep at least one for the passes.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout: fraction must be in (0, 1), got {fraction}")
    if minimum < 1:
        raise ValueError(f"holdout: minimum must be >= 1, got {minimum}")
    source = from_feeds(calibration)
    total = len(source)
    held = max(minimum, round(total * fraction))
    if total - held < 1:
        raise DataError(f"{source.name}: {total} sample(s) cannot be split into data for the passes and "
                        f"{held} held-out sample(s); give more data or a separate evaluation source")
    return source._split_at(total - held)


def from_feeds(feeds: Iterable[Mapping[str, np.ndarray]], *, name: str = "data") -> Calibration:
    """Wrap any iterable of feeds; a one-shot iterator is read once and kept in memory."""
    if isinstance(feeds, Calibration):
        return feeds
    if isinstance(feeds, Mapping):
        raise DataError(f"{name}: expected an iterable of feeds, got a single mapping; wrap it in a list")
    if isinstance(feeds, Sequence):
        return Calibration(lambda: iter(feeds), length=len(feeds), name=name)
    if iter(feeds) is feeds:  # an iterator or generator can only be read once
        kept = list(feeds)
        logger.info("%s: kept %d samples of a one-shot iterator in memory", name, len(kept))
        return Calibration(lambda: iter(kept), length=len(kept), name=name)
    return Calibration(lambda: iter(feeds), name=name)


def from_npz(path: str | os.PathLike, *, batch_size: int = 1, limit: int | None = None,
             keys: Sequence[str] | None = None) -> Calibration:
    """Feeds from a ``.npz`` file or a folder of them.

    A single file holds one array per input name, samples along the first axis; it is cut into
    feeds of ``batch_size`` samples. In a folder each ``.npz`` file is one feed (so samples may
    differ in shape), read in name order and one at a time. ``keys`` keeps only those arrays
    (a file may also hold labels); ``limit`` caps the number of feeds.
    """
    source = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if source.is_dir():
        files = sorted(source.glob("*.npz"))
        if not files:
            raise DataError(f"{source}: no .npz files in this folder")
        files = files[:limit] if limit is not None else files

        def read_files():
            for file in files:
                yield _read_npz(file, keys)

        return Calibration(read_files, length=len(files), name=str(source))
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    return _batched(_read_npz(source, keys), source, batch_size, limit)


def _batched(arrays: Feed, source: Path, batch_size: int, limit: int | None) -> Calibration:
    """Feeds of ``batch_size`` samples cut along the arrays' shared leading axis."""
    counts = {name: array.shape[0] if array.ndim else 0 for name, array in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise DataError(f"{source}: arrays must share a leading sample axis, got {counts}")
    total = next(iter(counts.values()))
    if limit is not None:
        total = min(total, limit * batch_size)
    starts = range(0, total, batch_size)

    def batches():
        for start in starts:
            yield {name: array[start:min(start + batch_size, total)] for name, array in arrays.items()}

    return Calibration(batches, length=len(starts), name=str(source))


def read_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """One array of a ``.npz`` file (labels, say); ``DataError`` naming what the file holds."""
    return _read_npz(Path(path), [key])[key]


def _read_npz(path: Path, keys: Sequence[str] | None = None) -> Feed:
    if not path.is_file():  # a FIFO or device would block the reader
        raise DataError(f"{path}: not a regular file")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(keys or ()) - set(data.files))
            if missing:
                raise DataError(f"{path}: no array(s) {missing}; it holds {sorted(data.files)}")
            return {name: data[name] for name in (keys or data.files)}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from err


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class ImageSpec:
    """How images become a model input.

    Args:
        size: resize so the shorter side is ``size`` (an int) or to exactly ``[height, width]``.
        crop: centre crop to ``[height, width]`` after resizing (None: no crop).
        color: ``RGB``, ``BGR`` or ``L`` (grey).
        scale: multiply pixel values (0..255) by this first (1/255 maps to 0..1).
        mean, std: per channel, applied after scaling: ``(x * scale - mean) / std``.
        layout: ``NCHW`` or ``NHWC``.
        dtype: ``float32``, ``float16`` or ``uint8`` (uint8 skips scale/mean/std).
    """

    size: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.color not in ("RGB", "BGR", "L"):
            raise ValueError(f"images: color must be RGB, BGR or L, got {self.color!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"images: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.dtype not in ("float32", "float16", "uint8"):
            raise ValueError(f"images: dtype must be float32, float16 or uint8, got {self.dtype!r}")
        if any(s == 0 for s in self.std):
            raise ValueError("images: std must not contain 0")
        for key in ("size", "crop"):
            value = getattr(self, key)
            if isinstance(value, (tuple, list)) and len(value) != 2:
                raise ValueError(f"images: {key} must be [height, width], got {list(value)}")

    def apply(self, image) -> np.ndarray:
        """One PIL image to an array with a leading batch axis of 1."""
        from PIL import Image

        image = image.convert("L" if self.color == "L" else "RGB")
        if self.size is not None:
            if isinstance(self.size, int):
                ratio = self.size / min(image.size)
                target = (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio)))
            else:
                target = (int(self.size[1]), int(self.size[0]))
            image = image.resize(target, Image.BILINEAR)
        if self.crop is not None:
            height, width = int(self.crop[0]), int(self.crop[1])
            left = max(0, (image.size[0] - width) // 2)
            top = max(0, (image.size[1] - height) // 2)
            image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image)
        array = array[..., None] if array.ndim == 2 else array
        if self.color == "BGR":
            array = array[..., ::-1]
        if self.dtype == "uint8":
            out = array.astype(np.uint8)
        else:
            out = (array.astype(np.float32) * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
            out = out.astype(self.dtype)
        if self.layout == "NCHW":
            out = np.transpose(out, (2, 0, 1))
        return np.ascontiguousarray(out[None])


def from_images(folder: str | os.PathLike, input_name: str, spec: ImageSpec | None = None, *,
                limit: int | None = None) -> Calibration:
    """One feed per image file in ``folder`` (name order), preprocessed by ``spec``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise DataError("images: reading images needs Pillow (pip install onnxpress[images])") from err
    source = Path(folder)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder of images")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{source}: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    files = files[:limit] if limit is not None else files
    spec = spec or ImageSpec()

    def read():
        for file in files:
            try:
                with Image.open(file) as image:
                    yield {input_name: spec.apply(image)}
            except (OSError, UnidentifiedImageError) as err:
                raise DataError(f"{file}: not a readable image ({err})") from err

    return Calibration(read, length=len(files), name=str(source))


# The keys of a recipe's [calibration] and [evaluation] tables.
_SOURCE_KEYS: dict[str, Any] = {
    "source": str, "type": Literal["npz", "images"], "batch_size": int, "limit": int, "input": str,
    "size": int | list[int], "crop": list[int], "color": str, "scale": float, "mean": list[float],
    "std": list[float], "layout": str, "dtype": str}
_IMAGE_KEYS = ("size", "crop", "color", "scale", "mean", "std", "layout", "dtype")


@dataclass(frozen=True)
class DataSource:
    """Where calibration or evaluation data lives, as a recipe table or a command line names it.

    Args:
        source: a ``.npz`` file (samples along axis 0), a ``.npy`` file (one array, for
            ``input`` or the model's only input), a folder of ``.npz`` files (one feed each),
            or, with ``type = "images"``, a folder of images. Relative paths are resolved by
            :func:`read_source` against its ``base`` (a recipe's folder).
        type: ``npz`` or ``images``.
        batch_size: samples per feed cut from one ``.npz``/``.npy`` file.
        limit: at most this many feeds.
        input: the model input that images (or a ``.npy`` array) feed.
        image: how images become that input (``type = "images"`` only).
    """

    source: Path
    type: Literal["npz", "images"] = "npz"
    batch_size: int = 1
    limit: int | None = None
    input: str | None = None
    image: ImageSpec | None = None

    def __post_init__(self) -> None:
        if self.type not in ("npz", "images"):
            raise ValueError(f"type must be 'npz' or 'images', got {self.type!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.type == "images" and not self.input:
            raise ValueError("type 'images' needs 'input' (the model input they feed)")
        if self.type == "npz" and self.image is not None:
            raise ValueError("image preprocessing applies to type 'images' only")

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, batch_size: int = 1, limit: int | None = None,
                  input: str | None = None) -> "DataSource":
        """A ``.npz``/``.npy`` file or a folder of ``.npz`` files given by path (the CLI's
        ``--data`` and ``--calibration``; images are not guessed from a folder)."""
        return cls(Path(path), batch_size=batch_size, limit=limit, input=input)

    @classmethod
    def from_table(cls, table: Any, *, where: str) -> "DataSource":
        """A recipe's ``[calibration]`` or ``[evaluation]`` table, checked.

        Raises:
            RecipeError: one line starting with ``where`` (``r.toml: [calibration]``).
        """
        settings = config.check_table(table, _SOURCE_KEYS, where)
        if "source" not in settings:
            raise RecipeError(f"{where} needs a 'source' (a .npz file or a folder of them)")
        kind = settings.get("type", "npz")
        if kind == "images" and "input" not in settings:
            raise RecipeError(f"{where} type 'images' needs 'input' (the model input they feed)")
        image_keys = {k: settings[k] for k in _IMAGE_KEYS if k in settings}
        if kind == "npz" and image_keys:
            raise RecipeError(f"{where} {list(image_keys)} apply to type = 'images' only")
        if kind == "images" and "batch_size" in settings:
            raise RecipeError(f"{where} 'batch_size' applies to type = 'npz' only (one image is one feed)")
        try:
            image = None
            if kind == "images":
                image = ImageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in image_keys.items()})
            return cls(Path(settings["source"]), type=kind, batch_size=settings.get("batch_size", 1),
                       limit=settings.get("limit"), input=settings.get("input"), image=image)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None


def read_source(source: DataSource | str | os.PathLike, *, model: ir.Model | None = None,
                base: Path | None = None, name: str = "calibration") -> Calibration:
    """The one reader of data sources, for recipes and the command line alike.

    Args:
        source: a :class:`DataSource`, or a path read as ``DataSource.from_path(path)``.
        model: when given, only the arrays named like its inputs are fed (others, such as
            labels, are left out) and a missing input is a ``DataError``; without it every
            array is fed.
        base: the folder relative paths are resolved against (a recipe's folder); the
            working directory when None.
        name: what the data is for (``calibration``, ``evaluation``), for messages; the
            result is named ``"{name} ({path})"``.
    """
    spec = source if isinstance(source, DataSource) else DataSource.from_path(source)
    path = spec.source if base is None else Path(base) / spec.source
    inputs = [s.name for s in input_specs(model)] if model is not None else None
    wanted = spec.input
    if wanted is not None and inputs is not None and wanted not in inputs:
        raise DataError(f"{name}: {path} feeds input '{wanted}', which the model does not have; "
                        f"its inputs are {inputs}")
    if spec.type == "images":
        data = from_images(path, wanted, spec.image, limit=spec.limit)
    elif path.suffix == ".npy":
        data = _from_npy(path, wanted, inputs, batch_size=spec.batch_size, limit=spec.limit)
    else:
        data = from_npz(path, batch_size=spec.batch_size, limit=spec.limit, keys=inputs)
    data.name = f"{name} ({path})"
    return data


def _from_npy(path: Path, input_name: str | None, inputs: list[str] | None, *, batch_size: int,
              limit: int | None) -> Calibration:
    """Feeds from one ``.npy`` array (samples along axis 0) for ``input_name`` or the only input."""
    if input_name is None:
        if inputs is None:
            raise DataError(f"{path}: a .npy file holds one array; say which input it feeds")
        if len(inputs) != 1:
            raise DataError(f"{path}: a .npy file holds one array but the model has inputs {inputs}; "
                            "use a .npz file with one array per input")
        input_name = inputs[0]
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from err
    if not isinstance(array, np.ndarray):  # np.load reads .npz content whatever the suffix
        array.close()
        raise DataError(f"{path}: holds several arrays; name it .npz")
    return _batched({input_name: array}, path, batch_size, limit)


def from_dataloader(loader: Iterable, input_names: Sequence[str], *, limit: int | None = None) -> Calibration:
    """Feeds from a torch ``DataLoader`` (or any iterable of batches).

    A batch that is a mapping keeps the keys named in ``input_names``; a tuple or list gives its
    first ``len(input_names)`` items to those names in order (labels after them are ignored);
    a single tensor goes to the only input. Tensors become numpy arrays.
    """
    names = list(input_names)
    if not names:
        raise ValueError("from_dataloader: input_names must name at least one input")

    def convert(item):
        return item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)

    def batches():
        for index, batch in enumerate(loader):
            if limit is not None and index >= limit:
                return
            if isinstance(batch, Mapping):
                missing = [n for n in names if n not in batch]
                if missing:
                    raise DataError(f"dataloader: batch {index} has no {missing}; it has {sorted(batch)}")
                yield {n: convert(batch[n]) for n in names}
            elif isinstance(batch, (tuple, list)):
                if len(batch) < len(names):
                    raise DataError(f"dataloader: batch {index} has {len(batch)} items for inputs {names}")
                yield {n: convert(item) for n, item in zip(names, batch)}
            else:
                if len(names) != 1:
                    raise DataError(f"dataloader: batch {index} is one tensor but the inputs are {names}")
                yield {names[0]: convert(batch)}

    length = None
    if hasattr(loader, "__len__"):
        length = len(loader) if limit is None else min(len(loader), limit)
    return Calibration(batches, length=length, name="dataloader")
