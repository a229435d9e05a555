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

from onnxpress._cli_data import add_data_options, data_sources, labels_metric, read_data, workers
from onnxpress._cli_export import cmd_export, export_input
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
    result = sweep(args.models, args.recipes, target=args.target, data=data_sources(args).get("data"),
                   workers=args.workers,
                   address=args.ray_address, out=args.out, cache_folder=cache_folder,
                   progress=_progress_for(args))
    print(result.to_json() if args.json else result.table())
    if result.out_folder is not None:
        _err(f"output models: {result.out_folder}")
    # A floor failure is a result (a row); a cell whose pipeline could not run is not.
    return EXIT_FAILED_VERDICT if any(row["status"].startswith("error") for row in result.rows) else 0


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

    data_sources(args)  # the data options checked before the model loads
    candidate = load(args.model)
    shapes = _input_shapes(args.input_shape)
    if args.save_golden:
        save_golden(candidate, read_data(args, "data", candidate) if args.data else _generated(candidate, shapes),
                    args.save_golden)
        print(f"saved golden inputs and outputs of {args.model} in {args.save_golden}")
        return 0
    reference = load(args.reference) if args.reference else None
    metric = labels_metric(args.data, args.labels) if args.labels else None
    report = validate(candidate, reference, target=args.target, data=read_data(args, "data", candidate), golden=args.golden,
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
    data_sources(args)  # the data options checked before the model loads
    metric = labels_metric(args.data, args.labels) if args.labels else None  # and the labels
    recipe = load_recipe(args.recipe) if args.recipe is not None else default_recipe(args.target)
    if args.recipe is None:
        _err(f"recipe: {recipe.description}: {' -> '.join(recipe.pass_names)}")
    model = load(str(source))
    pipeline = Pipeline.from_recipe(recipe)
    if args.no_check:
        pipeline.check = False
    shapes = _input_shapes(args.input_shape, recipe.pipeline_options.get("input_shapes"))
    pipeline.input_shapes = shapes  # for the golden inputs it generates
    calibration = read_data(args, "calibration", model) if args.calibration else pipeline.data(model, "calibration")
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
        source, base = data_sources(args)["calibration"], None
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
        return read_data(args, "data", model), calibration, f"evaluation data {Path(args.data).name}"
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
    data_sources(args)  # the data options checked before the model loads
    model = load(str(source))
    calibration = read_data(args, "calibration", model)
    data = read_data(args, "data", model)
    metric = labels_metric(args.data, args.labels) if args.labels else None
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
    source = data_sources(args)["calibration"]
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
    add_data_options(run)
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
    add_data_options(validate)
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
    sweep.add_argument("--workers", type=workers, default=1, help="cells at once, as tasks on a local Ray "
                       "(needs onnxpress[ray]); 1 (default): one after another in-process; 0: one per core. "
                       "Latency is measured after every cell ended, one model at a time")
    sweep.add_argument("--ray-address", help="run the cells on this Ray cluster; models, recipes, data, --out "
                       "and the cache must be on a file system every node sees")
    sweep_cache = sweep.add_mutually_exclusive_group()
    sweep_cache.add_argument("--cache-dir", help="pass-result cache folder the workers share (default: "
                             "$ONNXPRESS_CACHE or ~/.cache/onnxpress)")
    sweep_cache.add_argument("--no-cache", action="store_true", help="compute everything again, store nothing")
    sweep.add_argument("--json", action="store_true")
    add_data_options(sweep)
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
    add_data_options(opt)
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
    example.add_argument("--input", action="append", type=export_input, metavar="NAME=SHAPE[:DTYPE]",
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
    exp.set_defaults(func=cmd_export)
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
