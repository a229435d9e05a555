"""The command line's data options: how ``--calibration`` and ``--data`` are read (``run``,
``validate``, ``optimize``, ``sweep``), the argparse types of counts and sizes, and ``--labels``.

One place builds the ``DataSource`` of each option from the data options given, so the four
commands read data alike and an option that fits no source is one error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

def count(text: str, *, least: int, what: str) -> int:
    """A whole number ``>= least`` from the command line (``what``: the message's start)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} a whole number, got '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{what} at least {least}, got {value}"
                                         + (" (0: one per core)" if least == 0 else ""))
    return value


def workers(text: str) -> int:
    """argparse type of ``--workers``: a count >= 0 (0: one per core)."""
    return count(text, least=0, what="--workers must be")


# The data options (see add_data_options): option -> (flag, the kinds of source it fits, what they are).
_IMAGES, _TEXT = ({"images"}, "a folder of images"), ({"text"}, "a text file")
_DATA_OPTIONS = {
    "image_size": ("--image-size", *_IMAGES), "crop": ("--crop", *_IMAGES), "mean": ("--mean", *_IMAGES),
    "std": ("--std", *_IMAGES), "scale": ("--scale", *_IMAGES), "layout": ("--layout", *_IMAGES),
    "color": ("--color", *_IMAGES), "preprocessor": ("--preprocessor", *_IMAGES),
    "tokenizer": ("--tokenizer", *_TEXT), "max_length": ("--max-length", *_TEXT),
    "input_name": ("--input-name", {"images", "npy"}, "a folder of images or a .npy file"),
    "batch_size": ("--batch-size", {"npz", "npy", "images", "text", None}, "arrays, images or text")}


def positive(text: str) -> int:
    """argparse type of a count: a whole number >= 1."""
    return count(text, least=1, what="expected")


def side_or_size(text: str) -> int | tuple[int, int]:
    """argparse type of ``--image-size``: ``H`` (the shorter side) or ``HxW``."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels (224, 224x224), got '{text}'")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def crop_size(text: str) -> tuple[int, int]:
    """argparse type of ``--crop``: ``HxW``, or ``S`` for a square."""
    size = side_or_size(text)
    return (size, size) if isinstance(size, int) else size


def floats(text: str) -> tuple[float, ...]:
    """argparse type of ``--mean``/``--std``: one number, or one per channel separated by commas."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (0.485,0.456,0.406), "
                                         f"got '{text}'") from None


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how ``--calibration`` and ``--data`` are read (run, validate, optimize, sweep)."""
    group = parser.add_argument_group(
        "data without code", "--calibration and --data take a .npz file (samples on axis 0), a .npy file, a folder "
        "of .npz files or of images, a text file (one sample a line, with --tokenizer), or MODULE:FUNCTION / "
        "FILE.py:FUNCTION returning or yielding feeds; feeds are matched to the model's inputs by name, dtype and "
        "shape. These options apply to whichever of the two they fit")
    group.add_argument("--batch-size", type=positive, metavar="N",
                       help="samples (rows, images, lines) per feed (default 1)")
    group.add_argument("--limit", type=positive, metavar="N", help="read at most N feeds")
    group.add_argument("--input-name", metavar="NAME", help="the input that images (or a .npy array) feed "
                       "(default: the model's only float input of rank 4, or its only input)")
    group.add_argument("--image-size", type=side_or_size, metavar="H[xW]", help="resize images to HxW, or their "
                       "shorter side to H (default: the model's fixed height and width)")
    group.add_argument("--crop", type=crop_size, metavar="H[xW]", help="centre crop after resizing")
    group.add_argument("--mean", type=floats, metavar="A[,B,C]", help="subtracted per channel after --scale "
                       "(default 0)")
    group.add_argument("--std", type=floats, metavar="A[,B,C]", help="divided by per channel after --mean (default 1)")
    group.add_argument("--scale", type=float, metavar="S", help="pixel values (0..255) times S first (default 1/255)")
    group.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: where the model's 1- or 3-channel axis is")
    group.add_argument("--color", choices=("RGB", "BGR", "L"), help="default: L for a 1-channel input, else RGB")
    group.add_argument("--preprocessor", metavar="PATH", help="a Hugging Face folder or its preprocessor_config.json "
                       "(size, crop, rescale, mean, std; default: the model's folder's, when it has one)")
    group.add_argument("--tokenizer", metavar="PATH", help="a local tokenizer folder or tokenizer.json for a text "
                       "file (default: the model's folder's, when it has one); nothing is downloaded")
    group.add_argument("--max-length", type=positive, metavar="N", help="tokens per line at most (default: the "
                       "model's fixed sequence length, else 128)")


def data_sources(args) -> dict:
    """``--calibration`` and ``--data`` (those given) as ``DataSource``s, each with the data options
    that fit its kind. An option that fits neither is an error, so none is silently ignored."""
    from onnxpress.calibration import DataSource, ImageSpec, source_kind
    from onnxpress.errors import DataError

    if getattr(args, "data_sources", None) is not None:
        return args.data_sources

    paths = {key: getattr(args, key, None) for key in ("calibration", "data")}
    paths = {key: path for key, path in paths.items() if path}
    kinds = {key: source_kind(path, text=args.tokenizer is not None) for key, path in paths.items()}
    for key, (flag, fits, what) in _DATA_OPTIONS.items():
        if getattr(args, key) is not None and not any(kind in fits for kind in kinds.values()):
            found = ", ".join(f"--{k} {paths[k]} is {kinds[k] or 'npz'} data" for k in paths) or \
                "no --calibration or --data given"
            raise DataError(f"{flag} applies to {what} as --calibration or --data ({found}); a recipe's data take "
                            "their settings in its table")
    sources = {}
    for key, path in paths.items():
        kind = kinds[key]
        options = {"batch_size": args.batch_size or 1, "limit": args.limit}
        if kind in ("images", "npy"):
            options["input"] = args.input_name
        if kind == "images":
            image = ImageSpec(size=args.image_size, crop=args.crop, color=args.color, scale=args.scale,
                              mean=args.mean, std=args.std, layout=args.layout) if _any_image_option(args) else None
            options.update(image=image, preprocessor=args.preprocessor or _beside_model(args, "preprocessor_config.json"))
        elif kind == "text":
            tokenizer = args.tokenizer or _beside_model(args, "tokenizer.json", "tokenizer_config.json")
            options.update(tokenizer=tokenizer and Path(tokenizer), max_length=args.max_length)
        elif kind == "python":
            options.pop("batch_size")
        try:
            sources[key] = DataSource.from_path(path, **options)
        except ValueError as err:
            raise DataError(f"--{key} {path}: {err}") from None
    args.data_sources = sources
    return sources


def _any_image_option(args) -> bool:
    return any(getattr(args, key) is not None for key, (_, fits, _) in _DATA_OPTIONS.items()
               if fits == _IMAGES[0] and key != "preprocessor")


def _beside_model(args, *names: str) -> str | None:
    """The file (a preprocessor config) or folder (a tokenizer) found beside the model: in its
    folder, or the folder above an ``onnx/`` one (how Hugging Face exports lay models out)."""
    model = getattr(args, "model", None)
    if not model:
        return None
    folder = Path(model).parent
    for place in (folder, folder.parent) if folder.name == "onnx" else (folder,):
        for name in names:
            if (place / name).is_file():
                found = place / name if name == "preprocessor_config.json" else place
                print(f"data: {'preprocessing' if name == 'preprocessor_config.json' else 'tokenizer'} from {found}", file=sys.stderr, flush=True)
                return str(found)
    return None


def read_data(args, which: str, model):
    """Feeds for ``model`` from ``--calibration`` or ``--data`` (``which``), read with the data
    options, matched to its inputs (arrays that are not inputs, such as labels, left out)."""
    if not getattr(args, which, None):
        return None
    from onnxpress.calibration import read_source

    return read_source(data_sources(args)[which], model=model, name=which)


def labels_metric(path: str | None, key: str):
    """Top-1 accuracy against the integer array ``key`` of the --data file, as a metric."""
    from onnxpress.calibration import read_array
    from onnxpress.errors import DataError
    from onnxpress.metrics import accuracy

    if path is None or Path(path).is_dir():
        raise DataError("--labels needs --data to be one .npz file holding the labels")
    labels = read_array(path, key)

    def metric(outputs):
        try:
            return accuracy(outputs, labels)
        except ValueError as err:
            raise DataError(f"--labels {key}: {err}") from None

    return metric
