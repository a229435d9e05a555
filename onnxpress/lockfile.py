"""Lockfiles: what a run was made from, so that ``onnxpress replay`` can make it again.

``onnxpress run`` and ``onnxpress optimize`` write ``OUT.lock.toml`` beside ``OUT.onnx``:

```toml
seed = 0

[lock]
format = 1
created = "2025-01-31T12:00:00+00:00"
command = "onnxpress run model.onnx --recipe r.toml -o out.onnx"

[lock.versions]               # cache.versions(): python, onnxpress (and its source digest), libraries
onnxpress = "0.1.0"

[input]
path = "model.onnx"           # relative to the lockfile when it can be, and absolute
absolute = "/work/model.onnx"
sha256 = "..."                # cache.model_digest of the loaded model

[data.calibration]            # the feeds the passes received, as pipeline.run got them
path = "/work/calib.npz"
sha256 = "..."                # cache.data_digest
samples = 160

[target]
name = "cpu"
profile = "/.../targets/cpu.toml"
sha256 = "..."                # of the profile file

[output]
path = "out.onnx"
absolute = "/work/out.onnx"
sha256 = "..."                # cache.model_digest of the pipeline's result, before saving
deterministic = true          # false: replay is held to `tolerance` (cosine) against the recorded output
tolerance = 0.99

[recipe]                      # the resolved recipe: every option explicit, data paths relative to
target = "cpu"                # the lockfile; the same keys a recipe file has
[recipe.pipeline]
...
[[recipe.passes]]
name = "simplify"
...
```

The recipe is embedded as nested tables, not as a string: ``tomllib`` reads ``[recipe]`` into
exactly the dict a recipe file gives, which ``recipe.parse_recipe_table`` checks with the same
code and messages; no second document has to be escaped inside the first, and the options stay
readable and diffable in the lockfile (``dumps(lock.recipe)`` writes it out as a recipe file).

The output's digest is that of the model in memory, which ``replay`` computes the same way:
the bytes of a saved and re-loaded model differ (loading gives initializers a type and shape
the serialiser then writes as ``value_info``). ``[output] file_sha256`` is the digest of the
saved file as ``onnxpress.load`` reads it, for checking the file itself.

Determinism: a pass class declares ``deterministic`` (``onnxpress.Pass``); a run is
deterministic when all its passes are, and the lockfile names those that are not.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import onnx_ir as ir

from onnxpress.errors import AccuracyFloorError, DataError, RecipeError

logger = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".lock.toml"
# Feeds the reproduced and the recorded output are compared on when the run is not deterministic.
_COMPARE_SAMPLES = 16


def lock_path(output: str | os.PathLike) -> Path:
    """Where the lockfile of ``output`` goes: ``model.onnx`` -> ``model.lock.toml`` beside it."""
    return Path(output).with_suffix(SUFFIX)


def nondeterministic(passes: Sequence[Any]) -> list[str]:
    """Names of the passes that do not declare themselves deterministic (``Pass.deterministic``)."""
    from onnxpress.context import pass_name

    return [pass_name(item) for item in passes if not getattr(item, "deterministic", True)]


def write_lock(output: Path, *, recipe_toml: str, input_path: Path | None, input_digest: str,
               data: Mapping[str, Mapping[str, Any]], target: str | None, seed: int, output_digest: str,
               deterministic: bool, tolerance: float | None, command: str, file_digest: str | None = None,
               nondeterministic_passes: Sequence[str] = (), note: str = "", below_floor: bool = False) -> Path:
    """Write ``OUT.lock.toml`` beside ``output``; returns its path.

    Args:
        recipe_toml: the resolved recipe (``recipe.recipe_text``), its data paths relative to
            the lockfile's folder; embedded as the ``[recipe]`` table.
        input_path: the input model file (None: it came from memory, and ``replay`` cannot load it).
        input_digest: ``cache.model_digest`` of the input model as loaded.
        data: ``{"calibration": {"path": ..., "sha256": cache.data_digest(...), "samples": n}}``,
            and ``"evaluation"`` when ``pipeline.run`` received one: the feeds as the passes got them.
        target: the pipeline's target (a built-in name or a profile path).
        seed: the pipeline's seed.
        output_digest: ``cache.model_digest`` of the output model in memory.
        deterministic: whether every pass is (``nondeterministic``); when false, ``replay``
            compares outputs within ``tolerance`` (cosine) instead of digests.
        command: the command line that made the output.
        file_digest: ``cache.model_digest`` of the saved output as ``load`` reads it back.
        nondeterministic_passes: the passes that made the run nondeterministic.
        note: a line a reader should know (``--keep-failed``: the output is below the floor).
        below_floor: the output broke the accuracy floor and was kept anyway; ``replay`` keeps
            the result the pipeline reports with its ``AccuracyFloorError``.

    Raises:
        RecipeError: ``recipe_toml`` is not valid TOML.
    """
    from onnxpress.cache import versions
    from onnxpress.recipe import dumps

    path = lock_path(output)
    folder = path.parent
    try:
        recipe = tomllib.loads(recipe_toml)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: the recipe to embed is not valid TOML: {err}") from None
    document: dict[str, Any] = {
        "seed": int(seed),
        "lock": {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": command, "versions": versions()},
    }
    if input_path is not None:
        document["input"] = {**_place(Path(input_path), folder), "sha256": input_digest}
    else:
        document["input"] = {"sha256": input_digest}
    if data:
        document["data"] = {name: {key: value for key, value in record.items() if value is not None}
                            for name, record in data.items()}
    if target is not None:
        document["target"] = _target_record(target)
    out: dict[str, Any] = {**_place(Path(output), folder), "sha256": output_digest}
    if file_digest is not None:
        out["file_sha256"] = file_digest
    out["deterministic"] = bool(deterministic)
    if nondeterministic_passes:
        out["nondeterministic_passes"] = list(nondeterministic_passes)
    if tolerance is not None:
        out["tolerance"] = float(tolerance)
    if below_floor:
        out["below_floor"] = True
    if note:
        out["note"] = note
    document["output"] = out
    document["recipe"] = recipe
    text = "# onnxpress lockfile: `onnxpress replay " + path.name + "` makes the output again\n"
    path.write_text(text + dumps(document, section_depth=2), encoding="utf-8")
    logger.info("wrote lockfile %s", path)
    return path


def lock_run(output: Path, pipeline: Any, *, model: ir.Model, input_path: Path | None, result: ir.Model,
             calibration: Any, calibration_source: Any, evaluation_source: Any = None, base: Path | None = None,
             command: str, description: str = "", note: str = "", below_floor: bool = False) -> Path:
    """Write the lockfile of a ``pipeline.run`` whose result was saved to ``output`` (what
    ``onnxpress run`` does); returns its path.

    Args:
        pipeline: the pipeline that ran: its passes, options, target and seed are recorded.
        model: the input model as given to ``pipeline.run``; ``input_path`` its file.
        result: the model the pipeline returned (the one saved).
        calibration: the feeds ``pipeline.run`` received (None: none), digested as they are.
        calibration_source: the ``DataSource`` they were read from; the embedded recipe reads
            only their number of feeds from it (``limit``), so a held-out part the passes never
            saw stays out.
        evaluation_source: the verdict data source (the recipe's ``[evaluation]``), written to
            the recipe for ``run --validate``; the passes never see it.
        base: the folder the sources' relative paths are resolved against (a recipe's folder;
            the working directory when None).
    """
    import dataclasses

    from onnxpress import targets
    from onnxpress.cache import data_digest, model_digest
    from onnxpress.io import load
    from onnxpress.recipe import recipe_text

    folder = lock_path(output).parent
    data: dict[str, dict[str, Any]] = {}
    source = calibration_source
    if calibration is not None:
        samples = len(calibration)
        where = None
        if source is not None:
            where = Path(os.path.abspath(Path(base or Path.cwd()) / source.source)).as_posix()
            if source.limit is None or source.limit > samples:
                source = dataclasses.replace(source, limit=samples)
        data["calibration"] = {"path": where, "sha256": data_digest(calibration), "samples": samples}
    target = _resolved_target(pipeline.target)
    options = {"check": pipeline.check, "golden_samples": pipeline.golden_samples,
               "lossless_rtol": pipeline.lossless_rtol, "lossless_atol": pipeline.lossless_atol,
               "latency_runs": pipeline.latency_runs, "input_shapes": pipeline.input_shapes or None,
               "accuracy_floor": pipeline.accuracy_floor}
    text = recipe_text(pipeline.passes, target=target, description=description, pipeline_options=options,
                       calibration=source if calibration is not None else None, evaluation=evaluation_source,
                       base=base, folder=folder)
    tolerance = pipeline.accuracy_floor or targets.load(target or "cpu").cosine
    unsure = nondeterministic(pipeline.passes)
    return write_lock(output, recipe_toml=text, input_path=input_path, input_digest=model_digest(model), data=data,
                      target=target, seed=getattr(pipeline, "seed", 0), output_digest=model_digest(result),
                      deterministic=not unsure, tolerance=tolerance, command=command,
                      file_digest=model_digest(load(output)), nondeterministic_passes=unsure, note=note,
                      below_floor=below_floor)


def _resolved_target(target: str | None) -> str | None:
    """A built-in target's name, or a profile file's absolute path (a relative one is the working directory's)."""
    from onnxpress import targets

    if target is None or target in targets.builtin():
        return target
    return Path(os.path.abspath(target)).as_posix()


def _place(path: Path, folder: Path) -> dict[str, str]:
    """``path`` relative to ``folder`` when it can be (``..`` allowed), and absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        relative = os.path.relpath(absolute, os.path.abspath(folder))
    except ValueError:  # another drive (Windows): only the absolute path says where it is
        return {"absolute": absolute.as_posix()}
    return {"path": Path(relative).as_posix(), "absolute": absolute.as_posix()}


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # a target profile: a few hundred bytes


def _target_record(target: str) -> dict[str, Any]:
    from onnxpress import targets

    profile = targets.load(target)
    record: dict[str, Any] = {"name": str(target), "profile": Path(os.path.abspath(profile.path)).as_posix()}
    try:
        record["sha256"] = _file_sha256(Path(profile.path))
    except OSError as err:  # best effort: the profile was just read, so this is unlikely
        logger.warning("lockfile: cannot digest the target profile %s: %s", profile.path, err)
    return record


@dataclass
class Lock:
    """A lockfile, read and checked (see the module docstring for its tables)."""

    path: Path
    format: int
    created: str
    command: str
    versions: dict[str, str]
    seed: int
    input_digest: str
    input_candidates: list[Path]
    data: dict[str, dict[str, Any]]
    target: str | None
    target_profile: Path | None
    target_digest: str | None
    output_digest: str
    output_candidates: list[Path]
    file_digest: str | None
    deterministic: bool
    nondeterministic_passes: list[str]
    tolerance: float | None
    below_floor: bool
    note: str
    recipe: dict[str, Any] = field(repr=False)

    @property
    def recipe_text(self) -> str:
        """The embedded recipe as a recipe file (its data paths are relative to the lockfile)."""
        from onnxpress.recipe import dumps

        return dumps(self.recipe)

    @property
    def input_path(self) -> Path | None:
        """The input model file: the relative path's if it exists, else the absolute one's."""
        return _first_existing(self.input_candidates)

    @property
    def output_path(self) -> Path | None:
        """The recorded output file, if it is still there."""
        return _first_existing(self.output_candidates)


def _first_existing(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def read_lock(path: str | os.PathLike) -> Lock:
    """Read and check a lockfile.

    Raises:
        RecipeError: one line naming the file: missing, unreadable, not TOML, not a lockfile,
            a format this onnxpress does not read, or a missing or mistyped key.
    """
    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"{file}: no such lockfile" if not file.exists() else f"{file}: not a lockfile (not a file)")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{file}: cannot read the lockfile: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{file}: not a valid lockfile: {err}") from None
    lock = data.get("lock")
    if not isinstance(lock, dict) or "format" not in lock:
        raise RecipeError(f"{file}: not an onnxpress lockfile (no [lock] table with a 'format')")
    version = lock["format"]
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT:
        raise RecipeError(f"{file}: lockfile format {version!r} is not one this onnxpress reads (format {FORMAT}); "
                          "replay it with the onnxpress version in its [lock.versions]")
    get = _Getter(file, data)
    folder = file.parent
    input_table = get.table("input")
    output_table = get.table("output")
    target_table = get.table("target", required=False)
    data_tables = get.table("data", required=False)
    records = {}
    for name, record in data_tables.items():
        if not isinstance(record, dict):
            raise RecipeError(f"{file}: [data.{name}] must be a table")
        records[name] = {"path": get.value(record, f"data.{name}", "path", str, required=False),
                         "sha256": get.value(record, f"data.{name}", "sha256", str),
                         "samples": get.value(record, f"data.{name}", "samples", int, required=False)}
    recipe = get.table("recipe")
    tolerance = get.value(output_table, "output", "tolerance", float, required=False)
    recorded_versions = get.value(lock, "lock", "versions", dict, required=False) or {}
    return Lock(
        path=file, format=version, created=get.value(lock, "lock", "created", str, required=False) or "",
        command=get.value(lock, "lock", "command", str, required=False) or "",
        versions={str(k): str(v) for k, v in recorded_versions.items()},
        seed=get.value(data, "", "seed", int), input_digest=get.value(input_table, "input", "sha256", str),
        input_candidates=_candidates(input_table, folder, get, "input"), data=records,
        target=get.value(target_table, "target", "name", str, required=False),
        target_profile=_optional_path(get.value(target_table, "target", "profile", str, required=False)),
        target_digest=get.value(target_table, "target", "sha256", str, required=False),
        output_digest=get.value(output_table, "output", "sha256", str),
        output_candidates=_candidates(output_table, folder, get, "output"),
        file_digest=get.value(output_table, "output", "file_sha256", str, required=False),
        deterministic=get.value(output_table, "output", "deterministic", bool),
        nondeterministic_passes=[str(p) for p in get.value(output_table, "output", "nondeterministic_passes", list,
                                                           required=False) or []],
        tolerance=None if tolerance is None else float(tolerance),
        below_floor=bool(get.value(output_table, "output", "below_floor", bool, required=False)),
        note=get.value(output_table, "output", "note", str, required=False) or "", recipe=recipe)


class _Getter:
    """Typed access to a lockfile's keys, each mistake one ``RecipeError`` line naming the table and key."""

    def __init__(self, file: Path, data: dict[str, Any]) -> None:
        self.file = file
        self.data = data

    def table(self, name: str, *, required: bool = True) -> dict[str, Any]:
        if name not in self.data:
            if required:
                raise RecipeError(f"{self.file}: the lockfile has no [{name}] table")
            return {}
        value = self.data[name]
        if not isinstance(value, dict):
            raise RecipeError(f"{self.file}: [{name}] must be a table")
        return value

    def value(self, table: dict[str, Any], where: str, key: str, kind: type, *, required: bool = True) -> Any:
        label = f"[{where}] '{key}'" if where else f"'{key}'"
        if key not in table:
            if required:
                raise RecipeError(f"{self.file}: the lockfile has no {label}")
            return None
        value = table[key]
        fits = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
                else isinstance(value, int) and not isinstance(value, bool) if kind is int
                else isinstance(value, kind))
        if not fits:
            raise RecipeError(f"{self.file}: {label} must be {kind.__name__}, got {type(value).__name__} {value!r}")
        return value


def _candidates(table: dict[str, Any], folder: Path, get: _Getter, where: str) -> list[Path]:
    found = []
    relative = get.value(table, where, "path", str, required=False)
    if relative is not None:
        found.append(folder / relative)
    absolute = get.value(table, where, "absolute", str, required=False)
    if absolute is not None:
        found.append(Path(absolute))
    return found


def _optional_path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


@dataclass
class ReplayResult:
    """What ``replay`` found.

    Attributes:
        lock: the lockfile.
        model: the reproduced model.
        digest: its ``cache.model_digest``.
        identical: the digest is the lockfile's.
        cosine: the worst output score of the reproduced model against the recorded output
            (``metrics.ErrorStats.score``), when the run is not deterministic, the digests
            differ and the recorded output could be read; else None.
        within_tolerance: whether ``cosine`` reaches the lockfile's tolerance (None: not compared).
        output: where the reproduced model was written, or None.
        notes: what a reader should know (changed library versions, why nothing was compared).
    """

    lock: Lock
    model: ir.Model = field(repr=False)
    digest: str
    identical: bool
    cosine: float | None = None
    within_tolerance: bool | None = None
    output: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        """Bit-identical, or (for a nondeterministic run) within the lockfile's tolerance."""
        return self.identical or bool(self.within_tolerance)

    def lines(self) -> list[str]:
        """The verdict as lines of text, the first one saying it."""
        lock = self.lock
        if self.identical:
            first = f"identical: the output's sha256 {self.digest} is the lockfile's"
        elif self.within_tolerance:
            first = (f"within tolerance: sha256 {self.digest} differs from the lockfile's {lock.output_digest}, "
                     f"as a nondeterministic run may ({', '.join(lock.nondeterministic_passes) or 'its passes'}); "
                     f"outputs against the recorded model: cosine {self.cosine:.6f} >= {lock.tolerance}")
        elif self.cosine is not None:
            first = (f"differs: sha256 {self.digest} is not the lockfile's {lock.output_digest}, and the outputs "
                     f"against the recorded model reach cosine {self.cosine:.6f} < tolerance {lock.tolerance}")
        elif lock.deterministic:
            first = (f"differs: sha256 {self.digest} is not the lockfile's {lock.output_digest} "
                     "(the run is deterministic: they should be equal)")
        else:
            first = (f"cannot check: sha256 {self.digest} differs from the lockfile's {lock.output_digest}, "
                     "as a nondeterministic run may, and the outputs could not be compared")
        return [first, *(f"note: {note}" for note in self.notes)]


def replay(lock_path: str | os.PathLike, *, output: Path | None = None,
           progress: Callable[[Any], None] | None = None) -> ReplayResult:
    """Make a lockfile's output again and check it.

    Loads the input model and checks its digest, reads the data sources of the embedded recipe
    and checks theirs, runs the recipe's pipeline with the recorded seed and target, and
    compares the output's digest with the lockfile's. When they differ and the lockfile says
    the run is not deterministic, the outputs of both models are compared (cosine, on the
    evaluation or calibration data, else generated inputs) against its tolerance, if the
    recorded output is still on disk (and unchanged). The reproduced model is written to
    ``output`` only when given.

    Raises:
        RecipeError: the lockfile is missing or not one this onnxpress reads.
        DataError: the input model or a data source is missing or changed since the lockfile
            was written (naming the file and both digests).
    """
    from onnxpress.cache import data_digest, model_digest, versions
    from onnxpress.io import load, save
    from onnxpress.pipeline import Pipeline
    from onnxpress.recipe import parse_recipe_table

    lock = read_lock(lock_path)
    source = lock.input_path
    if source is None:
        where = " or ".join(str(p) for p in lock.input_candidates) or "no path recorded"
        raise DataError(f"{lock.path}: the input model is not there ({where})")
    model = load(source)
    found = model_digest(model)
    if found != lock.input_digest:
        raise DataError(f"{source}: the input model changed since {lock.path.name} was written: sha256 {found}, "
                        f"the lockfile has {lock.input_digest}")
    notes = _version_notes(lock.versions, versions())
    if lock.below_floor:
        notes.append("as recorded, the output is below the accuracy floor (kept with --keep-failed)")
    _check_target(lock)
    recipe = parse_recipe_table(lock.recipe, name=f"{lock.path}: [recipe]", path=lock.path)
    pipeline = Pipeline.from_recipe(recipe, seed=lock.seed)
    feeds: dict[str, Any] = {}
    for name in ("calibration", "evaluation"):
        if name not in lock.data:
            continue
        data = pipeline.data(model, name)
        if data is None:
            raise DataError(f"{lock.path}: [data.{name}] is recorded but the embedded recipe has no [{name}] source")
        digest = data_digest(data)
        if digest != lock.data[name]["sha256"]:
            raise DataError(f"{data.name}: the {name} data changed since {lock.path.name} was written: sha256 "
                            f"{digest}, the lockfile has {lock.data[name]['sha256']}")
        feeds[name] = data
    try:
        result = pipeline.run(model, feeds.get("calibration"), evaluation=feeds.get("evaluation"), progress=progress)
        reproduced = result.model
    except AccuracyFloorError as err:
        if not lock.below_floor or err.result is None:
            raise
        reproduced = err.result.model  # the recorded run kept its output below the floor too
    digest = model_digest(reproduced)
    outcome = ReplayResult(lock=lock, model=reproduced, digest=digest, identical=digest == lock.output_digest,
                           notes=notes)
    if not outcome.identical and not lock.deterministic:
        _compare_with_recorded(outcome, pipeline, model, feeds)
    if output is not None:
        outcome.output = save(reproduced, output)
    return outcome


def _version_notes(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    changed = [f"{name} {recorded[name]} -> {now.get(name, 'absent')}" for name in recorded
               if recorded[name] != now.get(name, "absent")]
    if not changed:
        return []
    return [f"versions changed since the lockfile was written ({'; '.join(changed)}): "
            "the output may differ"]


def _check_target(lock: Lock) -> None:
    """A user's target profile that changed since the lockfile is an error (its settings steer the passes)."""
    if lock.target_profile is None or lock.target_digest is None or not lock.target_profile.is_file():
        return
    found = _file_sha256(lock.target_profile)
    if found != lock.target_digest:
        raise DataError(f"{lock.target_profile}: the target profile changed since {lock.path.name} was written: "
                        f"sha256 {found}, the lockfile has {lock.target_digest}")


def _compare_with_recorded(outcome: ReplayResult, pipeline: Any, model: ir.Model, feeds: dict[str, Any]) -> None:
    """Score the reproduced model's outputs against the recorded output's (a nondeterministic run)."""
    from onnxpress.cache import model_digest
    from onnxpress.feeds import random_feeds
    from onnxpress.io import load
    from onnxpress.metrics import compare

    lock = outcome.lock
    recorded = lock.output_path
    if recorded is None:
        outcome.notes.append("the recorded output is gone, so the outputs cannot be compared")
        return
    if lock.tolerance is None:
        outcome.notes.append("the lockfile records no tolerance, so the outputs cannot be compared")
        return
    reference = load(recorded)
    if lock.file_digest is not None and model_digest(reference) != lock.file_digest:
        outcome.notes.append(f"{recorded} changed since the lockfile was written, so it is no reference")
        return
    source = feeds.get("evaluation") or feeds.get("calibration")
    chosen = (source.take(_COMPARE_SAMPLES) if source is not None
              else random_feeds(model, 4, seed=lock.seed, input_shapes=pipeline.input_shapes))
    runner = pipeline.runner()
    stats = compare(runner.outputs(reference, chosen), runner.outputs(outcome.model, chosen))
    score = min((s.score for s in stats.values()), default=1.0)
    outcome.cosine = score if math.isfinite(score) else 0.0
    outcome.within_tolerance = outcome.cosine >= lock.tolerance
