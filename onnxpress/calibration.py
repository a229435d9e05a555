"""Calibration and evaluation data: re-iterable sources of ``{input_name: array}`` feeds.

Any iterable of feeds works wherever a source is asked for; ``Calibration`` adds the things
the pipeline needs: iterating more than once, a length, taking the first samples, and
splitting into calibration and held-out parts. Samples may differ in shape.

A :class:`DataSource` says where data lives (a recipe's ``[calibration]`` or ``[evaluation]``
table, or a path given on the command line) and :func:`read_source` is the one reader of it.
Data needs no code: ``.npz``/``.npy`` arrays, a folder of images (preprocessed as the model's
image input implies, or a Hugging Face ``preprocessor_config.json`` says), a text file read by
a local tokenizer, or a Python ``module:function`` that yields feeds (the readers live in
:mod:`onnxpress.readers`). Given a model, every feed is matched to its inputs by name, dtype and
shape (a file may hold labels too: they are left out), with one clear error otherwise.
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from onnxpress import config
from onnxpress.errors import DataError, RecipeError
from onnxpress.feeds import InputSpec, fit_feed, input_specs
from onnxpress.readers import (ImageSpec, batch_hint, function_feeds, image_defaults, image_feeds, image_files,
                               image_hint, image_input, import_function, parse_function, read_preprocessor,
                               text_feeds, text_hint)

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


def from_images(folder: str | os.PathLike, input_name: str, spec: ImageSpec | None = None, *,
                limit: int | None = None, batch_size: int = 1) -> Calibration:
    """Feeds of ``batch_size`` images each from the image files in ``folder`` (name order),
    preprocessed by ``spec`` (settings left None take ``ImageSpec``'s defaults); ``limit`` caps
    the number of feeds."""
    factory, count = image_feeds(folder, input_name, spec, limit=limit, batch_size=batch_size)
    return Calibration(factory, length=count, name=str(folder))


def from_text(path: str | os.PathLike, tokenizer: str | os.PathLike, *, specs: Sequence[InputSpec] | None = None,
              max_length: int | None = None, batch_size: int = 1, limit: int | None = None) -> Calibration:
    """Feeds of ``batch_size`` tokenized lines each from a UTF-8 text file, one sample a line,
    tokenized by a local tokenizer (a folder or ``tokenizer.json``); with ``specs`` (the
    model's inputs) the feeds hold the model's token inputs. See ``readers.text_feeds``."""
    factory, count = text_feeds(path, tokenizer, specs=specs, max_length=max_length, batch_size=batch_size,
                                limit=limit)
    return Calibration(factory, length=count, name=str(path))


def from_function(function: Callable[..., Any], *, specs: Sequence[InputSpec] | None = None,
                  limit: int | None = None) -> Calibration:
    """Feeds made by ``function``: called with no argument, or with ``specs`` (the model's
    inputs) when it takes one, each time the data is read; it returns or yields mappings of input
    name to array. See ``readers.function_feeds``."""
    name = getattr(function, "__name__", "function")
    return Calibration(function_feeds(function, specs=specs, limit=limit, where=name), name=name)


# ----------------------------------------------------------------------------- sources

_KINDS = ("npz", "npy", "images", "text", "python")
_SUFFIX_KINDS = {".npz": "npz", ".npy": "npy", ".txt": "text", ".py": "python"}

# The keys of a recipe's [calibration] and [evaluation] tables.
_SOURCE_KEYS: dict[str, Any] = {
    "source": str, "type": Literal["npz", "npy", "images", "text", "python"], "batch_size": int, "limit": int,
    "input": str, "size": int | list[int], "crop": int | list[int], "color": str, "scale": float,
    "mean": list[float], "std": list[float], "layout": str, "dtype": str, "preprocessor": str,
    "tokenizer": str, "max_length": int, "function": str}
_IMAGE_KEYS = ("size", "crop", "color", "scale", "mean", "std", "layout", "dtype")
_KIND_KEYS = {"images": ("preprocessor", *_IMAGE_KEYS), "text": ("tokenizer", "max_length"), "python": ("function",)}
# The DataSource fields that belong to one kind.
_KIND_FIELDS = {"images": ("image", "preprocessor"), "text": ("tokenizer", "max_length"), "python": ("function",)}


@dataclass(frozen=True)
class DataSource:
    """Where calibration or evaluation data lives, as a recipe table or a command line names it.

    Args:
        source: a ``.npz`` file (samples along axis 0), a ``.npy`` file (one array, for
            ``input`` or the model's only input), a folder of ``.npz`` files (one feed each), a
            folder of images, a UTF-8 text file (one sample a line), or for ``python`` a
            ``.py`` file or an importable module. Relative paths (also ``tokenizer`` and
            ``preprocessor``) are resolved by :func:`read_source` against its ``base`` (a
            recipe's folder).
        type: ``npz``, ``npy``, ``images``, ``text`` or ``python``; None: from the path (its
            suffix now, a folder's files when read).
        batch_size: samples per feed (rows of a ``.npz``/``.npy``, images, lines).
        limit: at most this many feeds.
        input: the model input images (or a ``.npy`` array) feed (default: the model's only
            image input, or only input).
        image: how images become that input; settings left None come from ``preprocessor``,
            then from the model (see :func:`image_defaults`).
        preprocessor: a Hugging Face folder or its ``preprocessor_config.json`` (images).
        tokenizer: a tokenizer folder or ``tokenizer.json`` (text; required).
        max_length: tokens per line at most (text; default: the model's fixed sequence length,
            else 128).
        function: the function of the ``python`` source that makes the feeds (see
            :func:`from_function`).
    """

    source: Path
    type: Literal["npz", "npy", "images", "text", "python"] | None = None
    batch_size: int = 1
    limit: int | None = None
    input: str | None = None
    image: ImageSpec | None = None
    preprocessor: Path | None = None
    tokenizer: Path | None = None
    max_length: int | None = None
    function: str | None = None

    def __post_init__(self) -> None:
        kind = self.type
        if kind is None:  # what the path's suffix or the keys given say
            kind = _SUFFIX_KINDS.get(Path(self.source).suffix.lower()) or next(
                (k for k, keys in _KIND_FIELDS.items() if any(getattr(self, key) is not None for key in keys)), None)
            object.__setattr__(self, "type", kind)
        if kind not in (None, *_KINDS):
            raise ValueError(f"type must be one of {', '.join(_KINDS)}, got {kind!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        for other, keys in _KIND_FIELDS.items():
            given = [key for key in keys if getattr(self, key) is not None]
            if given and kind != other:
                raise ValueError(f"{', '.join(map(repr, given))} apply to type '{other}' only, not '{kind or 'npz'}'")
        if kind == "text" and self.tokenizer is None:
            raise ValueError("text data needs a tokenizer (tokenizer = PATH in a recipe, --tokenizer PATH "
                             "on the command line)")
        if kind == "python":
            if self.function is None:
                raise ValueError("type 'python' needs 'function' (or source = \"module:function\")")
            if self.batch_size != 1:
                raise ValueError("'batch_size' does not apply to type 'python': the function makes the feeds")
        if kind in ("text", "python") and self.input is not None:
            raise ValueError(f"'input' does not apply to type '{kind}': inputs are matched by name")

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, batch_size: int = 1, limit: int | None = None,
                  input: str | None = None, image: ImageSpec | None = None, preprocessor: str | os.PathLike | None = None,
                  tokenizer: str | os.PathLike | None = None, max_length: int | None = None) -> "DataSource":
        """A source given by path, as the CLI's ``--data`` and ``--calibration`` give it.

        The kind is detected: ``module:function`` or ``file.py:function`` (not an existing
        path) is ``python``; ``.npz``, ``.npy``, ``.txt`` go by suffix; a folder holding
        ``.npz`` files is ``npz`` and one holding images ``images``; another file is ``text``
        when a ``tokenizer`` is given. Image settings or a ``preprocessor`` make a folder
        ``images``.

        Raises:
            DataError: a folder holding both ``.npz`` and image files.
            ValueError: a bad value, or a setting that does not apply to the kind found (a
                ``.txt`` file without a tokenizer).
        """
        text = os.fspath(path)
        parsed = parse_function(text) if not Path(text).exists() else None
        if parsed is not None:
            return cls(Path(parsed[0]), type="python", function=parsed[1], batch_size=batch_size, limit=limit,
                       input=input, image=image, preprocessor=_path(preprocessor), tokenizer=_path(tokenizer),
                       max_length=max_length)
        kind = _kind_on_disk(Path(text), text=tokenizer is not None, images=image is not None or preprocessor is not None)
        return cls(Path(text), type=kind, batch_size=batch_size, limit=limit, input=input, image=image,
                   preprocessor=_path(preprocessor), tokenizer=_path(tokenizer), max_length=max_length)

    @classmethod
    def from_table(cls, table: Any, *, where: str) -> "DataSource":
        """A recipe's ``[calibration]`` or ``[evaluation]`` table, checked.

        Raises:
            RecipeError: one line starting with ``where`` (``r.toml: [calibration]``).
        """
        settings = config.check_table(table, _SOURCE_KEYS, where)
        if "source" not in settings:
            raise RecipeError(f"{where} needs a 'source' (a .npz file or a folder of them, a folder of images, "
                              "a text file, or a Python module:function)")
        source, function = settings["source"], settings.get("function")
        if function is None and settings.get("type") in (None, "python") and not source.endswith(".py"):
            parsed = parse_function(source)
            source, function = parsed if parsed is not None else (source, None)
        kind = settings.get("type") or (_SUFFIX_KINDS.get(Path(source).suffix.lower()) if function is None else "python")
        for other, keys in _KIND_KEYS.items():
            given = [key for key in keys if key in settings]
            if given and kind not in (None, other):
                raise RecipeError(f"{where} {given} apply to type = '{other}' only, not '{kind}'")
        image_keys = {k: settings[k] for k in _IMAGE_KEYS if k in settings}
        for key in ("size", "crop"):
            value = image_keys.get(key)
            if isinstance(value, list):
                image_keys[key] = tuple(value)
            elif key == "crop" and isinstance(value, int):
                image_keys[key] = (value, value)
        for key in ("mean", "std"):
            if key in image_keys:
                image_keys[key] = tuple(image_keys[key])
        try:
            return cls(Path(source), type=settings.get("type"), batch_size=settings.get("batch_size", 1),
                       limit=settings.get("limit"), input=settings.get("input"),
                       image=ImageSpec(**image_keys) if image_keys else None,
                       preprocessor=_path(settings.get("preprocessor")), tokenizer=_path(settings.get("tokenizer")),
                       max_length=settings.get("max_length"), function=function)
        except ValueError as err:
            raise RecipeError(f"{where}: {err}") from None

    def label(self) -> str:
        """The source as a user wrote it: a path, or ``module:function``."""
        return f"{self.source}:{self.function}" if self.type == "python" else str(self.source)


def _path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def source_kind(path: str | os.PathLike, *, text: bool = False) -> str | None:
    """The kind :meth:`DataSource.from_path` finds for ``path`` (None: unknown, read as ``.npz``);
    ``text``: a tokenizer is given, so a file of another suffix is text."""
    if not Path(path).exists() and parse_function(os.fspath(path)) is not None:
        return "python"
    return _kind_on_disk(Path(path), text=text)


def _kind_on_disk(path: Path, *, text: bool = False, images: bool = False) -> str | None:
    """The kind of data at ``path``: by suffix, else by the files a folder holds (None: unknown)."""
    kind = _SUFFIX_KINDS.get(path.suffix.lower())
    if kind is not None:
        return kind
    if path.is_dir():
        if images:
            return "images"
        has_npz = any(path.glob("*.npz"))
        has_images = bool(image_files(path))
        if has_npz and has_images:
            raise DataError(f"{path}: holds both .npz and image files; keep them in separate folders "
                            "(or say type = \"npz\" or \"images\" in a recipe)")
        return "npz" if has_npz else "images" if has_images else None
    if path.is_file() and text:
        return "text"
    return kind


def read_source(source: DataSource | str | os.PathLike, *, model: ir.Model | None = None,
                base: Path | None = None, name: str = "calibration") -> Calibration:
    """The one reader of data sources, for recipes and the command line alike.

    Every kind gives feeds of ``{input name: array}``: ``npz``/``npy`` arrays, ``images``
    preprocessed (:func:`from_images`; settings not given come from ``preprocessor``, then the
    model), ``text`` tokenized (:func:`from_text`), ``python`` made by a function
    (:func:`from_function`). With a model, each feed is then matched to its inputs
    (:func:`onnxpress.feeds.fit_feed`): arrays not named like an input are left out, int32/int64
    and float64 are cast to the model's types, and a wrong dtype or shape is one ``DataError``
    line naming the source, the input, what it wants, what was given and what to change. The
    first feed is read and matched at once, so such a mistake is reported before any work.

    Args:
        source: a :class:`DataSource`, or a path read as ``DataSource.from_path(path)``.
        model: the model fed (its inputs pick the arrays and the image input, and give the
            image size, layout and the sequence length); without it every array is fed as it is.
        base: the folder relative paths are resolved against (a recipe's folder); the
            working directory when None.
        name: what the data is for (``calibration``, ``evaluation``), for messages; the
            result is named ``"{name} ({source})"``.
    """
    try:
        spec = source if isinstance(source, DataSource) else DataSource.from_path(source)
    except ValueError as err:  # a .txt file without a tokenizer, say
        raise DataError(f"{name} ({source}): {err}") from None
    path = _resolve(spec.source, base)
    specs = input_specs(model) if model is not None else None
    inputs = [s.name for s in specs] if specs is not None else None
    where = f"{name} ({spec.label() if spec.type == 'python' else path})"  # a python source is not a path
    wanted = spec.input
    if wanted is not None and inputs is not None and wanted not in inputs:
        raise DataError(f"{name}: {path} feeds input '{wanted}', which the model does not have; "
                        f"its inputs are {inputs}")
    kind = spec.type or _kind_on_disk(path)
    if kind is None and path.is_dir():
        raise DataError(f"{path}: no .npz or image files in this folder")
    hint, given = None, "the data gives"
    if kind == "images":
        data, hint = _read_images(spec, path, specs, base, where)
        given = "the images give"
    elif kind == "text":
        assert spec.tokenizer is not None
        factory, count = text_feeds(path, _resolve(spec.tokenizer, base), specs=specs, max_length=spec.max_length,
                                    batch_size=spec.batch_size, limit=spec.limit, where=where)
        data, hint, given = Calibration(factory, length=count), text_hint, "the tokenizer gives"
    elif kind == "python":
        assert spec.function is not None
        function = import_function(str(spec.source), spec.function, base, where)
        data, given = Calibration(function_feeds(function, specs=specs, limit=spec.limit, where=where)), \
            "the function gives"
    elif kind == "npy" or path.suffix == ".npy":
        data, hint = _from_npy(path, wanted, inputs, batch_size=spec.batch_size, limit=spec.limit), batch_hint
    else:
        data = from_npz(path, batch_size=spec.batch_size, limit=spec.limit, keys=inputs)
        hint = batch_hint if not path.is_dir() else None
    data.name = where
    if specs is None:
        return data
    return _matched(data, specs, given, hint)


def _resolve(path: Path, base: Path | None) -> Path:
    return Path(path) if base is None else Path(base) / path


def _matched(data: Calibration, specs: Sequence[InputSpec], given: str, hint: Any) -> Calibration:
    """``data`` with every feed fitted to ``specs``; the first one is fitted now."""
    names = {spec.name for spec in specs}

    def fitted():
        for index, feed in enumerate(data):
            if names <= set(feed):  # labels and other arrays the model does not take are left out
                feed = {k: v for k, v in feed.items() if k in names}
            where = data.name if index == 0 else f"{data.name}, sample {index}"
            yield fit_feed(specs, feed, where, given=given, hint=hint)

    matched = Calibration(fitted, length=data._length, name=data.name)
    next(iter(matched), None)
    return matched


def _read_images(spec: DataSource, path: Path, specs: Sequence[InputSpec] | None, base: Path | None,
                 where: str) -> tuple[Calibration, Any]:
    """The images at ``path`` as feeds of the model's image input, with the hint for a mismatch."""
    target = image_input(specs, spec.input, where) if specs is not None else None
    input_name = target.name if target is not None else spec.input
    if input_name is None:
        raise DataError(f"{where}: say which input the images feed (input = \"name\" in a recipe, --input-name)")
    if specs is not None:
        others = [s.name for s in specs if s.name != input_name]
        if others:
            raise DataError(f"{where}: images feed '{input_name}' only, and the model also takes {others}; "
                            "use .npz files or a Python function (module:function) for this model")
    preprocessor = read_preprocessor(_resolve(spec.preprocessor, base)) if spec.preprocessor is not None else {}
    given = {f.name: getattr(spec.image, f.name) for f in fields(ImageSpec)
             if spec.image is not None and getattr(spec.image, f.name) is not None}
    defaults = image_defaults(target) if target is not None else {}
    if any(key in layer for layer in (preprocessor, given) for key in ("size", "crop")):
        defaults.pop("size", None)  # the model's size is a default for a source that sets none
    try:
        image = ImageSpec(**{**defaults, **preprocessor, **given})
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    logger.info("%s: images as %s", where, image)
    data = from_images(path, input_name, image, limit=spec.limit, batch_size=spec.batch_size)
    return data, image_hint(image)


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
