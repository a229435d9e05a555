"""Readers of data given without code: folders of images, text files with a tokenizer, and
Python functions that make feeds.

Each reader gives a factory of ``{input name: array}`` feeds (and, where known without reading,
their number); :mod:`onnxpress.calibration` wraps them as re-iterable ``Calibration`` sources,
and its ``read_source`` matches every feed to the model's inputs with ``feeds.fit_feed``, using
the hints here (:func:`image_hint`, :func:`text_hint`, :func:`batch_hint`) to say what to
change when they do not fit.

Pillow, ``transformers`` and ``tokenizers`` are imported by the readers that need them.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from onnxpress.errors import DataError
from onnxpress.feeds import InputSpec

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Hint = Callable[[InputSpec, np.ndarray], "str | None"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_IMAGE_DTYPES = ("float32", "float16", "float64", "uint8")


@dataclass(frozen=True)
class ImageSpec:
    """How images become a model input. A setting left None comes from the model when
    :func:`read_source` knows it (see :func:`image_defaults`), else from the default named here.

    Args:
        size: resize so the shorter side is ``size`` (an int) or to exactly ``[height, width]``
            (None: no resize).
        crop: centre crop to ``[height, width]`` after resizing (None: no crop).
        color: ``RGB`` (default), ``BGR`` or ``L`` (grey).
        scale: multiply pixel values (0..255) by this first (default 1/255: 0..1).
        mean, std: per channel (one value, or one per channel), applied after scaling:
            ``(x * scale - mean) / std`` (default 0 and 1).
        layout: ``NCHW`` (default) or ``NHWC``.
        dtype: ``float32`` (default), ``float16``, ``float64`` or ``uint8`` (uint8 skips
            scale/mean/std).
    """

    size: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    color: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.color not in (None, "RGB", "BGR", "L"):
            raise ValueError(f"images: color must be RGB, BGR or L, got {self.color!r}")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise ValueError(f"images: layout must be NCHW or NHWC, got {self.layout!r}")
        if self.dtype not in (None, *_IMAGE_DTYPES):
            raise ValueError(f"images: dtype must be one of {', '.join(_IMAGE_DTYPES)}, got {self.dtype!r}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("images: std must not contain 0")
        channels = 1 if self.color == "L" else 3
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) not in (1, channels):
                raise ValueError(f"images: {key} has {len(value)} values for {channels} channel(s) "
                                 f"(color {self.color or 'RGB'}): give {'1' if channels == 1 else '1 or 3'}")
        for key in ("size", "crop"):
            value = getattr(self, key)
            if isinstance(value, (tuple, list)) and len(value) != 2:
                raise ValueError(f"images: {key} must be [height, width], got {list(value)}")
            sides = [value] if isinstance(value, int) else list(value or ())
            if any(not isinstance(v, int) or v < 1 for v in sides):
                raise ValueError(f"images: {key} must be positive whole numbers, got {value!r}")

    def apply(self, image) -> np.ndarray:
        """One PIL image to an array with a leading batch axis of 1."""
        from PIL import Image

        color, layout, dtype = self.color or "RGB", self.layout or "NCHW", self.dtype or "float32"
        image = image.convert("L" if color == "L" else "RGB")
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
        if color == "BGR":
            array = array[..., ::-1]
        if dtype == "uint8":
            out = array.astype(np.uint8)
        else:
            scale = 1.0 / 255.0 if self.scale is None else self.scale
            mean = np.asarray(self.mean or (0.0,), np.float32)
            std = np.asarray(self.std or (1.0,), np.float32)
            out = ((array.astype(np.float32) * scale - mean) / std).astype(dtype)
        if layout == "NCHW":
            out = np.transpose(out, (2, 0, 1))
        return np.ascontiguousarray(out[None])


def image_defaults(spec: InputSpec) -> dict[str, Any]:
    """The :class:`ImageSpec` settings a rank-4 model input implies.

    The layout is where the 1- or 3-channel axis is (axis 1: NCHW, else axis 3: NHWC), the
    color follows the channel count (1: ``L``, 3: ``RGB``), the size is the fixed height and
    width when both are, and the dtype the input's when images can be made in it.
    """
    settings: dict[str, Any] = {}
    if spec.dtype.name in _IMAGE_DTYPES:
        settings["dtype"] = spec.dtype.name
    shape = spec.shape
    if shape is None or len(shape) != 4:
        return settings
    layout = "NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None
    if layout is None:
        return settings
    settings["layout"] = layout
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    settings["color"] = "L" if channels == 1 else "RGB"
    if isinstance(height, int) and isinstance(width, int):
        settings["size"] = (height, width)
    return settings


def read_preprocessor(path: str | os.PathLike) -> dict[str, Any]:
    """The :class:`ImageSpec` settings of a Hugging Face ``preprocessor_config.json`` (or the
    folder holding it).

    Read: ``do_resize`` and ``size`` (``{"height", "width"}``, ``{"shortest_edge"}``, or an int:
    the shorter side when the config also crops, else a square), ``do_center_crop`` and
    ``crop_size``, ``do_rescale`` and ``rescale_factor``, ``do_normalize``, ``image_mean`` and
    ``image_std``. Images are RGB and resized bilinearly whatever ``resample`` says.

    Raises:
        DataError: a missing or unreadable file, or a size given in a form not listed.
    """
    file = Path(path)
    file = file / "preprocessor_config.json" if file.is_dir() else file
    if not file.is_file():
        raise DataError(f"{file}: no such preprocessor config (a Hugging Face folder or its "
                        "preprocessor_config.json)")
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{file}: not a readable preprocessor config ({err})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{file}: not a preprocessor config (a JSON object)")
    spec: dict[str, Any] = {}
    crop = None
    if settings.get("do_center_crop", "crop_size" in settings) and settings.get("crop_size") is not None:
        crop = _hf_size(settings["crop_size"], file, "crop_size", shorter_side=False)
        spec["crop"] = crop
    if settings.get("do_resize", True) and settings.get("size") is not None:
        spec["size"] = _hf_size(settings["size"], file, "size", shorter_side=crop is not None)
    spec["scale"] = float(settings.get("rescale_factor", 1.0 / 255.0)) if settings.get("do_rescale", True) else 1.0
    if settings.get("do_normalize", "image_mean" in settings):
        for key, ours in (("image_mean", "mean"), ("image_std", "std")):
            value = settings.get(key)
            if value is not None:
                spec[ours] = tuple(float(v) for v in (value if isinstance(value, list) else [value]))
    else:
        spec["mean"], spec["std"] = (0.0,), (1.0,)
    return spec


def _hf_size(value: Any, file: Path, key: str, *, shorter_side: bool) -> int | tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if shorter_side else (value, value)
    if isinstance(value, list) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            if "longest_edge" in value:
                logger.warning("%s: %s: longest_edge is not applied, only shortest_edge", file, key)
            return int(value["shortest_edge"])
    raise DataError(f"{file}: {key} {value!r} is not a form onnxpress reads ({{\"height\", \"width\"}}, "
                    "{\"shortest_edge\"} or a number)")


def image_feeds(folder: str | os.PathLike, input_name: str, spec: ImageSpec | None = None, *,
                limit: int | None = None, batch_size: int = 1) -> tuple[Callable[[], Iterator[Feed]], int]:
    """(a factory of feeds, their number): ``batch_size`` images a feed from the image files in
    ``folder`` (name order), preprocessed by ``spec``; ``limit`` caps the number of feeds.
    ``calibration.from_images`` wraps it."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise DataError("images: reading images needs Pillow (pip install onnxpress[images])") from err
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = Path(folder)
    if not source.is_dir():
        raise DataError(f"{source}: not a folder of images")
    files = image_files(source)
    if not files:
        raise DataError(f"{source}: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    groups = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    groups = groups[:limit] if limit is not None else groups
    spec = spec or ImageSpec()

    def read_one(file: Path) -> np.ndarray:
        try:
            with Image.open(file) as image:
                return spec.apply(image)
        except (OSError, UnidentifiedImageError) as err:
            raise DataError(f"{file}: not a readable image ({err})") from err

    def read():
        for group in groups:
            arrays = [read_one(file) for file in group]
            shapes = sorted({array.shape for array in arrays})
            if len(shapes) > 1:
                raise DataError(f"{source}: images of different sizes ({', '.join(_text_dims(s) for s in shapes)}) "
                                "cannot be stacked into one feed: give a size (--image-size HxW; size = [h, w] "
                                "in a recipe)")
            yield {input_name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)}

    return read, len(groups)


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder``, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())


def _text_dims(shape: Sequence[Any]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ----------------------------------------------------------------------------- text

_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_DEFAULT_MAX_LENGTH = 128


class _Tokenizer:
    """A local tokenizer: a ``transformers`` tokenizer folder, or a ``tokenizers`` ``tokenizer.json``.

    Nothing is downloaded: folders load with ``local_files_only=True``.
    """

    def __init__(self, path: Path, where: str) -> None:
        self.where = where
        self._hf = self._fast = None
        if not path.exists():
            raise DataError(f"{where}: tokenizer {path}: no such file or folder")
        if path.is_dir():
            try:
                from transformers import AutoTokenizer
            except ImportError:
                path = path / "tokenizer.json"  # the tokenizers library reads that file alone
            else:
                try:
                    self._hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                except (OSError, ValueError, KeyError) as err:
                    raise DataError(f"{where}: tokenizer {path}: not a tokenizer folder ({first_line(err)})") from None
                self.names = list(_TOKEN_INPUTS)  # asked for each, whatever model_input_names says
                return
        self._fast = _tokenizer_json(path, where)
        self.names = list(_TOKEN_INPUTS)

    def __call__(self, texts: list[str], pairs: list[str] | None, *, max_length: int,
                 pad_to: int | None) -> dict[str, np.ndarray]:
        """Token arrays (int64) of ``texts``, truncated to ``max_length``, padded to ``pad_to``
        or else to the longest of the batch."""
        if self._hf is not None:
            padding = "max_length" if pad_to is not None else ("longest" if len(texts) > 1 else False)
            if padding and self._hf.pad_token is None:
                if self._hf.eos_token is None:
                    raise DataError(f"{self.where}: the tokenizer has no padding token, so lines of different "
                                    "lengths cannot share a feed: use a batch size of 1")
                logger.info("%s: the tokenizer has no padding token; padding with its end token", self.where)
                self._hf.pad_token = self._hf.eos_token
            encoded = self._hf(texts, pairs, padding=padding, truncation=True, max_length=pad_to or max_length,
                               return_attention_mask=True, return_token_type_ids=True, return_tensors="np")
            return {name: np.asarray(encoded[name], np.int64) for name in self.names if name in encoded}
        tokenizer = self._fast
        tokenizer.enable_truncation(pad_to or max_length)
        pad_id, pad_token = _pad_token(tokenizer)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=pad_to)
        encodings = tokenizer.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts)
        return {"input_ids": np.asarray([e.ids for e in encodings], np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encodings], np.int64)}


def _tokenizer_json(path: Path, where: str):
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"{where}: reading text needs transformers or tokenizers "
                        "(pip install onnxpress[hf])") from None
    if not path.is_file():
        raise DataError(f"{where}: tokenizer {path}: no such file (a tokenizer folder or tokenizer.json)")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{where}: tokenizer {path}: not a tokenizer.json ({first_line(err)})") from None
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust binding raises a bare Exception for a JSON it cannot take
        raise DataError(f"{where}: tokenizer {path}: not a tokenizer.json ({first_line(err)})") from None


def _pad_token(tokenizer) -> tuple[int, str]:
    """The padding a ``tokenizers`` tokenizer declares, else its ``[PAD]``/``<pad>`` token, else id 0."""
    if tokenizer.padding:
        return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
    for token in ("[PAD]", "<pad>", "<|padding|>"):
        index = tokenizer.token_to_id(token)
        if index is not None:
            return index, token
    return 0, "[PAD]"


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err})") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: no text (one sample per non-empty line)")
    return lines


def text_feeds(path: str | os.PathLike, tokenizer: str | os.PathLike, *, specs: Sequence[InputSpec] | None = None,
               max_length: int | None = None, batch_size: int = 1, limit: int | None = None,
               where: str | None = None) -> tuple[Callable[[], Iterator[Feed]], int]:
    """(a factory of feeds, their number): ``batch_size`` tokenized lines a feed from a UTF-8
    text file (``calibration.from_text`` wraps it).

    One sample per non-empty line; when every line holds a tab, each is a pair of texts split
    at the first tab (for sentence-pair models). With ``specs`` (the model's inputs) the feed
    holds the model's token inputs by name (``input_ids``, ``attention_mask``,
    ``token_type_ids``; ``position_ids`` as 0, 1, 2, ... when the model takes it), other
    tokenizer outputs left out. Lines are truncated to ``max_length`` (default: the model's
    fixed sequence length, else 128) and padded to the longest line of the feed, or to the fixed
    sequence length when the model has one. Arrays are int64; :func:`read_source` casts them
    to the model's integer type. The tokenizer is loaded now; lines are tokenized as the feeds
    are read.

    Raises:
        DataError: a missing or unreadable file or tokenizer, or a model input a tokenizer
            cannot give.
    """
    source = Path(path)
    where = where or str(source)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lines = _read_lines(source)
    encode = _Tokenizer(Path(tokenizer), where)
    given = set(encode.names) | {"position_ids"}
    wanted = [spec.name for spec in specs] if specs is not None else list(encode.names)
    unknown = [name for name in wanted if name not in given]
    if unknown:
        raise DataError(f"{where}: the model input(s) {unknown} are not what a tokenizer gives "
                        f"({', '.join(encode.names)}); use .npz files or a Python function (module:function) "
                        "for this model")
    fixed = _fixed_length(specs or [], encode.names)
    length = max_length or fixed or _DEFAULT_MAX_LENGTH
    pad_to = None if fixed is None else (max_length or fixed)  # a fixed length: every feed padded to it
    pairs = [line.split("\t", 1) for line in lines] if all("\t" in line for line in lines) else None
    groups = [range(i, min(i + batch_size, len(lines))) for i in range(0, len(lines), batch_size)]
    groups = groups[:limit] if limit is not None else groups

    def batches():
        for group in groups:
            texts = [pairs[i][0] if pairs else lines[i] for i in group]
            seconds = [pairs[i][1] for i in group] if pairs else None
            arrays = encode(texts, seconds, max_length=length, pad_to=pad_to)
            if "position_ids" in wanted:
                rows, columns = arrays["input_ids"].shape
                arrays["position_ids"] = np.broadcast_to(np.arange(columns, dtype=np.int64), (rows, columns)).copy()
            yield {name: arrays[name] for name in wanted if name in arrays}

    return batches, len(groups)


def _fixed_length(specs: Sequence[InputSpec], names: Sequence[str]) -> int | None:
    """The fixed sequence length (axis 1) of the model's token inputs, when one is fixed."""
    for spec in specs:
        if spec.name in (*names, "position_ids") and spec.shape is not None and len(spec.shape) == 2 \
                and isinstance(spec.shape[1], int):
            return spec.shape[1]
    return None


# ----------------------------------------------------------------------------- Python functions

_FUNCTION = re.compile(r"^(?P<source>.+?):(?P<function>[A-Za-z_]\w*)$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def parse_function(text: str) -> tuple[str, str] | None:
    """``module:function`` or ``path/file.py:function`` as ``(source, function)``, else None."""
    match = _FUNCTION.match(text)
    if match is None:
        return None
    source = match["source"]
    if source.endswith(".py") or _MODULE.match(source):
        return source, match["function"]
    return None


def function_feeds(function: Callable[..., Any], *, specs: Sequence[InputSpec] | None = None,
                   limit: int | None = None, where: str = "function") -> Callable[[], Iterator[Feed]]:
    """A factory of feeds made by a user function (``calibration.from_function`` wraps it).

    The function is called with no argument, or with the model's inputs
    (``specs``, a list of :class:`~onnxpress.feeds.InputSpec`: name, dtype, shape) when it takes
    one. It returns or yields mappings of input name to array (numpy arrays, torch tensors,
    nested lists). It is called again each time the data is read, so a generator function
    gives the same feeds every time.

    Raises:
        DataError: (when the feeds are read) the function raised, returned something that is
            not an iterable of mappings, or an item holds something that is not an array,
            naming the item's index.
    """
    name = getattr(function, "__name__", "function")
    args = _call_args(function, specs, where, name)

    def feeds():
        try:
            result = function(*args)
        except Exception as err:  # the user's code may raise anything: one line naming it
            raise DataError(f"{where}: {name}() raised {type(err).__name__}: {first_line(err)}") from err
        if isinstance(result, Mapping):
            raise DataError(f"{where}: {name}() returned one mapping; return or yield one mapping per feed")
        if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
            raise DataError(f"{where}: {name}() returned a {type(result).__name__}, not an iterable of feeds "
                            "(mappings of input name to array)")
        items = iter(result)
        index = 0
        while limit is None or index < limit:
            try:
                item = next(items)
            except StopIteration:
                return
            except Exception as err:  # raised inside the user's generator
                raise DataError(f"{where}: item {index}: {name}() raised {type(err).__name__}: "
                                f"{first_line(err)}") from err
            yield _function_feed(item, index, where)
            index += 1

    return feeds


def _call_args(function: Callable[..., Any], specs: Sequence[InputSpec] | None, where: str, name: str) -> tuple:
    """``()`` for a function without required parameters, ``(specs,)`` for one with one."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: called with none
        return ()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in positional]
    if not required:
        return ()
    if len(required) > 1:
        raise DataError(f"{where}: {name}() must take no argument or one (the model's inputs), it takes {required}")
    if specs is None:
        raise DataError(f"{where}: {name}() takes the model's inputs, and no model was given")
    return (list(specs),)


def _function_feed(item: Any, index: int, where: str) -> Feed:
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: item {index} is a {type(item).__name__}, not a mapping of input names to arrays")
    feed = {}
    for key, value in item.items():
        if not isinstance(key, str):
            raise DataError(f"{where}: item {index}: the key {key!r} is not an input name (a string)")
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: item {index}: '{key}' is not an array ({first_line(err)})") from None
        if array.dtype.kind not in "biuf":
            raise DataError(f"{where}: item {index}: '{key}' is a {type(value).__name__}, not an array of numbers")
        feed[key] = array
    return feed


def import_function(source: str, function: str, base: Path | None, where: str) -> Callable[..., Any]:
    """``function`` of a Python file (``.py``, relative to ``base``) or of an importable module
    (looked for in ``base`` first, then ``sys.path``)."""
    folder = Path(base) if base is not None else Path.cwd()
    file = folder / source if source.endswith(".py") else None
    if file is not None and not file.is_file():
        raise DataError(f"{where}: {file}: no such Python file")
    what = str(file) if file is not None else f"module '{source}'"
    search = str(file.parent if file is not None else folder)
    sys.path.insert(0, search)  # the file's siblings, or the recipe's (or working) folder, come first
    try:
        module = _load_file(file) if file is not None else importlib.import_module(source)
    except Exception as err:  # importing runs the user's code, which may raise anything
        raise DataError(f"{where}: cannot import {what}: {type(err).__name__}: {first_line(err)}") from err
    finally:
        sys.path.remove(search)
    found = getattr(module, function, None)
    if not callable(found):
        raise DataError(f"{where}: {what} has no function '{function}'")
    return found


def _load_file(file: Path) -> Any:
    """Import a ``.py`` file as a module of its own (registered, so dataclasses in it work)."""
    name = "_onnxpress_data_" + hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------- matching the model


def image_input(specs: Sequence[InputSpec], named: str | None, where: str) -> InputSpec:
    """The input images feed: ``named``, else the model's only float (or uint8) input of rank 4."""
    if named is not None:
        return next(s for s in specs if s.name == named)
    images = [s for s in specs if s.shape is not None and len(s.shape) == 4
              and (np.issubdtype(s.dtype, np.floating) or s.dtype == np.uint8)]
    if len(images) == 1:
        return images[0]
    if len(specs) == 1:
        return specs[0]
    found = "no image input (a float input of rank 4)" if not images else \
        f"several image inputs {[s.name for s in images]}"
    raise DataError(f"{where}: the model has {found}; its inputs are {[s.describe() for s in specs]}: "
                    "name the one images feed (--input-name, input = \"name\" in a recipe)")


def image_hint(image: ImageSpec):
    """What to change when images do not fit the model input: layout, color, size or batch."""
    layout = image.layout or "NCHW"

    def hint(spec: InputSpec, array: np.ndarray) -> str | None:
        if spec.shape is None or len(spec.shape) != 4 or array.ndim != 4:
            return None
        wanted = image_defaults(spec).get("layout")
        if wanted is not None and wanted != layout:
            return f"pass --layout {wanted} (layout = \"{wanted}\" in a recipe)"
        axes = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
        channels = spec.shape[axes[0]]
        if isinstance(channels, int) and channels != array.shape[axes[0]] and channels in (1, 3):
            color = "L" if channels == 1 else "RGB"
            return f"pass --color {color} (color = \"{color}\" in a recipe)"
        height, width = spec.shape[axes[1]], spec.shape[axes[2]]
        if isinstance(height, int) and isinstance(width, int) and \
                (height, width) != (array.shape[axes[1]], array.shape[axes[2]]):
            return f"pass --image-size {height}x{width} (size = [{height}, {width}] in a recipe)"
        return batch_hint(spec, array)

    return hint


def text_hint(spec: InputSpec, array: np.ndarray) -> str | None:
    if spec.shape is not None and len(spec.shape) == 2 and array.ndim == 2:
        length = spec.shape[1]
        if isinstance(length, int) and length != array.shape[1]:
            return f"pass --max-length {length} (max_length = {length} in a recipe)"
    return batch_hint(spec, array)


def batch_hint(spec: InputSpec, array: np.ndarray) -> str | None:
    if spec.shape and array.ndim == len(spec.shape) and isinstance(spec.shape[0], int) \
            and spec.shape[0] != array.shape[0]:
        return f"pass --batch-size {spec.shape[0]} (batch_size = {spec.shape[0]} in a recipe)"
    return None
