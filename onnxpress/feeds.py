"""Feeds: the inputs a model takes, feeds generated from its signature, and feeds checked
against it (names, ranks, fixed dims, dtypes) with one clear line.

Generated inputs fit the model:

- A dimension the file declares as -1 or 0 is unknown, like a named one (Paddle exports write
  -1; a fixed 0 would only admit empty tensors).
- Shapes given by the user (``input_shapes``, ``--input-shape NAME=1x3x320x320``) come first;
  a dimension name they fix (``seq`` in ``input_ids``) holds for every input that uses it.
- The leading dimension is the batch (``batch``), and so is every dimension that shares its
  name. The channel axis of an image left unknown gets 3.
- Other unknown dimensions are searched: image sides (rank-4 inputs) among
  :data:`IMAGE_SIZES`, other lengths among :data:`SEQUENCE_LENGTHS`, and the first size for
  which the model runs on one generated feed (a trial run through the ``Runner``) is used.
  :class:`InputPlan` keeps what was chosen, with a note saying so for reports.
- Integer inputs that index a table (a ``Gather``, reached directly or through ``Cast``,
  ``Reshape``, ``Unsqueeze``, ``Squeeze``, ``Flatten`` or ``Identity``) are drawn in
  ``[0, rows)`` of the smallest table they index. Other integer inputs (masks, token type
  ids, flags) are 0 or 1, valid for almost every model. A table whose size cannot be read
  leaves its indices at 0 or 1.
- When no workable inputs can be made, a ``DataError`` asks for data or input shapes.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress.errors import DataError

if TYPE_CHECKING:
    from onnxpress.runtime import Runner

logger = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]
InputShapes = Mapping[str, Sequence[int]]

# Image sides tried, in order: the common classifier size first, then sizes whose multiples of
# 32 and 64 suit detectors with several strided levels, then small sizes for tiny models.
IMAGE_SIZES = (224, 320, 640, 32, 64, 128)
# Sequence lengths (tokens, audio samples, time steps) tried, in order.
SEQUENCE_LENGTHS = (16, 32, 128, 512, 64)
# Trial runs at most, over all combinations of image sizes and sequence lengths.
MAX_TRIALS = 12
# Ops an index goes through unchanged on its way to a Gather.
_INDEX_PASSTHROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_HINT = "give data, or the input shapes with --input-shape NAME=1x3x224x224 (input_shapes= in the API)"


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (``None`` or a name for unknown dims).

    A dimension the file declares as -1 or 0 is ``None``: unknown.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class InputPlan:
    """The concrete shapes and integer ranges of generated inputs, and how they were chosen.

    Attributes:
        shapes: input name -> shape.
        index_limits: integer input name -> the rows of the table it indexes (ids are drawn
            in ``[0, rows)``); integer inputs not listed get 0 or 1.
        notes: sentences for a report: the sizes found by trial runs, the shapes given, the
            id ranges read from tables.
    """

    shapes: dict[str, tuple[int, ...]]
    index_limits: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The graph inputs that need a feed (initializers listed as inputs are skipped)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(_dim(d) for d in value.shape)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def _dim(dim: int | ir.SymbolicDim) -> int | str | None:
    if isinstance(dim, int):
        return dim if dim > 0 else None  # -1 (Paddle) and 0 mean unknown
    return dim.value or None


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"NAME=1x3x320x320"`` as ``("NAME", (1, 3, 320, 320))``; commas also separate dims.

    The name is what comes before the last ``=`` (input names may hold ``:`` or ``/``).

    Raises:
        ValueError: one line saying what is wrong and what is expected.
    """
    name, sign, dims = text.rpartition("=")
    if not sign or not name.strip():
        raise ValueError(f"'{text}' is not NAME=DIMS (for example images=1x3x320x320)")
    parts = dims.replace(",", "x").split("x")
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"'{text}': the dims must be positive integers separated by 'x' "
                         "(for example images=1x3x320x320)")
    shape = tuple(int(p) for p in parts)
    if any(d <= 0 for d in shape):
        raise ValueError(f"'{text}': every dim must be at least 1")
    return name.strip(), shape


def check_input_shapes(shapes: InputShapes | None, where: str = "input_shapes") -> dict[str, tuple[int, ...]]:
    """``shapes`` as ``{name: tuple of positive ints}``.

    Raises:
        ValueError: ``{where}: ...`` naming the input and the bad value.
    """
    checked = {}
    for name, shape in (shapes or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: input names must be non-empty strings, got {name!r}")
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
            raise ValueError(f"{where}: the shape of '{name}' must be a list of positive integers, got {shape!r}")
        dims = tuple(shape)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in dims):
            raise ValueError(f"{where}: the shape of '{name}' must be a list of positive integers, "
                             f"got {list(dims)}")
        checked[name] = tuple(int(d) for d in dims)
    return checked


def plan_inputs(model: ir.Model, *, input_shapes: InputShapes | None = None, batch: int = 1,
                runner: Runner | None = None, search: bool = True) -> InputPlan:
    """The shapes and ranges of inputs generated for ``model`` (see the module's rules).

    Args:
        input_shapes: shapes given by the user, by input name; they must match the declared
            rank and fixed dims.
        batch: the size of the leading dimension (and of dims sharing its name).
        runner: runs the trial feeds (default: the CPU). Under ``sandbox.limited`` trials run in
            the limited worker, as every run does.
        search: try sizes by trial runs; without it the first candidate size is taken as is.

    Raises:
        DataError: an input shape that does not fit the model, an input without a declared
            shape, an integer table of no rows, or no size the model runs with.
    """
    specs = input_specs(model)
    given = _fit_given(specs, check_input_shapes(input_shapes))
    names = _bind_names(specs, given, batch)
    notes = []
    if given:
        notes.append("inputs generated with the given shapes: "
                     + ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in given.items()))
    limits = _index_limits(model, specs, notes)
    kinds: dict[str | tuple[str, int], str] = {}  # unknown dim -> "image" or "sequence"
    fixed: dict[str | tuple[str, int], int] = dict(names)
    for spec in specs:
        if spec.name in given:
            continue
        if spec.shape is None:
            raise DataError(f"input '{spec.name}' has no declared shape: {_HINT}")
        _classify(spec, batch, fixed, kinds)
    if not kinds:
        return InputPlan(_shapes(specs, given, fixed, kinds, {}), limits, tuple(notes))
    image_sizes = _image_candidates(specs, given, kinds)
    wanted = sorted(set(kinds.values()))
    choices = [image_sizes if kind == "image" else SEQUENCE_LENGTHS for kind in wanted]
    combos = [dict(zip(wanted, sizes)) for sizes in itertools.islice(itertools.product(*choices), MAX_TRIALS)]
    if not search:
        sizes = combos[0]
        return InputPlan(_shapes(specs, given, fixed, kinds, sizes), limits, tuple(notes))
    if runner is None:
        from onnxpress import runtime

        runner = runtime.Runner("cpu")
    failures = []
    for sizes in combos:
        shapes = _shapes(specs, given, fixed, kinds, sizes)
        error = _trial(model, InputPlan(shapes, limits), runner)
        if error is None:
            described = _describe_sizes(specs, shapes, kinds, sizes)
            tried = "" if not failures else f"; {', '.join(f for f, _ in failures)} failed"
            what = "size" if len(sizes) == 1 else "sizes"
            notes.insert(0, f"inputs generated with {described} (the first {what} the model accepted{tried})")
            logger.info("generated inputs: %s", notes[0])
            return InputPlan(shapes, limits, tuple(notes))
        failures.append((_describe_sizes(specs, shapes, kinds, sizes), error))
        logger.debug("generated inputs: %s failed: %s", failures[-1][0], error)
    first, cause = failures[0]
    raise DataError(f"the model ran with none of the input sizes tried ({', '.join(f for f, _ in failures)}); "
                    f"at {first}: {cause}; {_HINT}")


def random_feeds(model: ir.Model, count: int, *, seed: int = 0, batch: int = 1,
                 input_shapes: InputShapes | None = None, plan: InputPlan | None = None,
                 runner: Runner | None = None) -> list[dict[str, np.ndarray]]:
    """Generate ``count`` feeds that fit ``model``.

    Floats are standard normal; integers index inside the tables they feed, else are 0 or 1;
    booleans are random. Shapes follow ``plan`` when given, else :func:`plan_inputs` with
    ``input_shapes``, ``batch`` and ``runner`` (which may try sizes with trial runs).
    """
    if plan is None:
        plan = plan_inputs(model, input_shapes=input_shapes, batch=batch, runner=runner)
    rng = np.random.default_rng(seed)
    return [_feed(model, plan, rng) for _ in range(count)]


def _feed(model: ir.Model, plan: InputPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for spec in input_specs(model):
        shape = plan.shapes.get(spec.name)
        if shape is None:
            raise DataError(f"input '{spec.name}' has no planned shape: {_HINT}")
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            feed[spec.name] = rng.integers(0, plan.index_limits.get(spec.name, 2), size=shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            raise DataError(f"input '{spec.name}' has dtype {spec.dtype}; inputs of that type "
                            "cannot be generated, give data")
    return feed


# ----------------------------------------------------------------------------- shapes


def _fit_given(specs: list[InputSpec], given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The given shapes, each checked against the input it names."""
    by_name = {spec.name: spec for spec in specs}
    for name, shape in given.items():
        spec = by_name.get(name)
        if spec is None:
            raise DataError(f"input shape given for '{name}', which the model does not take "
                            f"(inputs: {', '.join(by_name)})")
        if spec.shape is None:
            continue
        text = "x".join(map(str, shape))
        if len(shape) != len(spec.shape):
            raise DataError(f"input shape {name}={text} has rank {len(shape)}, the model's input has "
                            f"rank {len(spec.shape)} ({spec.describe()})")
        for axis, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise DataError(f"input shape {name}={text} has {got} on axis {axis}, the model wants "
                                f"{want} ({spec.describe()})")
    return given


def _bind_names(specs: list[InputSpec], given: dict[str, tuple[int, ...]], batch: int) -> dict[str, int]:
    """Dimension names bound to sizes: by the given shapes first, then leading dims to ``batch``."""
    names: dict[str, int] = {}
    for spec in specs:
        if spec.name in given and spec.shape is not None:
            for dim, size in zip(spec.shape, given[spec.name]):
                if isinstance(dim, str):
                    names.setdefault(dim, size)
    for spec in specs:
        if spec.shape and isinstance(spec.shape[0], str):
            names.setdefault(spec.shape[0], batch)
    return names


def _classify(spec: InputSpec, batch: int, fixed: dict, kinds: dict) -> None:
    """Give each unknown dim of ``spec`` a size (batch, channels) or a kind to search."""
    assert spec.shape is not None
    rank = len(spec.shape)
    channel = _channel_axis(spec.shape) if rank == 4 else None
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            continue
        key = dim if isinstance(dim, str) else (spec.name, axis)
        if key in fixed or key in kinds:
            continue
        if axis == 0:
            fixed[key] = batch
        elif axis == channel:
            fixed[key] = 3
        else:
            kinds[key] = "image" if rank == 4 else "sequence"


def _channel_axis(shape: tuple) -> int:
    """NHWC when the last axis is a small fixed size (1 to 4) and axis 1 is not; else NCHW."""
    last, second = shape[3], shape[1]
    if isinstance(last, int) and last <= 4 and not (isinstance(second, int) and second <= 4):
        return 3
    return 1


def _image_candidates(specs: list[InputSpec], given: dict, kinds: dict) -> tuple[int, ...]:
    """Image sides to try: a fixed side of a half-known image first (square images), then the rest."""
    first = []
    for spec in specs:
        if spec.name in given or spec.shape is None or len(spec.shape) != 4:
            continue
        axes = [a for a in range(1, 4) if a != _channel_axis(spec.shape)]
        known = [spec.shape[a] for a in axes if isinstance(spec.shape[a], int)]
        if len(known) == 1 and any(_key(spec, a) in kinds for a in axes):
            first.append(known[0])
    return tuple(dict.fromkeys(first + list(IMAGE_SIZES)))


def _key(spec: InputSpec, axis: int):
    assert spec.shape is not None
    dim = spec.shape[axis]
    return dim if isinstance(dim, str) else (spec.name, axis)


def _shapes(specs: list[InputSpec], given: dict, fixed: dict, kinds: dict, sizes: dict) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for spec in specs:
        if spec.name in given:
            shapes[spec.name] = given[spec.name]
            continue
        assert spec.shape is not None
        shapes[spec.name] = tuple(
            d if isinstance(d, int) else fixed.get(_key(spec, a)) or sizes[kinds[_key(spec, a)]]
            for a, d in enumerate(spec.shape))
    return shapes


def _describe_sizes(specs: list[InputSpec], shapes: dict, kinds: dict, sizes: dict) -> str:
    """``image size 320x320``, ``sequence length 16``, or both."""
    parts = []
    if "image" in sizes:
        side = f"{sizes['image']}x{sizes['image']}"
        for spec in specs:  # the first searched image as it is fed: a half-known one is not square
            if spec.shape is not None and len(spec.shape) == 4 and any(
                    kinds.get(_key(spec, a)) == "image" for a in range(4) if not isinstance(spec.shape[a], int)):
                channel = _channel_axis(spec.shape)
                side = "x".join(str(shapes[spec.name][a]) for a in range(1, 4) if a != channel)
                break
        parts.append(f"image size {side}")
    if "sequence" in sizes:
        parts.append(f"sequence length {sizes['sequence']}")
    return " and ".join(parts)


def _trial(model: ir.Model, plan: InputPlan, runner: Runner) -> str | None:
    """None when ``model`` runs on one feed of ``plan``, else the first line of the error."""
    from onnxpress import runtime

    feed = _feed(model, plan, np.random.default_rng(0))
    try:
        runner.run(model, [feed], keep=0, quiet=True, what="trying input sizes: ONNX Runtime session")
    except (runtime.RunFailed, *runtime.ort_errors()) as err:
        text = str(err).strip()
        line = text.splitlines()[0] if text else type(err).__name__
        return line if len(line) <= 200 else line[:197] + "..."
    return None


# ----------------------------------------------------------------------------- integer ranges


def _index_limits(model: ir.Model, specs: list[InputSpec], notes: list[str]) -> dict[str, int]:
    """Integer input -> the rows of the smallest table it indexes (through pass-through ops)."""
    limits = {}
    for spec in specs:
        if not np.issubdtype(spec.dtype, np.integer):
            continue
        value = next(v for v in model.graph.inputs if v.name == spec.name)
        tables = _tables_indexed(value)
        if not tables:
            continue
        rows, table = min(tables)
        if rows == 0:
            raise DataError(f"input '{spec.name}' indexes '{table}', a table of no rows; {_HINT}")
        limits[spec.name] = rows
        notes.append(f"input '{spec.name}': ids drawn in [0, {rows}), the rows of the table '{table}' it indexes")
    return limits


def _tables_indexed(value: ir.Value) -> list[tuple[int, str]]:
    """(rows, table name) of every Gather whose indices come from ``value`` and whose table
    size is known."""
    found, seen, stack = [], set(), [value]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type in _INDEX_PASSTHROUGH and index == 0:
                stack.extend(node.outputs)
            elif node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
                rows = _rows(node.inputs[0], node.attributes.get_int("axis", 0))
                if rows is not None:
                    found.append((rows, node.inputs[0].name or node.name or "?"))
    return found


def _rows(table: ir.Value, axis: int) -> int | None:
    """The size of ``table`` on ``axis`` (Gather's data): from its constant tensor, else a static shape."""
    tensor = ir.convenience.get_const_tensor(table)
    shape = tensor.shape if tensor is not None else table.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) and dim >= 0 else None


def unshaped_inputs(model: ir.Model) -> list[str]:
    """The graph inputs (needing a feed) that declare a type but no shape."""
    return [spec.name for spec in input_specs(model) if spec.shape is None]


def declare_ranks(model: ir.Model, feeds: Sequence[Feed], input_shapes: InputShapes | None = None) -> dict[str, int]:
    """Give each graph input declared without a shape the rank of its data, every dim unknown.

    ONNX Runtime feeds such an input any rank, but the ONNX checker refuses the model ("Field
    'shape' of 'type' is required but missing"), and ONNX has no unknown rank it accepts. With
    the rank taken from ``feeds`` (else from ``input_shapes``) and every dim unknown, as dims
    written -1 or 0 are on load, the model is checked and written as a valid file and still
    takes any size. Edits ``model`` in place; returns input name -> rank given.

    Raises:
        DataError: the feeds give an input in different ranks.
    """
    given = check_input_shapes(input_shapes)
    declared = {}
    for value in model.graph.inputs:
        if value.shape is not None or value.name in model.graph.initializers:
            continue
        ranks = {np.ndim(feed[value.name]) for feed in feeds if value.name in feed}
        if not ranks and value.name in given:
            ranks = {len(given[value.name])}
        if len(ranks) > 1:
            raise DataError(f"input '{value.name}' declares no shape and the data gives it ranks "
                            f"{sorted(ranks)}: give it in one rank")
        if ranks:
            rank = ranks.pop()
            value.shape = ir.Shape([None] * rank)
            declared[value.name] = rank
    return declared


def check_feed(model: ir.Model, feed: Feed, where: str = "data") -> None:
    """Raise ``DataError`` unless ``feed`` has every input with the right rank, fixed dims and dtype."""
    fit_feed(input_specs(model), feed, where, cast=False)


# Casts that keep every value a source can give: token ids between int32 and int64 (range
# checked), and float64 (numpy's default) down to float32.
_SAFE_CASTS = frozenset({(np.dtype(np.int32), np.dtype(np.int64)), (np.dtype(np.int64), np.dtype(np.int32)),
                         (np.dtype(np.float64), np.dtype(np.float32))})

Hint = Callable[[InputSpec, np.ndarray], "str | None"]


def fit_feed(specs: Sequence[InputSpec], feed: Feed, where: str, *, given: str = "the data gives",
             hint: Hint | None = None, cast: bool = True) -> dict[str, np.ndarray]:
    """``feed`` checked against the model's inputs, with the safe dtype casts applied.

    Every input must be there (and nothing else), with the declared rank, fixed dims and dtype.
    With ``cast``, int32 and int64 convert into each other (values in range) and float64 into
    float32; any other dtype difference is an error.

    Args:
        specs: the model's inputs (:func:`input_specs`).
        where: starts every message: what the data is and where it comes from.
        given: the subject of a mismatch, with its verb: ``the images give``.
        hint: ``(spec, array)`` -> what to change, appended to a mismatch (None: nothing).
        cast: apply the safe casts; without it any dtype difference is an error.

    Raises:
        DataError: one line naming the input, what it wants, what was given and the hint, e.g.
            ``calibration (imgs): input 'x' wants float32 [batch,3,224,224], the images give
            [1,3,32,32]: pass --image-size 224x224``.
    """
    by_name = {spec.name: spec for spec in specs}
    missing = sorted(set(by_name) - set(feed))
    if missing:
        raise DataError(f"{where}: missing input(s) {missing}; the model takes {sorted(by_name)}, "
                        f"{given} {sorted(feed)}")
    unknown = sorted(set(feed) - set(by_name))
    if unknown:
        raise DataError(f"{where}: unknown input(s) {unknown}; the model takes {sorted(by_name)}")
    fitted = {}
    for name, spec in by_name.items():
        array = np.asarray(feed[name])
        if array.dtype != spec.dtype and cast and (array.dtype, spec.dtype) in _SAFE_CASTS:
            array = _cast(array, spec.dtype, where, name)
        problem = _mismatch(spec, array)
        if problem is not None:
            extra = hint(spec, array) if hint is not None else None
            raise DataError(f"{where}: input '{name}' wants {spec.dtype} {_dims(spec.shape)}, {given} {problem}"
                            + (f": {extra}" if extra else ""))
        fitted[name] = array
    return fitted


def _cast(array: np.ndarray, dtype: np.dtype, where: str, name: str) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and array.size:
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise DataError(f"{where}: input '{name}' wants {dtype} and its {array.dtype} values do not fit "
                            f"({array.min()} to {array.max()})")
    return array.astype(dtype)


def _mismatch(spec: InputSpec, array: np.ndarray) -> str | None:
    """What ``array`` gives where it does not fit ``spec`` (dtype and shape), else None."""
    if array.dtype != spec.dtype:
        return f"{array.dtype} {_dims(array.shape)}"
    if spec.shape is None:
        return None
    if array.ndim != len(spec.shape) or any(isinstance(want, int) and got != want
                                            for got, want in zip(array.shape, spec.shape)):
        return _dims(array.shape)
    return None


def _dims(shape: Sequence[int | str | None] | None) -> str:
    """``[batch,3,224,224]``: fixed sizes, dim names, ``?`` for unknown dims."""
    if shape is None:
        return "[?]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
