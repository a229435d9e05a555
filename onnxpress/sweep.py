"""Sweeps: every recipe on every model, one table.

Each (model, recipe) cell is one trial (``onnxpress.trials``): it loads the model, runs the
recipe's pipeline on it with the calibration data (``data``, else the recipe's
``[calibration]``), saves the output model and returns a row of plain data: sizes, node
counts, the output's digest, the worst cosine against the input model and a status. Cells run
in parallel on Ray when ``workers`` > 1 or a cluster ``address`` is given.

A cell never times anything (its pipeline's quick latency is off). Once every cell has ended,
the driver measures the latency of each input model and each saved output on ``target``, one
model at a time, so no measurement runs beside a trial; the rows then get latency columns and
the speedup over their input model.

The status of a cell is ``ok``; ``floor`` when a pass left the outputs below the recipe's
accuracy floor (the row keeps what the pipeline reached, nothing is saved); or
``error: <first line>`` when the pipeline could not run (bad data for that model, a broken
pass). ``deterministic_rows()`` leaves the timing columns out: two sweeps of the same models
and recipes give the same ones whatever the number of workers.

On a cluster (``address``) every path (models, recipes, data, ``out``, the cache folder) must
be one that every node sees: a shared file system. The pass-result cache (``cache_folder``) is
shared the same way: each worker opens the same folder, whose entries are written atomically.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from onnxpress import targets, trials
from onnxpress.errors import AccuracyFloorError, DataError, ModelError, OnnxpressError
from onnxpress.progress import Report, Step, pipeline_steps, within

if TYPE_CHECKING:
    from onnxpress.calibration import DataSource

logger = logging.getLogger(__name__)

# Row keys that hold timings: they differ from run to run.
TIMING_KEYS = ("seconds", "input_latency_ms", "latency_ms", "speedup")


@dataclass(frozen=True)
class _Cell:
    """One (model, recipe) trial, as plain data (it travels to Ray workers)."""

    model: str
    recipe: str
    model_name: str
    recipe_name: str
    data: DataSource | None
    out_folder: str
    cache_folder: str | None

    def __str__(self) -> str:
        return f"{self.model_name} x {self.recipe_name}"

    @property
    def output_name(self) -> str:
        return f"{self.model_name}__{self.recipe_name}.onnx"


@dataclass
class SweepResult:
    """One row per (model, recipe), in the order models x recipes.

    Attributes:
        rows: plain data (``to_dict`` gives it as JSON); timing keys are ``TIMING_KEYS``.
        target: the target latency was measured on.
        out_folder: where the output models were saved (None: they were not kept).
        workers: trials that ran at once (1: one after another, in-process).
        address: the Ray cluster they ran on, or None.
        seconds: wall time of the sweep, latency measurements included.
    """

    rows: list[dict[str, Any]]
    target: str
    out_folder: str | None = None
    workers: int = 1
    address: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def deterministic_rows(self) -> list[dict[str, Any]]:
        """The rows without their timing columns: equal for two sweeps of the same inputs."""
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "out_folder": self.out_folder, "workers": self.workers,
                "address": self.address, "seconds": self.seconds, "notes": list(self.notes),
                "rows": [dict(row) for row in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table of the rows (status last: an error's message is long)."""
        from onnxpress.modelinfo import format_bytes, text_table

        header = ("model", "recipe", "size", "nodes", "cosine", "latency", "speedup", "digest", "status")
        rows = [header]
        for r in self.rows:
            size = "-" if r["output_bytes"] is None else (
                f"{format_bytes(r['input_bytes'])}->{format_bytes(r['output_bytes'])}")
            nodes = "-" if r["output_nodes"] is None else f"{r['input_nodes']}->{r['output_nodes']}"
            latency = "-" if r.get("latency_ms") is None else (
                f"{r['input_latency_ms']:.3f}->{r['latency_ms']:.3f}ms")
            rows.append((
                r["model"], r["recipe"], size, nodes,
                "-" if r["cosine"] is None else f"{r['cosine']:.6f}",
                latency, "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x",
                "-" if r["digest"] is None else r["digest"][:12], r["status"],
            ))
        lines = text_table(rows)
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def sweep(models: Sequence[str | Path], recipes: Sequence[str | Path], *, target: str = "cpu",
          data: str | os.PathLike | DataSource | None = None, workers: int = 1, address: str | None = None, out: str | None = None,
          cache_folder: str | None = None, progress: Report | None = None) -> SweepResult:
    """Run every recipe on every model, then measure latency serially; see the module docstring.

    Args:
        models: ONNX model files.
        recipes: recipe TOML files.
        target: the target profile latency is measured on (the recipes' pipelines check on
            their own target).
        data: calibration data for every cell, over the recipes' own ``[calibration]``: a
            :class:`~onnxpress.calibration.DataSource` (images, text with a tokenizer, a
            function; read for each model, matched to its inputs) or a path read as one.
        workers: cells at once (``trials.run_trials``): 1 in-process, 0 one per core.
        address: a Ray cluster to run the cells on.
        out: folder for the output models, one file per cell (``<model>__<recipe>.onnx``),
            created if missing; None keeps them in a temporary folder until latency is measured.
        cache_folder: a pass-result cache folder shared by every cell, or None for no cache.
        progress: told how far the sweep got, as ``progress.Step`` lines: each cell that ends
            (``"3/9 cells done: <cell>"``), each latency measured, and, when the cells run here
            one after another, the long steps of each cell's passes.

    Raises:
        ModelError, RecipeError, DataError: a model, recipe or data path is missing or
            unreadable (before any cell runs).
        trials.TrialError: a cell failed in a way it does not report as a row (a bug).
    """
    from onnxpress.recipe import load_recipe

    start = time.perf_counter()
    if not models or not recipes:
        raise OnnxpressError("sweep: give at least one model and one recipe")
    model_paths = [Path(m) for m in models]
    for path in model_paths:
        if not path.is_file():
            raise ModelError(f"{path}: no such file" if not path.exists() else f"{path}: not a model file")
    parsed = [(Path(r), load_recipe(r)) for r in recipes]  # a bad recipe is one line, before any cell runs
    source = None if data is None else _absolute(data)
    targets.load(target)  # a bad target is one line now, not after every cell ran
    count = trials.resolve_workers(workers)
    if count > 1 or address is not None:
        _warn_timing_passes(parsed)
    scratch = None
    if out is None:
        scratch = tempfile.mkdtemp(prefix="onnxpress-sweep-")
        folder = Path(scratch)
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
    try:
        # Absolute paths: a worker's working folder is not ours.
        shared = {"data": source, "out_folder": str(folder.resolve()),
                  "cache_folder": None if cache_folder is None else str(Path(cache_folder).resolve())}
        recipe_paths = [path for path, _ in parsed]
        cells = [_Cell(str(m.resolve()), str(r.resolve()), model_name, recipe_name, **shared)
                 for m, model_name in zip(model_paths, _unique_names(model_paths))
                 for r, recipe_name in zip(recipe_paths, _unique_names(recipe_paths))]
        if progress is not None:
            progress(Step("cells", 0, len(cells), "cells", text=f"0/{len(cells)} cells done"))
        serial = count <= 1 and address is None  # a callback does not travel to Ray workers
        run = functools.partial(_run_cell, progress=progress) if serial and progress is not None else _run_cell
        rows = trials.run_trials(run, cells, workers=workers, address=address, progress=progress, what="cell")
        notes = _measure_latency(cells, rows, target, source, progress)
        for row in rows:
            if out is None:
                row["output"] = None  # the temporary folder goes away
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return SweepResult(rows, target=target, out_folder=None if out is None else str(folder), workers=count,
                       address=address, seconds=round(time.perf_counter() - start, 3), notes=notes)


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems made safe for file names, numbered where two are the same."""
    stems = [re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem) or "model" for p in paths]
    names = []
    for index, stem in enumerate(stems):
        names.append(stem if stems.count(stem) == 1 else f"{stem}-{stems[:index + 1].count(stem)}")
    return names


def _warn_timing_passes(recipes: list) -> None:
    """Passes that time models decide on timings taken beside other trials: say so."""
    for path, recipe in recipes:
        for name, item in zip(recipe.pass_names, recipe.passes):
            if getattr(item, "latency_aware", False) or getattr(item, "measure_latency", False):
                logger.warning("%s: pass '%s' times models while other cells run beside it: its choices may "
                               "differ from a sweep with one worker", path, name)


def _run_cell(cell: _Cell, progress: Report | None = None) -> dict[str, Any]:
    """Run one recipe on one model: the row (a failure of the pipeline is the row's status);
    ``progress`` is told how far the long steps of its passes got."""
    from onnxpress import runtime
    from onnxpress.cache import model_digest
    from onnxpress.io import load, save
    from onnxpress.modelinfo import node_count, saved_size
    from onnxpress.pipeline import Pipeline
    from onnxpress.recipe import load_recipe

    start = time.perf_counter()
    row: dict[str, Any] = {"model": cell.model_name, "recipe": cell.recipe_name, "status": "ok",
                           "input_bytes": None, "output_bytes": None, "input_nodes": None, "output_nodes": None,
                           "cosine": None, "cosine_on": None, "floor": None, "digest": None, "output": None}
    try:
        model = load(cell.model)
        row["input_bytes"], row["input_nodes"] = saved_size(model), node_count(model)
        pipeline = _pipeline(Pipeline, load_recipe(cell.recipe), cell.cache_folder)
        calibration = _calibration(cell, pipeline, model)
        try:
            result = pipeline.run(model, calibration, progress=pipeline_steps(progress, str(cell)))
        except AccuracyFloorError as err:
            if err.result is None:
                raise
            result = err.result
            row["status"] = "floor"
        row["output_bytes"], row["output_nodes"] = saved_size(result.model), node_count(result.model)
        row["digest"] = model_digest(result.model)
        _accuracy(row, result)
        if row["status"] == "ok":
            save(result.model, Path(cell.out_folder) / cell.output_name)
            row["output"] = cell.output_name
    except (OnnxpressError, runtime.RunFailed, runtime.CheckFailed, *runtime.ort_errors()) as err:
        text = str(err).strip()
        row["status"] = f"error: {text.splitlines()[0] if text else type(err).__name__}"
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _pipeline(pipeline_class, recipe, cache_folder: str | None):
    from onnxpress.cache import Cache

    pipeline = pipeline_class.from_recipe(recipe, cache=None if cache_folder is None else Cache(cache_folder))
    pipeline.latency_runs = 0  # a trial never times: latency is measured after every cell ended
    return pipeline


def _absolute(data: str | os.PathLike | DataSource) -> DataSource:
    """``data`` as a ``DataSource`` whose paths are absolute (a worker's working folder is not
    ours); a missing file is one line now, before any cell runs."""
    from onnxpress.calibration import DataSource

    try:
        spec = data if isinstance(data, DataSource) else DataSource.from_path(data)
    except ValueError as err:  # a .txt file without a tokenizer, say
        raise DataError(f"data ({data}): {err}") from None
    if spec.type != "python" and not spec.source.exists():
        raise DataError(f"{spec.source}: no such data file or folder")
    paths = {key: getattr(spec, key).resolve() for key in ("preprocessor", "tokenizer") if getattr(spec, key)}
    if spec.source.exists():  # a module name of a python source stays as it is
        paths["source"] = spec.source.resolve()
    return dataclasses.replace(spec, **paths)


def _calibration(cell: _Cell, pipeline, model):
    """The sweep's data for this model, else the recipe's ``[calibration]``, else None."""
    if cell.data is None:
        return pipeline.data(model, "calibration")
    from onnxpress.calibration import read_source

    return read_source(cell.data, model=model, name="calibration")


def _accuracy(row: dict[str, Any], result) -> None:
    """The worst cosine against the input model: the last accuracy-floor figure (held-out data),
    else the last pass's on the golden inputs."""
    floors = [r.floor for r in result.records if r.floor is not None]
    if floors:
        row["cosine"], row["cosine_on"], row["floor"] = floors[-1]["cosine"], floors[-1]["data"], floors[-1]["floor"]
    elif result.records and result.records[-1].cosine is not None:
        row["cosine"] = round(float(result.records[-1].cosine), 6)
        row["cosine_on"] = f"golden inputs ({result.golden_note})"


def _measure_latency(cells: list[_Cell], rows: list[dict[str, Any]], target: str, data: DataSource | None,
                     progress: Report | None) -> list[str]:
    """Latency of every input model and every saved output, one at a time, after all the cells.

    Returns notes for the table (models that could not be timed are logged and left blank).
    """
    from onnxpress.io import load
    from onnxpress.runtime import Runner

    runner = Runner(target)
    inputs: dict[str, tuple[dict | None, float | None]] = {}
    outputs = [(cell, row) for cell, row in zip(cells, rows) if row["output"] is not None]
    total = len({cell.model for cell in cells}) + len(outputs)
    done = 0
    started = time.monotonic()

    def tell(name: str) -> None:
        if progress is not None:
            progress(Step("latency", done, total, "models", note=name, seconds=time.monotonic() - started,
                          ended=done == total, text=f"latency {done}/{total}: {name}"))

    if progress is not None:
        progress(Step("latency", 0, total, "models", text=f"latency 0/{total}"))
    for cell in cells:
        if cell.model in inputs:
            continue
        feed = None
        try:
            model = load(cell.model)
            feed = _feed(model, data)
        except OnnxpressError as err:
            logger.warning("%s: latency not measured: %s", cell.model_name, err)
        latency = None if feed is None else _latency(runner, model, feed, cell.model_name, progress)
        inputs[cell.model] = (feed, latency)
        done += 1
        tell(cell.model_name)
    for cell, row in outputs:
        feed, reference = inputs[cell.model]
        latency = None
        if feed is not None:
            try:
                output = load(Path(cell.out_folder) / cell.output_name)
            except ModelError as err:  # on a cluster, `out` is not a folder this machine sees
                logger.warning("%s: latency not measured: %s", cell, err)
            else:
                latency = _latency(runner, output, feed, str(cell), progress)
        row["input_latency_ms"] = None if latency is None or reference is None else round(reference, 4)
        row["latency_ms"] = None if latency is None else round(latency, 4)
        row["speedup"] = None if latency is None or reference is None else round(reference / latency, 3)
        done += 1
        tell(str(cell))
    for row in rows:
        for key in ("input_latency_ms", "latency_ms", "speedup"):
            row.setdefault(key, None)
    return [f"latency: median on {runner.target.name}, one model at a time after every cell ended"]


def _latency(runner, model, feed: dict, name: str, progress: Report | None = None) -> float | None:
    """Median latency of ``model`` on ``feed`` in ms, or None (the reason is logged)."""
    from onnxpress import runtime

    try:
        return runner.latency(model, feed, progress=within(progress, name)).median_ms
    except (OnnxpressError, runtime.RunFailed, runtime.CheckFailed, *runtime.ort_errors()) as err:
        logger.warning("%s: latency not measured: %s", name, err)
        return None


def _feed(model, data: DataSource | None) -> dict:
    """One feed to time ``model`` on: the first sample of ``data``, else generated."""
    if data is not None:
        from onnxpress.calibration import read_source

        taken = read_source(data, model=model, name="data").take(1)
        if taken:
            return taken[0]
    from onnxpress.feeds import random_feeds

    return random_feeds(model, 1, seed=0)[0]
