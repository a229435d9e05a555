"""The ``onnxpress`` command line.

Errors a user can cause print one line on stderr and exit with code 2; a failed validation
verdict exits with code 1. ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from onnxpress.errors import OnnxpressError

EXIT_FAILED_VERDICT = 1
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"onnxpress: error: {message}\n")


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress_for(args):
    """The progress display of a command's long work on stderr, or None under ``--quiet``: rich
    bars on a terminal, plain lines when piped (``onnxpress._console``). One callable takes a
    pipeline's ``ProgressEvent``s and the lines ``optimize``, ``sweep`` and ``validate`` tell;
    ``main`` takes its bars away when the command ends."""
    if getattr(args, "quiet", False):
        return None
    if getattr(args, "progress_console", None) is None:
        from onnxpress._console import Console

        args.progress_console = Console()
    return args.progress_console


def _cmd_inspect(args) -> int:
    from onnxpress.io import load
    from onnxpress.summary import inspect

    summary = inspect(load(args.model), top=args.top)  # admission only: inspect needs no runtime
    print(summary.to_json() if args.json else summary.to_text())
    return 0


def _cmd_passes(args) -> int:
    from onnxpress import registry

    for name, cls in registry.available().items():
        print(f"{name:<12} {registry.summary(cls)}")
        if args.verbose_options:
            for option in registry.options(cls).values():
                print(f"    {option.name} ({option.type_name}) = {option.default!r}")
    return 0


def _cmd_targets(args) -> int:
    from onnxpress import targets

    for name, path in targets.builtin().items():
        profile = targets.load(path)
        print(f"{name:<8} {', '.join(profile.providers):<24} {profile.description}")
    return 0


def _cmd_sweep(args) -> int:
    from onnxpress.cache import default_folder
    from onnxpress.sweep import sweep

    cache_folder = None if args.no_cache else str(args.cache_dir or default_folder())
    result = sweep(args.models, args.recipes, target=args.target, data=_data_sources(args).get("data"),
                   workers=args.workers,
                   address=args.ray_address, out=args.out, cache_folder=cache_folder,
                   progress=_progress_for(args))
    print(result.to_json() if args.json else result.table())
    if result.out_folder is not None:
        _err(f"output models: {result.out_folder}")
    # A floor failure is a result (a row); a cell whose pipeline could not run is not.
    return EXIT_FAILED_VERDICT if any(row["status"].startswith("error") for row in result.rows) else 0


def _count(text: str, *, least: int, what: str) -> int:
    """A whole number ``>= least`` from the command line (``what``: the message's start)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} a whole number, got '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{what} at least {least}, got {value}"
                                         + (" (0: one per core)" if least == 0 else ""))
    return value


def _workers(text: str) -> int:
    """argparse type of ``--workers``: a count >= 0 (0: one per core)."""
    return _count(text, least=0, what="--workers must be")


# The data options (see _add_data_options): option -> (flag, the kinds of source it fits, what they are).
_IMAGES, _TEXT = ({"images"}, "a folder of images"), ({"text"}, "a text file")
_DATA_OPTIONS = {
    "image_size": ("--image-size", *_IMAGES), "crop": ("--crop", *_IMAGES), "mean": ("--mean", *_IMAGES),
    "std": ("--std", *_IMAGES), "scale": ("--scale", *_IMAGES), "layout": ("--layout", *_IMAGES),
    "color": ("--color", *_IMAGES), "preprocessor": ("--preprocessor", *_IMAGES),
    "tokenizer": ("--tokenizer", *_TEXT), "max_length": ("--max-length", *_TEXT),
    "input_name": ("--input-name", {"images", "npy"}, "a folder of images or a .npy file"),
    "batch_size": ("--batch-size", {"npz", "npy", "images", "text", None}, "arrays, images or text")}


def _positive(text: str) -> int:
    """argparse type of a count: a whole number >= 1."""
    return _count(text, least=1, what="expected")


def _side_or_size(text: str) -> int | tuple[int, int]:
    """argparse type of ``--image-size``: ``H`` (the shorter side) or ``HxW``."""
    parts = text.lower().split("x")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H or HxW in pixels (224, 224x224), got '{text}'")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _crop_size(text: str) -> tuple[int, int]:
    """argparse type of ``--crop``: ``HxW``, or ``S`` for a square."""
    size = _side_or_size(text)
    return (size, size) if isinstance(size, int) else size


def _floats(text: str) -> tuple[float, ...]:
    """argparse type of ``--mean``/``--std``: one number, or one per channel separated by commas."""
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (0.485,0.456,0.406), "
                                         f"got '{text}'") from None


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how ``--calibration`` and ``--data`` are read (run, validate, optimize, sweep)."""
    group = parser.add_argument_group(
        "data without code", "--calibration and --data take a .npz file (samples on axis 0), a .npy file, a folder "
        "of .npz files or of images, a text file (one sample a line, with --tokenizer), or MODULE:FUNCTION / "
        "FILE.py:FUNCTION returning or yielding feeds; feeds are matched to the model's inputs by name, dtype and "
        "shape. These options apply to whichever of the two they fit")
    group.add_argument("--batch-size", type=_positive, metavar="N",
                       help="samples (rows, images, lines) per feed (default 1)")
    group.add_argument("--limit", type=_positive, metavar="N", help="read at most N feeds")
    group.add_argument("--input-name", metavar="NAME", help="the input that images (or a .npy array) feed "
                       "(default: the model's only float input of rank 4, or its only input)")
    group.add_argument("--image-size", type=_side_or_size, metavar="H[xW]", help="resize images to HxW, or their "
                       "shorter side to H (default: the model's fixed height and width)")
    group.add_argument("--crop", type=_crop_size, metavar="H[xW]", help="centre crop after resizing")
    group.add_argument("--mean", type=_floats, metavar="A[,B,C]", help="subtracted per channel after --scale "
                       "(default 0)")
    group.add_argument("--std", type=_floats, metavar="A[,B,C]", help="divided by per channel after --mean (default 1)")
    group.add_argument("--scale", type=float, metavar="S", help="pixel values (0..255) times S first (default 1/255)")
    group.add_argument("--layout", choices=("NCHW", "NHWC"), help="default: where the model's 1- or 3-channel axis is")
    group.add_argument("--color", choices=("RGB", "BGR", "L"), help="default: L for a 1-channel input, else RGB")
    group.add_argument("--preprocessor", metavar="PATH", help="a Hugging Face folder or its preprocessor_config.json "
                       "(size, crop, rescale, mean, std; default: the model's folder's, when it has one)")
    group.add_argument("--tokenizer", metavar="PATH", help="a local tokenizer folder or tokenizer.json for a text "
                       "file (default: the model's folder's, when it has one); nothing is downloaded")
    group.add_argument("--max-length", type=_positive, metavar="N", help="tokens per line at most (default: the "
                       "model's fixed sequence length, else 128)")


def _data_sources(args) -> dict:
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
                _err(f"data: {'preprocessing' if name == 'preprocessor_config.json' else 'tokenizer'} from {found}")
                return str(found)
    return None


def _data(args, which: str, model):
    """Feeds for ``model`` from ``--calibration`` or ``--data`` (``which``), read with the data
    options, matched to its inputs (arrays that are not inputs, such as labels, left out)."""
    if not getattr(args, which, None):
        return None
    from onnxpress.calibration import read_source

    return read_source(_data_sources(args)[which], model=model, name=which)


def _labels(path: str | None, key: str):
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


def _print_report(report, as_json: bool) -> None:
    print(report.to_json() if as_json else report.to_text())


def _write_report(report, folder: str | None) -> None:
    if folder:
        paths = report.write(folder)
        _err(f"report: {paths['html']} (also report.json, report.md)")
    if report.bundle:
        _err(f"edge bundle: {report.bundle['folder']} (model.ort, required_operators.config)")


def _cmd_validate(args) -> int:
    from onnxpress.io import load
    from onnxpress.golden import save_golden
    from onnxpress.validate import validate

    _data_sources(args)  # the data options checked before the model loads
    candidate = load(args.model)
    shapes = _input_shapes(args.input_shape)
    if args.save_golden:
        save_golden(candidate, _data(args, "data", candidate) if args.data else _generated(candidate, shapes),
                    args.save_golden)
        print(f"saved golden inputs and outputs of {args.model} in {args.save_golden}")
        return 0
    reference = load(args.reference) if args.reference else None
    metric = _labels(args.data, args.labels) if args.labels else None
    report = validate(candidate, reference, target=args.target, data=_data(args, "data", candidate), golden=args.golden,
                      allow_missing_provider=args.allow_missing_provider, layerwise=args.layerwise,
                      bundle=args.bundle, metric=metric, metric_name="accuracy", input_shapes=shapes,
                      progress=_progress_for(args))
    _print_report(report, args.json)
    _write_report(report, args.report)
    return 0 if report.passed else EXIT_FAILED_VERDICT


def _cmd_replay(args) -> int:
    from onnxpress.lockfile import read_lock, replay

    output = Path(args.output) if args.output else None
    if output is not None:
        source = read_lock(args.lock).input_path
        if source is not None and output.exists() and output.resolve() == source.resolve():
            raise OnnxpressError(f"{output}: the output would overwrite the input model; choose another path")
    result = replay(args.lock, output=output, progress=_progress_for(args))
    for line in result.lines():
        print(line)
    if result.output is not None:
        print(f"saved {result.output}")
    return 0 if result.reproduced else EXIT_FAILED_VERDICT


def _generated(model, shapes):
    from onnxpress.feeds import random_feeds

    return random_feeds(model, 8, seed=1, input_shapes=shapes)


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type of ``--input-shape NAME=1x3x320x320``: a bad one is a usage error (exit 2)."""
    from onnxpress.feeds import parse_input_shape

    try:
        return parse_input_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _input_shapes(given: list | None, base: dict | None = None) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` options as ``{name: shape}``, over ``base`` (a recipe's)."""
    from onnxpress.errors import DataError

    shapes, seen = dict(base or {}), set()
    for name, shape in given or []:
        if name in seen:
            raise DataError(f"--input-shape: '{name}' is given twice")
        seen.add(name)
        shapes[name] = shape
    return shapes


def _cmd_run(args) -> int:
    from onnxpress.errors import AccuracyFloorError
    from onnxpress.io import load, save
    from onnxpress.pipeline import Pipeline
    from onnxpress.recipe import default_recipe, load_recipe

    source, output = Path(args.model), Path(args.output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise OnnxpressError(f"{output}: the output would overwrite the input model; choose another path")
    if args.recipe is None and args.target is None:
        raise OnnxpressError("run: give --recipe, or --target to run that target's default recipe")
    _data_sources(args)  # the data options checked before the model loads
    metric = _labels(args.data, args.labels) if args.labels else None  # and the labels
    recipe = load_recipe(args.recipe) if args.recipe is not None else default_recipe(args.target)
    if args.recipe is None:
        _err(f"recipe: {recipe.description}: {' -> '.join(recipe.pass_names)}")
    model = load(str(source))
    pipeline = Pipeline.from_recipe(recipe)
    if args.no_check:
        pipeline.check = False
    shapes = _input_shapes(args.input_shape, recipe.pipeline_options.get("input_shapes"))
    pipeline.input_shapes = shapes  # for the golden inputs it generates
    calibration = _data(args, "calibration", model) if args.calibration else pipeline.data(model, "calibration")
    target = args.target or (recipe.target if args.validate else None)
    verdict_data, judged_by = None, None
    if target is not None:
        verdict_data, calibration, judged_by = _verdict_data(args, pipeline, model, calibration)
    try:
        result = pipeline.run(model, calibration, progress=_progress_for(args))
    except AccuracyFloorError as err:
        if not args.keep_failed or err.result is None:
            raise
        print(err.result.table())
        save(err.result.model, output, external_data=True if args.external_data else None)
        _err(f"onnxpress: {err}")
        _err(f"saved {output} anyway (--keep-failed): it is below the accuracy floor")
        _write_run_lock(args, recipe, pipeline, model, calibration, err.result.model,
                        note=f"kept below the accuracy floor (--keep-failed): {err}")
        return EXIT_FAILED_VERDICT
    print(result.table())
    save(result.model, output, external_data=True if args.external_data else None)
    print(f"saved {output}")
    _write_run_lock(args, recipe, pipeline, model, calibration, result.model)
    if target is None:
        return 0
    from onnxpress.validate import validate

    bundle = args.bundle or output.with_name(output.stem + "_bundle")
    report = validate(result.model, model, target=target, data=verdict_data, layerwise=args.layerwise,
                      allow_missing_provider=args.allow_missing_provider, bundle=bundle, data_source=judged_by,
                      input_shapes=shapes, progress=_progress_for(args), metric=metric, metric_name="accuracy")
    report.pipeline = result.to_dict()
    report.notes.extend(result.notes())
    _print_report(report, False)
    _write_report(report, args.report)
    return 0 if report.passed else EXIT_FAILED_VERDICT


def _write_run_lock(args, recipe, pipeline, model, calibration, result, *, note: str = "") -> None:
    """Write OUT.lock.toml for ``run``: ``calibration`` is what ``pipeline.run`` received (after
    any held-out split), and its source the ``--calibration`` path or the recipe's."""
    import shlex

    from onnxpress.errors import RecipeError
    from onnxpress.lockfile import lock_run

    recipe_base = recipe.path.parent if recipe.path is not None else None
    if args.calibration:
        source, base = _data_sources(args)["calibration"], None
    else:
        source, base = recipe.calibration, recipe_base
    evaluation = recipe.evaluation
    if evaluation is not None and recipe_base is not None and not evaluation.source.is_absolute():
        evaluation = dataclasses.replace(evaluation, source=recipe_base / evaluation.source)
    try:
        path = lock_run(Path(args.output), pipeline, model=model, input_path=Path(args.model), result=result,
                        calibration=calibration, calibration_source=source, evaluation_source=evaluation, base=base,
                        command=shlex.join(["onnxpress", *getattr(args, "argv", [])]),
                        description=recipe.description, note=note, below_floor=bool(note))
    except RecipeError as err:  # a pass whose options a recipe cannot hold: the model is saved all the same
        _err(f"onnxpress: warning: no lockfile written: {err}")
        return
    print(f"lockfile: {path}")


def _verdict_data(args, pipeline, model, calibration):
    """(verdict data, calibration left for the passes, what judged the verdict).

    The verdict comes from data the passes never saw: ``--data``, the recipe's
    ``[evaluation]``, or else the last fifth of the calibration source, which the passes
    then do not receive.
    """
    from onnxpress.calibration import holdout

    if args.data:
        return _data(args, "data", model), calibration, f"evaluation data {Path(args.data).name}"
    evaluation = pipeline.data(model, "evaluation")
    if evaluation is not None:
        return evaluation, calibration, f"the recipe's evaluation data, {evaluation.name}"
    if calibration is None:
        return None, None, None
    kept, held_out = holdout(calibration)
    return (held_out, kept, f"held-out split of the calibration data: {len(held_out)} of {len(calibration)} "
                            "samples the passes never received")


def _cmd_demo(args) -> int:
    from onnxpress.demo import run_demo, the_win

    def say(line: str) -> None:
        print(line, flush=True)

    _, report = run_demo(args.out, model_name=args.model, progress=_progress_for(args), say=say)
    _print_report(report, False)
    print(the_win(report))
    _write_report(report, args.out)
    return 0 if report.passed else EXIT_FAILED_VERDICT


def _cmd_optimize(args) -> int:
    from onnxpress.cache import Cache
    from onnxpress.io import load, save
    from onnxpress.optimize import optimize
    from onnxpress.validate import validate

    source, output = Path(args.model), Path(args.output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise OnnxpressError(f"{output}: the output would overwrite the input model; choose another path")
    if args.max_drop is not None and args.labels is None:
        raise OnnxpressError("optimize: --max-drop needs --labels KEY (the labels in the --data file)")
    _data_sources(args)  # the data options checked before the model loads
    model = load(str(source))
    calibration = _data(args, "calibration", model)
    data = _data(args, "data", model)
    metric = _labels(args.data, args.labels) if args.labels else None
    cache = None if args.no_cache else Cache(args.cache_dir, max_bytes=int(args.cache_size_gb * 2**30))
    result = optimize(model, target=args.target, calibration=calibration, data=data, min_cosine=args.min_cosine,
                      max_drop=args.max_drop, metric=metric, objective=args.objective,
                      time_budget=args.time_budget, cache=cache, workers=args.workers, address=args.ray_address,
                      progress=_progress_for(args))
    print(result.table())
    if result.model is None:
        _err("onnxpress: no candidate meets the budget: nothing saved")
        return EXIT_FAILED_VERDICT
    save(result.model, output, external_data=True if args.external_data else None)
    recipe_path = _write_optimize_recipe(args, model, result)
    print(f"saved {output} and the recipe that rebuilds it: {recipe_path}")
    report = validate(result.model, model, target=args.target, data=data, metric=metric, metric_name="accuracy",
                      allow_missing_provider=args.allow_missing_provider, progress=_progress_for(args))
    report.search = result.to_dict()
    _print_report(report, False)
    _write_report(report, args.report)
    return 0 if report.passed else EXIT_FAILED_VERDICT


def _write_optimize_recipe(args, model, result) -> Path:
    """Write OUT.recipe.toml (the chosen passes, the calibration source the passes read) and
    OUT.lock.toml for the model ``optimize`` chose."""
    import shlex

    from onnxpress.lockfile import lock_run
    from onnxpress.pipeline import Pipeline
    from onnxpress.recipe import parse_recipe, recipe_text

    output = Path(args.output)
    pipeline = Pipeline(parse_recipe(result.recipe).passes, target=args.target,
                        accuracy_floor=result.budget["min_cosine"] or 0.0)
    source = _data_sources(args)["calibration"]
    source = dataclasses.replace(source, limit=len(result.calibration))  # without the held-out part
    path = output.with_name(output.stem + ".recipe.toml")
    path.write_text(recipe_text(pipeline.passes, target=args.target, description=parse_recipe(result.recipe).description,
                                pipeline_options={"accuracy_floor": pipeline.accuracy_floor}, calibration=source,
                                folder=path.parent), encoding="utf-8")
    lock = lock_run(output, pipeline, model=model, input_path=Path(args.model), result=result.model,
                    calibration=result.calibration, calibration_source=source,
                    command=shlex.join(["onnxpress", *getattr(args, "argv", [])]),
                    description=parse_recipe(result.recipe).description)
    print(f"lockfile: {lock}")
    return path


def _export_input(text: str) -> tuple[str, tuple[int, ...], str]:
    """argparse type of ``--input NAME=2x3:float32``: a bad one is a usage error (exit 2)."""
    from onnxpress.export import parse_input_spec

    try:
        return parse_input_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_export(args) -> int:
    from onnxpress.errors import ModelError
    from onnxpress.io import save

    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise ModelError(f"{output}: give a file name in an existing folder for the model")
    if (args.hf is None) == (args.module is None):
        raise OnnxpressError("export: give MODULE:FACTORY or --hf FOLDER (one of them)")
    if args.hf is not None:
        if args.input or args.example_inputs:
            raise OnnxpressError("export: --input and --example-inputs are for MODULE:FACTORY; --hf makes its "
                                 "own inputs")
        model = _export_hf(args)
    else:
        if args.task or args.with_past:
            raise OnnxpressError("export: --task and --with-past are for --hf FOLDER")
        model = _export_module(args)
    save(model, output)
    _print_export(model, output, args.module)
    return 0


def _export_hf(args):
    from onnxpress.export_hf import export_hf

    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # export_hf says so in one line
        hf_logging = None
    if hf_logging is not None:
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise on a one-shot command
    return export_hf(args.hf, task=args.task, with_past=args.with_past, opset=args.opset, dynamic=args.dynamic,
                     exporter=args.exporter)


def _export_module(args):
    import inspect

    import torch

    from onnxpress.errors import DataError
    from onnxpress.export import example_tensor, export, load_factory

    module, example = load_factory(args.module)
    names = None
    if args.input:
        generator = torch.Generator().manual_seed(0)
        names = [name for name, _, _ in args.input]
        if len(set(names)) != len(names):
            raise DataError(f"--input: '{next(n for n in names if names.count(n) > 1)}' is given twice")
        example = tuple(example_tensor(shape, dtype, generator) for _, shape, dtype in args.input)
    elif args.example_inputs:
        names, example = _example_file(args.example_inputs)
    elif example is None:
        raise OnnxpressError(f"export: {args.module}() returned no example inputs; give --input NAME=SHAPE:DTYPE "
                             "or --example-inputs FILE.npz")
    else:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = params[:len(example)] if len(params) >= len(example) else None
    return export(module, example, dynamic_batch=args.dynamic, opset=args.opset, input_names=names,
                  exporter=args.exporter)


def _example_file(path: str) -> tuple[list[str], tuple]:
    """The arrays of an ``.npz`` file as tensors, named and ordered as stored."""
    import zipfile

    import numpy as np
    import torch

    from onnxpress.errors import DataError

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz file of arrays named by input")
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read the example inputs: {err}") from err
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    return list(arrays), tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values())


def _print_export(model, output: Path, source: str | None) -> None:
    from onnxpress.export import export_info
    from onnxpress.export_hf import export_hf_info

    info, hf = export_info(model) or {}, export_hf_info(model)
    if source is not None:
        print(f"model: {source}()")
    if hf is not None:
        print(f"model: {hf['architecture']} from {hf['source']}, task {hf['task']}"
              + (" (encoder only)" if hf["encoder_only"] else ""))
        if hf["cache"]:
            print(f"cache: {hf['cache']}")
    print(f"exporter: {info.get('exporter')}" + (f" (after {info['fallback_reason']})" if info.get("fallback_reason")
                                                  else ""))
    batches = ", ".join(str(b) for b in info.get("batch_sizes_checked", []))
    print(f"checked against torch on batch sizes {batches}: max |onnx - torch| = {info.get('max_abs_error', 0):.3g}")
    for label, values in (("inputs", model.graph.inputs), ("outputs", model.graph.outputs)):
        print(f"{label}:")
        for value in values:
            dims = "?" if value.shape is None else " x ".join(str(d) for d in value.shape)
            dtype = value.dtype.numpy().name if value.dtype is not None else "?"
            print(f"  {value.name}: {dtype}[{dims}]")
    print(f"saved {output}")


_INPUT_SHAPE_HELP = ("shape of a generated input, e.g. images=1x3x640x640 (repeatable; default: unknown sizes "
                     "are found by trial runs)")


_QUIET_HELP = "no progress on stderr (errors and results still print)"
# Commands that run long work: they take -q/--quiet after their name too.
_LONG_COMMANDS = ("run", "validate", "optimize", "sweep", "demo", "replay", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="onnxpress", description="Make an ONNX model smaller and faster, and prove "
                     "it still works on its target.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")
    parser.add_argument("-q", "--quiet", action="store_true", help=_QUIET_HELP)
    parser.add_argument("--time-limit", type=float, default=600.0, metavar="SECONDS",
                        help="wall-clock limit of each native step that may hang on a bad graph (default 600)")
    parser.add_argument("--memory-limit-gb", type=float, default=None, metavar="GB",
                        help="address-space limit of those steps (default: 3/4 of physical memory)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a recipe's passes on a model and save the result")
    run.add_argument("model")
    run.add_argument("--recipe", help="recipe TOML file (default: the --target's own recipe: simplify, then "
                     "int8 on cpu/edge, fp16 on cuda, fixed-point int8 on mcu)")
    run.add_argument("-o", "--output", required=True, help="output .onnx path")
    run.add_argument("--calibration", help="data the passes calibrate on (overrides the recipe's): .npz, .npy, a "
                     "folder of .npz or images, a text file, or MODULE:FUNCTION (see 'data without code')")
    run.add_argument("--target", help="validate the result on this target (cpu, cuda, edge, mcu or a .toml)")
    run.add_argument("--validate", action="store_true", help="validate on the recipe's target")
    run.add_argument("--data", help="data to judge the verdict on, of the same kinds (default: the recipe's "
                     "[evaluation], else a held-out fifth of the calibration data the passes never see)")
    run.add_argument("--labels", metavar="KEY", help="integer class labels in the --data file: judge top-1 "
                     "accuracy and its drop (the profile's metric_drop)")
    run.add_argument("--no-check", action="store_true", help="skip the checker/session check after each pass")
    run.add_argument("--keep-failed", action="store_true", help="save the model even when a pass breaks the "
                     "accuracy floor (exit code 1); by default nothing is written")
    run.add_argument("--external-data", action="store_true", help="save tensors to an external data file")
    run.add_argument("--allow-missing-provider", action="store_true",
                     help="report a missing execution provider as a failed verdict, not an error")
    run.add_argument("--report", help="folder for report.html, report.md and report.json")
    run.add_argument("--layerwise", action="store_true", help="compare every shared intermediate tensor")
    run.add_argument("--bundle", help="folder for the edge bundle (default: OUTPUT_bundle/ beside the output)")
    run.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=DIMS",
                     help=_INPUT_SHAPE_HELP + "; over the recipe's [pipeline] input_shapes")
    _add_data_options(run)
    run.set_defaults(func=_cmd_run)

    validate = commands.add_parser("validate", help="check a model on a target against a reference")
    validate.add_argument("model")
    validate.add_argument("--reference", help="the model the candidate must agree with")
    validate.add_argument("--target", default="cpu")
    validate.add_argument("--data", help=".npz, .npy, a folder of .npz or images, a text file or MODULE:FUNCTION "
                          "(see 'data without code'; default: generated inputs); arrays "
                          "that are not model inputs are left out")
    validate.add_argument("--labels", metavar="KEY", help="integer class labels in the --data file: judge "
                          "top-1 accuracy and its drop (the profile's metric_drop)")
    validate.add_argument("--json", action="store_true")
    validate.add_argument("--allow-missing-provider", action="store_true")
    validate.add_argument("--golden", help="compare with the inputs and outputs stored by --save-golden")
    validate.add_argument("--save-golden", metavar="FILE", help="store MODEL's outputs on --data (or generated "
                          "inputs) in FILE and exit")
    validate.add_argument("--layerwise", action="store_true", help="compare every shared intermediate tensor")
    validate.add_argument("--report", help="folder for report.html, report.md and report.json")
    validate.add_argument("--bundle", help="folder for the edge bundle (targets that ask for the ORT format)")
    validate.add_argument("--input-shape", action="append", type=_input_shape, metavar="NAME=DIMS",
                          help=_INPUT_SHAPE_HELP)
    _add_data_options(validate)
    validate.set_defaults(func=_cmd_validate)

    replay = commands.add_parser("replay", help="make a run's output again from its lockfile and check its digest")
    replay.add_argument("lock", help="the OUT.lock.toml that run or optimize wrote beside OUT")
    replay.add_argument("-o", "--output", help="write the reproduced model here (default: nothing is written)")
    replay.set_defaults(func=_cmd_replay)

    inspect = commands.add_parser("inspect", help="opsets, inputs, outputs, ops and parameters of a model")
    inspect.add_argument("model")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--top", type=int, default=10, help="largest initializers to list")
    inspect.set_defaults(func=_cmd_inspect)

    passes = commands.add_parser("passes", help="list the registered passes")
    passes.add_argument("--options", dest="verbose_options", action="store_true", help="list their options")
    passes.set_defaults(func=_cmd_passes)

    targets = commands.add_parser("targets", help="list the built-in target profiles")
    targets.set_defaults(func=_cmd_targets)

    sweep = commands.add_parser("sweep", help="run every recipe on every model, as parallel trials, and "
                                "print one table (exit 1 when a cell could not run)")
    sweep.add_argument("models", nargs="+", metavar="MODEL")
    sweep.add_argument("--recipes", nargs="+", required=True, metavar="RECIPE", help="recipe TOML files")
    sweep.add_argument("--target", default="cpu", help="target profile latency is measured on (default cpu); "
                       "each recipe's passes check on the recipe's own target")
    sweep.add_argument("--data", help="calibration data for every cell, over the recipes' [calibration], in any "
                       "form --calibration takes (read for each model and matched to its inputs)")
    sweep.add_argument("--out", help="folder for the output models, MODEL__RECIPE.onnx (default: not kept)")
    sweep.add_argument("--workers", type=_workers, default=1, help="cells at once, as tasks on a local Ray "
                       "(needs onnxpress[ray]); 1 (default): one after another in-process; 0: one per core. "
                       "Latency is measured after every cell ended, one model at a time")
    sweep.add_argument("--ray-address", help="run the cells on this Ray cluster; models, recipes, data, --out "
                       "and the cache must be on a file system every node sees")
    sweep_cache = sweep.add_mutually_exclusive_group()
    sweep_cache.add_argument("--cache-dir", help="pass-result cache folder the workers share (default: "
                             "$ONNXPRESS_CACHE or ~/.cache/onnxpress)")
    sweep_cache.add_argument("--no-cache", action="store_true", help="compute everything again, store nothing")
    sweep.add_argument("--json", action="store_true")
    _add_data_options(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    demo = commands.add_parser("demo", help="run the default recipe on a bundled digits model")
    demo.add_argument("--out", default="demo-out", help="folder for the compressed model and the report")
    demo.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="mlp: a wide MLP where int8 pays "
                      "on a CPU (default); cnn: a tiny CNN (0.02 ms) where it barely can")
    demo.set_defaults(func=_cmd_demo)

    opt = commands.add_parser("optimize", help="search per-layer compression for the fastest (or smallest) "
                              "model within an accuracy budget")
    opt.add_argument("model")
    opt.add_argument("-o", "--output", required=True, help="output .onnx path (OUT.recipe.toml and "
                     "OUT.lock.toml are written beside it)")
    opt.add_argument("--target", default="cpu", help="target profile: what methods exist, where latency is measured")
    opt.add_argument("--calibration", required=True, help="data the passes calibrate on: .npz, .npy, a folder of "
                     ".npz or images, a text file, or MODULE:FUNCTION (see 'data without code')")
    opt.add_argument("--data", help="held-out data the budget is judged on, of the same kinds (default: a held-out fifth of the "
                     "calibration data the passes never see)")
    budget = opt.add_mutually_exclusive_group()
    budget.add_argument("--min-cosine", type=float, help="lowest output cosine against the input model "
                        "(default: the target's tolerance)")
    budget.add_argument("--max-drop", type=float, help="largest top-1 accuracy drop (needs --labels)")
    opt.add_argument("--labels", metavar="KEY", help="integer class labels in the --data file (for --max-drop)")
    opt.add_argument("--objective", choices=("latency", "size"), default="latency")
    opt.add_argument("--time-budget", type=float, metavar="SECONDS", help="return the best model found so far "
                     "after this long")
    opt.add_argument("--cache-dir", help="cache folder (default: $ONNXPRESS_CACHE or ~/.cache/onnxpress)")
    opt.add_argument("--cache-size-gb", type=float, default=4.0, help="cache size limit; least recently used "
                     "entries go first (default 4)")
    opt.add_argument("--no-cache", action="store_true", help="compute everything again, store nothing")
    opt.add_argument("--workers", type=int, default=1, help="build method candidates as N parallel trials on a "
                     "local Ray (needs onnxpress[ray]); latency is always measured serially")
    opt.add_argument("--ray-address", help="run the trials on this Ray cluster")
    opt.add_argument("--external-data", action="store_true", help="save tensors to an external data file")
    opt.add_argument("--allow-missing-provider", action="store_true")
    opt.add_argument("--report", help="folder for report.html (with the Pareto front), report.md and report.json")
    _add_data_options(opt)
    opt.set_defaults(func=_cmd_optimize)

    exp = commands.add_parser("export", help="export a torch module or a Hugging Face model folder to ONNX, "
                              "checked against torch")
    exp.add_argument("module", nargs="?", metavar="MODULE:FACTORY", help="package.module:factory or "
                     "path/to/file.py:factory; the factory takes no arguments and returns a torch.nn.Module or "
                     "(module, example_args)")
    exp.add_argument("--hf", metavar="FOLDER", help="a Hugging Face model folder written by save_pretrained "
                     "(never downloads)")
    exp.add_argument("-o", "--output", required=True, help="output .onnx path")
    example = exp.add_mutually_exclusive_group()
    example.add_argument("--input", action="append", type=_export_input, metavar="NAME=SHAPE[:DTYPE]",
                         help="an input to export on, in the forward's order, e.g. images=1x3x32x32:float32 "
                         "(repeatable; floats are random normal, integers 0 or 1)")
    example.add_argument("--example-inputs", metavar="FILE.npz", help="the example inputs as arrays named by "
                         "input, in the forward's order")
    exp.add_argument("--task", help="--hf: feature-extraction, sequence-classification, token-classification, "
                     "image-classification, causal-lm or seq2seq (default: from the config's architecture)")
    exp.add_argument("--with-past", action="store_true", help="--hf causal-lm: past key/values as inputs "
                     "past_key_values.N.key/value and outputs present.N.key/value (default: no cache, "
                     "use_cache=False)")
    exp.add_argument("--opset", type=int, default=18, help="default-domain opset (default 18)")
    exp.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                     help="auto (default): dynamo, else TorchScript")
    dynamic = exp.add_mutually_exclusive_group()
    dynamic.add_argument("--dynamic-batch", dest="dynamic", action="store_true", default=True,
                         help="dynamic batch axis (and sequence axes with --hf); the default")
    dynamic.add_argument("--static", dest="dynamic", action="store_false", help="fix every size")
    exp.set_defaults(func=_cmd_export)
    for name in _LONG_COMMANDS:  # -q after the command's name as well as before it
        if name in commands.choices:
            commands.choices[name].add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                                help=_QUIET_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from onnxpress import sandbox

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command a lockfile records
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        memory = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else sandbox.default_memory_bytes()
        limits = sandbox.Limits(seconds=args.time_limit, memory_bytes=memory)
    except ValueError as err:
        _err(f"onnxpress: error: {err}")
        return EXIT_BAD_INPUT
    try:
        with sandbox.limited(limits):
            try:
                return args.func(args)
            finally:  # the bars go before an error line or the exit
                if getattr(args, "progress_console", None) is not None:
                    args.progress_console.close()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED_VERDICT
    except OnnxpressError as err:
        if args.debug:
            raise
        _err(f"onnxpress: error: {err}")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
