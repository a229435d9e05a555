"""The runner: the one way to ONNX Runtime.

:class:`Runner` is the only code that builds ``SessionOptions`` and ``InferenceSession``s. It
runs a model on a target profile's providers and session options and offers its outputs over
feeds, latency (the profile's warm-up and run counts; median and p90), peak memory, the node
placement ONNX Runtime really chose in a built session, and the int8/float kernel census.

A model is serialised once per content fingerprint, however often it is run, timed or probed:
the serialised form (bytes, or past the protobuf limit a private folder with external data)
is kept in a small cache shared by every runner. ONNX Runtime never gets a user's path.

Under ``sandbox.limited`` (always in the CLI) sessions are built and run in the limited block's
warm worker process, which keeps the models it was sent: a hostile graph that hangs or blows
up becomes one clear error. Feeds that ran there once are safe to run in-process afterwards
(``sandboxed=False``), which is what the passes' repeated measurements do.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import statistics
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import _proto, _segments, _weights, sandbox
from onnxpress.errors import DataError, ProviderError
from onnxpress.progress import Report, Tracker

if TYPE_CHECKING:
    from onnxpress.targets import Target

logger = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

INT8_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QGemm", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QAttention", "QLinearReduceMean", "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "QLinearWhere",
    "QLinearConvTranspose", "NhwcQLinearConv", "QOrderedMatMul", "MatMulNBits",
})
FLOAT_COMPUTE_KERNELS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "Attention",
    "MultiHeadAttention", "NhwcConv", "NhwcFusedConv", "ConvGrad", "Einsum",
})
QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}) | INT8_KERNELS


class CheckFailed(Exception):
    """The ONNX checker rejected a model; the message is the checker's first line."""


class RunFailed(RuntimeError):
    """ONNX Runtime could not build a session or run a feed in the limited worker."""


class _NotCached(LookupError):
    """The worker does not hold the model it was asked to run (it was restarted): send it."""


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises when it cannot load or run a model."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidGraph", "InvalidArgument", "NoSuchFile", "RuntimeException",
             "NotImplemented", "EPFail", "InvalidProtobuf", "EngineError")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError,)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class Settings:
    """Session settings: providers in order with their options, threads, optimisation level."""

    providers: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (("CPUExecutionProvider", ()),)
    threads: int = 0
    inter_threads: int = 0
    optimization: str = "all"

    def __post_init__(self) -> None:
        if self.optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}, got {self.optimization!r}")

    @classmethod
    def of(cls, target: Target) -> Settings:
        return cls(tuple((name, tuple(sorted(options.items()))) for name, options in target.provider_list()),
                   target.intra_op_threads, target.inter_op_threads, target.optimization)

    @property
    def primary(self) -> str:
        return self.providers[0][0]

    @property
    def cpu_only(self) -> bool:
        return all(name == "CPUExecutionProvider" for name, _ in self.providers)


@dataclass(frozen=True)
class Timing:
    """How latency is measured: warm-up runs, then runs until both ``min_runs`` and ``min_seconds``."""

    warmup: int = 5
    min_runs: int = 20
    max_runs: int = 1000
    min_seconds: float = 0.5

    @classmethod
    def of(cls, target: Target) -> Timing:
        return cls(target.warmup, target.min_runs, target.max_runs, target.min_seconds)


@dataclass
class Latency:
    """Latency of one model on one feed, in milliseconds, after warm-up."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    segments: int = 1  # run piecewise: the sums over this many segments' sessions

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Placed:
    """One node of ONNX Runtime's optimised graph and the provider that ran it."""

    node: str
    op_type: str
    provider: str
    output_types: tuple[str, ...]


@dataclass(frozen=True)
class _Request:
    """What a session is built for: sent to the worker as is (it pickles)."""

    settings: Settings
    feeds: tuple = ()
    keep: int | None = None
    check: bool = False
    quick_runs: int = 0
    timing: Timing | None = None
    census: bool = False
    placement: bool = False
    quiet: bool = False
    reference: bool = False  # run with onnx.reference: the provider has no kernels for the model's types
    segment_bytes: int | None = None  # run piecewise in segments of at most this many bytes of weights


@dataclass
class RunResult:
    """Outputs of the kept feeds, and what else was asked for."""

    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    quick_latency_ms: float | None = None
    latency: Latency | None = None
    census: dict[str, Any] | None = None
    placement: list[Placed] | None = None


# ----------------------------------------------------------------------------- sessions


class Session:
    """An ONNX Runtime session over a serialised model (bytes, or a path in our own folder).

    Built by :class:`Runner` (``Runner.session``); use as a context manager or ``close()``.
    """

    def __init__(self, source: bytes | str, settings: Settings, *, profile_dir: str | None = None,
                 optimized_path: str | None = None, save_format: str | None = None, quiet: bool = False) -> None:
        import onnxruntime as ort

        names = [name for name, _ in settings.providers]
        missing = [name for name in names if name not in ort.get_available_providers()]
        if missing:
            raise ProviderError(f"execution provider(s) {missing} not available in this onnxruntime "
                                f"build (available: {ort.get_available_providers()})")
        options = ort.SessionOptions()
        options.log_severity_level = 4 if quiet else 3  # quiet: failures are expected (trials)
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = settings.inter_threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[settings.optimization])
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "profile")
        if optimized_path is not None:
            options.optimized_model_filepath = optimized_path
            if save_format is not None:
                options.add_session_config_entry("session.save_model_format", save_format)
        self.session = ort.InferenceSession(source, sess_options=options, providers=names,
                                            provider_options=[dict(opts) for _, opts in settings.providers])
        # ONNX Runtime drops a provider it cannot start (CUDA libraries missing, a CUDA context
        # refused) with only a log line, and runs everything on the CPU: never take that.
        self.providers: list[str] = list(self.session.get_providers())
        if self.providers[:1] != names[:1]:
            raise ProviderError(f"ONNX Runtime did not enable {names[0]} (session providers: "
                                f"{', '.join(self.providers)}); the model would run elsewhere")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: Feed, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once (only the model's inputs are taken from ``feed``); returns outputs by name."""
        names = list(outputs) if outputs is not None else self.output_names
        values = self.session.run(names, {name: feed[name] for name in self.input_names})
        return dict(zip(names, values))

    def run_all(self, feeds: Iterable[Feed]) -> list[dict[str, np.ndarray]]:
        return [self.run(feed) for feed in feeds]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(source: bytes | str) -> None:
    """The full ONNX checker (with shape inference) on the very serialisation ONNX Runtime gets."""
    try:
        if isinstance(source, bytes):
            _proto.check_proto(_proto.parse(source))
        else:
            _proto.check_path(source)
    except (_proto.CheckerError, _proto.ShapeInferenceError) as err:
        raise CheckFailed(_first_line(err)) from err


def _perform(source: bytes | str, request: _Request, progress: Report | None = None) -> RunResult:
    """Build one session for ``request`` and do what it asks (in the worker or in-process);
    ``progress`` is told how far a latency measurement got (in-process only)."""
    if request.check:
        _check(source)
    if request.reference:
        return _perform_reference(source, request)
    if request.segment_bytes is not None:
        assert isinstance(source, str), "a model run piecewise is a file in the workspace"
        return _perform_piecewise(source, request, progress)
    result = RunResult()
    with tempfile.TemporaryDirectory(prefix="onnxpress-session-") as folder:
        optimized = str(Path(folder) / "optimized.onnx") if request.census else None
        session = Session(source, request.settings, profile_dir=folder if request.placement else None,
                          optimized_path=optimized, quiet=request.quiet)
        for index, feed in enumerate(request.feeds):
            outputs = session.run(feed)
            if request.keep is None or index < request.keep:
                result.outputs.append(outputs)
        if request.placement:
            result.placement = _placement(session.session.end_profiling())
        if request.feeds and request.quick_runs:
            result.quick_latency_ms = float(np.median(_times(session, request.feeds[0], request.quick_runs)))
        if request.feeds and request.timing is not None:
            result.latency = _measure(session, request.feeds[0], request.timing, progress)
        if optimized is not None:
            result.census = _census(optimized)
    return result


def _perform_piecewise(source: str, request: _Request, progress: Report | None = None) -> RunResult:
    """``_perform`` for a model past the session budget: one segment's session at a time.

    Every feed goes through a segment before the next segment's session is built. Latency is
    the sum of the segments' medians (p90s, means), each timed on the first feed's values at its
    border; the kernel census and the placement add up the segments'.
    """
    assert request.segment_bytes is not None
    plan = _segments.Plan(source, request.segment_bytes)
    activations = [dict(feed) for feed in request.feeds]
    result = RunResult()
    census: dict[str, int] = {}
    placed: list[Placed] = []
    latencies: list[Latency] = []
    quick = 0.0
    tracker = Tracker(progress, "segments", len(plan), "segments")
    with tempfile.TemporaryDirectory(prefix="onnxpress-session-") as folder:
        for index in range(len(plan)):
            optimized = str(Path(folder) / f"optimized-{index}.onnx") if request.census else None
            session = _segment_session(plan, index, activations[0] if activations else None, request.settings,
                                       profile_dir=folder if request.placement else None, optimized_path=optimized,
                                       quiet=request.quiet)
            outputs = plan.segments[index].outputs
            for values in activations:
                values.update(session.run(values, outputs))
            if activations and request.quick_runs:
                quick += float(np.median(_times(session, activations[0], request.quick_runs)))
            if activations and request.timing is not None:
                latencies.append(_measure(session, activations[0], request.timing))
            if request.placement:
                placed.extend(_placement(session.session.end_profiling()))
            session.close()
            if optimized is not None:
                for op, count in _census(optimized)["ops"].items():
                    census[op] = census.get(op, 0) + count
                for leftover in Path(folder).glob(f"optimized-{index}*"):
                    leftover.unlink()
            for values in activations:
                plan.forget(index, values)
            tracker.update(index + 1, len(plan))
    tracker.end()
    keep = len(activations) if request.keep is None else request.keep
    result.outputs = [{name: values[name] for name in plan.output_names} for values in activations[:keep]]
    if request.quick_runs and activations:
        result.quick_latency_ms = quick
    if latencies:
        result.latency = Latency(median_ms=sum(x.median_ms for x in latencies), p90_ms=sum(x.p90_ms for x in latencies),
                                 mean_ms=sum(x.mean_ms for x in latencies), runs=min(x.runs for x in latencies),
                                 segments=len(latencies))
    if request.census:
        result.census = _census_of(census)
    if request.placement:
        result.placement = placed
    return result


def _segment_session(plan: _segments.Plan, index: int, sample: Feed | None, settings: Settings,
                     **options: Any) -> Session:
    """A session over segment ``index`` of ``plan`` (its file is gone once the session is built)."""
    path = plan.write(index, sample)
    try:
        return Session(str(path), settings, **options)
    finally:
        path.unlink(missing_ok=True)


class PiecewiseSession:
    """A session over a model past the session budget, for in-process streaming work
    (statistics, layer-wise comparisons): ``run`` builds each segment's session in turn, up
    to the last segment that makes an asked-for output, and drops it."""

    def __init__(self, source: str, settings: Settings, segment_bytes: int) -> None:
        self.plan = _segments.Plan(source, segment_bytes)
        self.settings = settings
        self.input_names = list(self.plan.input_names)
        self.output_names = list(self.plan.output_names)

    def run(self, feed: Feed, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        values = {name: feed[name] for name in self.input_names}
        for index in range(self.plan.needed_for(names)):
            session = _segment_session(self.plan, index, values, self.settings)
            values.update(session.run(values, self.plan.segments[index].outputs))
            session.close()
            self.plan.forget(index, values)
        return {name: values[name] for name in names}

    def run_all(self, feeds: Iterable[Feed]) -> list[dict[str, np.ndarray]]:
        return [self.run(feed) for feed in feeds]

    def close(self) -> None:
        self.plan = None  # type: ignore[assignment]

    def __enter__(self) -> PiecewiseSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# bfloat16 models on the CPU: ONNX Runtime's CPU provider has no bfloat16 kernels for most ops
# (Add, MatMul, Gemm, Softmax), so their outputs come from onnx.reference, up to this size.
REFERENCE_LIMIT_BYTES = 64 * 2**20


def computes_in(model: ir.Model, dtype: ir.DataType) -> bool:
    """Whether any node of ``model`` (subgraphs included) other than a Cast produces a ``dtype`` tensor."""
    return any(value.dtype == dtype for node in ir.traversal.RecursiveGraphIterator(model.graph)
               if node.op_type != "Cast" for value in node.outputs)


def _perform_reference(source: bytes | str, request: _Request) -> RunResult:
    """Outputs from ``onnx.reference`` (no session, no timing, kernels or placement)."""
    if request.timing is not None or request.census or request.placement:
        raise RunFailed("ONNX Runtime's CPU provider has no bfloat16 kernels: latency, kernels and placement "
                        "of a bfloat16 model are measured on its target (cuda), not here")
    outputs = _proto.reference_run(source, request.feeds)
    keep = len(outputs) if request.keep is None else request.keep
    return RunResult(outputs=outputs[:keep])


def _times(session: Session, feed: Feed, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        session.run(feed)
        times.append((time.perf_counter() - tick) * 1e3)
    return times


def _measure(session: Session, feed: Feed, timing: Timing, progress: Report | None = None) -> Latency:
    tracker = Tracker(progress, "latency", None, "runs")
    began = time.perf_counter()
    for _ in range(timing.warmup):
        session.run(feed)
    if timing.warmup:  # the runs ``min_seconds`` will take at the warm-up's pace: the step's total
        pace = (time.perf_counter() - began) / timing.warmup
        expected = timing.min_runs if pace <= 0 else math.ceil(timing.min_seconds / pace)
        tracker.update(0, min(timing.max_runs, max(timing.min_runs, expected)))
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < timing.max_runs and (len(times) < timing.min_runs
                                            or time.perf_counter() - started < timing.min_seconds):
        times.extend(_times(session, feed, 1))
        tracker.update(len(times), None if tracker.total is None else max(len(times), tracker.total))
    tracker.update(len(times), len(times))
    tracker.end()
    ordered = sorted(times)
    return Latency(median_ms=statistics.median(ordered), p90_ms=float(np.quantile(ordered, 0.9)),
                   mean_ms=statistics.fmean(ordered), runs=len(ordered))


def _placement(profile_path: str) -> list[Placed]:
    """Where ONNX Runtime really ran each node, read from the profile of a session's runs."""
    events = json.loads(Path(profile_path).read_text(encoding="utf-8"))
    placed, seen = [], set()
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time") and name not in seen:
            seen.add(name)
            args = event.get("args", {})
            types = tuple(next(iter(t)) for t in args.get("output_type_shape", []) if t)
            placed.append(Placed(name[:-len("_kernel_time")], args.get("op_name", "?"),
                                 args.get("provider", "?"), types))
    return placed


def _census(optimized_path: str) -> dict[str, Any]:
    """Op counts of the graph ONNX Runtime optimised (our own file: parsed, not admitted)."""
    proto = _proto.load_proto(optimized_path, load_external_data=False)
    ops: dict[str, int] = {}
    for node in _proto.all_nodes(proto):
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return _census_of(ops)


def _census_of(ops: dict[str, int]) -> dict[str, Any]:
    return {
        "int8": sum(c for op, c in ops.items() if op in INT8_KERNELS),
        "float": sum(c for op, c in ops.items() if op in FLOAT_COMPUTE_KERNELS),
        "qdq": sum(c for op, c in ops.items() if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")),
        "ops": dict(sorted(ops.items(), key=lambda item: -item[1])),
    }


# Models the worker holds, by content fingerprint (most recent last).
_HELD: collections.OrderedDict[str, bytes | str] = collections.OrderedDict()
_HELD_COUNT = 4


def _serve(key: str, source: bytes | str | None, request: _Request) -> RunResult:
    """The worker's side of :meth:`Runner.run`: the model comes once, then by its key."""
    if source is None:
        # A path is the parent's private copy of a large model, gone once the parent drops it.
        if key not in _HELD or (isinstance(_HELD[key], str) and not Path(_HELD[key]).exists()):
            raise _NotCached(key)
        source = _HELD[key]
    _HELD[key] = source
    _HELD.move_to_end(key)
    while len(_HELD) > _HELD_COUNT:
        _HELD.popitem(last=False)
    return _perform(source, request)


def _peak_memory(source: bytes | str, feed: dict, settings: Settings, segment_bytes: int | None = None) -> int:
    """Peak resident memory a session adds, built and run once (in a fresh process); a model run
    piecewise: the peak of its segments' sessions, one at a time."""
    def status(key: str) -> int:
        # VmHWM (peak resident) belongs to this process image; ru_maxrss would carry the
        # parent's peak over fork and exec.
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    import onnxruntime  # noqa: F401  (its import is not the session's memory)

    before = status("VmRSS")
    if segment_bytes is not None:
        assert isinstance(source, str)
        PiecewiseSession(source, settings, segment_bytes).run(feed)
        return max(0, status("VmHWM") - before)
    session = Session(source, settings)
    session.run(feed)
    return max(0, status("VmHWM") - before)


# ----------------------------------------------------------------------------- the runner


@dataclass
class _Artefact:
    """A model's serialised form: bytes, or the path of its graph file in the weights workspace."""

    source: bytes | str

    @property
    def nbytes(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else 0


def _serialised(model: ir.Model, key: str, *, as_file: bool = False) -> _Artefact:
    """Bytes, or for a large model (or one run piecewise) a graph file in the process's weights
    workspace whose tensors refer to data files there (``_weights.artefact``): the weights are
    never serialised whole into memory, and ONNX Runtime never sees a user's path."""
    if not as_file and not _weights.is_large(model):
        return _Artefact(_proto.to_bytes(model))
    return _Artefact(_weights.artefact(model, key))


# Serialised models by content fingerprint, shared by every runner (most recent last), each
# kept while a model object with that content lives (a search's discarded candidates go).
_ARTEFACTS: collections.OrderedDict[str, _Artefact] = collections.OrderedDict()
_OWNERS: dict[str, weakref.WeakSet] = {}


def _drop(key: str) -> None:
    """Forget ``key`` (a large model's graph file stays in the workspace with the weights it refers to)."""
    _ARTEFACTS.pop(key, None)
    _OWNERS.pop(key, None)


def _release(key: str) -> None:
    """A model that used ``key`` is gone: drop the artefact when no model with that content lives."""
    owners = _OWNERS.get(key)
    if owners is not None and not any(True for _ in owners):  # iterating skips dead references
        _drop(key)
_ARTEFACT_COUNT = 3  # validate alternates two models (candidate, reference); a third is the next one
_ARTEFACT_BYTES = 512 << 20


class Runner:
    """Runs models on a target profile's providers and session options.

    Args:
        target: a built-in profile name, a profile file, or a loaded ``Target``.

    Every method that runs a model takes ``sandboxed``: None (the default) runs in the
    limited worker when ``sandbox.limited`` is in force, else in-process; False always runs
    in-process (for feeds already proven in the worker).
    """

    def __init__(self, target: str | Target | Any = "cpu") -> None:
        from onnxpress import targets

        self.target = targets.load(target)
        self.settings = Settings.of(self.target)
        self.session_bytes = int(self.target.session_memory_mb * 2**20)

    def segment_bytes(self, model: ir.Model) -> int | None:
        """The segment size ``model`` runs piecewise in, or None when one session holds it: its
        weights exceed the target's ``session_memory_mb`` (segments of a quarter of it)."""
        if self.session_bytes <= 0 or _proto.weight_bytes(model) <= self.session_bytes:
            return None
        return max(1, self.session_bytes // 4)

    # -- serialisation

    def _artefact(self, model: ir.Model, *, keep: bool = True) -> tuple[str, _Artefact]:
        """The serialised form of ``model``, made once per content fingerprint while it is kept
        (``keep=False``: made if not kept already, and not kept, for one-shot models)."""
        from onnxpress.modelinfo import fingerprint

        key = fingerprint(model, content=True)
        artefact = _ARTEFACTS.get(key)
        as_file = self.segment_bytes(model) is not None
        if artefact is not None and as_file and isinstance(artefact.source, bytes):
            artefact = None  # kept as bytes for another runner's target: piecewise needs a file
        if artefact is None and not keep:
            return key, _serialised(model, key, as_file=as_file)
        if artefact is None:
            artefact = _ARTEFACTS[key] = _serialised(model, key, as_file=as_file)
        _ARTEFACTS.move_to_end(key)
        while len(_ARTEFACTS) > 1 and (len(_ARTEFACTS) > _ARTEFACT_COUNT or
                                       sum(a.nbytes for a in _ARTEFACTS.values()) > _ARTEFACT_BYTES):
            _drop(next(iter(_ARTEFACTS)))  # the oldest; the one just used stays
        owners = _OWNERS.setdefault(key, weakref.WeakSet())
        if model not in owners:
            owners.add(model)
            weakref.finalize(model, _release, key)
        return key, artefact

    def settings_for(self, model: ir.Model, optimization: str | None = None) -> Settings:
        """The session settings for ``model``: the target's, with ``optimization`` over its level.

        A float16 model on the CPU provider is optimised at most at ``extended``: onnxruntime
        1.32's CPU provider crashes (segfault) building an ``all``-level session for some float16
        graphs it has to run between Casts (a Transpose into a float16 MatMul; an LSTM's float16
        neighbours; reported upstream for fp16 models on the CPU provider at that level:
        microsoft/onnxruntime#15494, #26717), and the CPU is where such models are only checked
        (on the GPU they target, the level stays). Latency figures of float16 models on the CPU
        carry that level.
        """
        level = optimization or self.settings.optimization
        if self.settings.cpu_only and level == "all" and computes_in(model, ir.DataType.FLOAT16):
            level = "extended"
        return self.settings if level == self.settings.optimization else replace(self.settings, optimization=level)

    # -- in-process sessions

    def session(self, model: ir.Model, *, optimization: str | None = None) -> Session:
        """An in-process session (for streaming work: statistics, layer-wise comparisons).

        ``optimization`` overrides the target's level (``basic`` keeps intermediate tensors
        that fusions would swallow). Such models (with intermediates exposed) are used once:
        their serialised form is not kept.
        """
        settings = self.settings_for(model, optimization)
        artefact = self._artefact(model, keep=False)[1]
        segment_bytes = self.segment_bytes(model)
        if segment_bytes is not None:
            assert isinstance(artefact.source, str)
            return PiecewiseSession(artefact.source, settings, segment_bytes)  # type: ignore[return-value]
        return Session(artefact.source, settings)

    # -- runs

    def run(self, model: ir.Model, feeds: Sequence[Feed], *, keep: int | None = None, check: bool = False,
            quick_runs: int = 0, timing: bool = False, census: bool = False, placement: bool = False,
            quiet: bool = False, what: str = "ONNX Runtime session", sandboxed: bool | None = None,
            progress: Report | None = None) -> RunResult:
        """Build one session for ``model`` and run every feed in it.

        Args:
            keep: outputs of the first ``keep`` feeds are returned (all by default).
            check: first run the full ONNX checker on the serialisation; raises ``CheckFailed``.
            quick_runs: also time that many runs of the first feed (median in ``quick_latency_ms``).
            timing: also measure latency on the first feed as the target profile says.
            census: also count the kernels in ONNX Runtime's optimised graph.
            placement: also read from a profile which provider ran each node.
            quiet: ONNX Runtime logs nothing but fatal errors (for trials expected to fail).
            what: names the step in limit errors.
            progress: told how many timed runs of a latency measurement (``timing``) are done:
                as they go in this process, at the start and the end in the limited worker.

        Under limits, checker and ONNX Runtime failures in the worker come back as
        ``CheckFailed`` and ``RunFailed``; limits as ``sandbox.ResourceLimitError``.
        """
        reference = self.settings.cpu_only and computes_in(model, ir.DataType.BFLOAT16)
        if reference and _proto.weight_bytes(model) > REFERENCE_LIMIT_BYTES:
            raise RunFailed(f"{what}: ONNX Runtime's CPU provider has no bfloat16 kernels, and the model is too "
                            f"large for onnx.reference ({_proto.weight_bytes(model) / 2**20:.0f} MB > "
                            f"{REFERENCE_LIMIT_BYTES // 2**20} MB): check it on its target (cuda)")
        request = _Request(self.settings_for(model), tuple(feeds), keep, check, 0 if reference else quick_runs,
                           Timing.of(self.target) if timing else None, census, placement, quiet, reference,
                           None if reference else self.segment_bytes(model))
        limits = sandbox.current()
        if sandboxed is False or (sandboxed is None and limits is None):
            artefact = self._artefact(model)[1]  # held: its folder (large models) lives while used
            return _perform(artefact.source, request, progress if timing else None)
        if timing and progress is not None:  # the worker cannot call back: the step's start and end
            with Tracker(progress, "latency", None, "runs") as tracker:
                result = self._run_limited(model, request, limits, what)
                if result.latency is not None:
                    tracker.update(result.latency.runs, result.latency.runs)
            return result
        return self._run_limited(model, request, limits, what)

    def _run_limited(self, model: ir.Model, request: _Request, limits: Any, what: str) -> RunResult:
        """``run`` in the limited block's worker."""
        weights = _proto.weight_bytes(model) if request.segment_bytes is None else request.segment_bytes
        if limits is not None and limits.memory_bytes is not None and weights > limits.memory_bytes:
            raise sandbox.ResourceLimitError(
                f"{what}: the model's tensors hold {weights / 2**30:.2f} GiB, more than the memory limit of "
                f"{limits.memory_bytes / 2**30:.2f} GiB (raise it with --memory-limit-gb)")
        key, artefact = self._artefact(model)
        try:
            try:
                return sandbox.call("onnxpress.runtime:_serve", key, None, request, what=what,
                                    address_space=self.settings.cpu_only)
            except sandbox.SandboxedError as err:
                if err.kind != _NotCached.__name__:
                    raise
            return sandbox.call("onnxpress.runtime:_serve", key, artefact.source, request, what=what,
                                address_space=self.settings.cpu_only)
        except sandbox.SandboxedError as err:
            if err.kind == "CheckFailed":
                raise CheckFailed(err.message) from None
            if err.kind in ("ProviderError", "DataError"):
                raise (ProviderError if err.kind == "ProviderError" else DataError)(err.message) from None
            raise RunFailed(err.message) from None

    def outputs(self, model: ir.Model, feeds: Iterable[Feed], **options: Any) -> list[dict[str, np.ndarray]]:
        """The model's outputs on every feed (``run``'s options apply)."""
        return self.run(model, list(feeds), **options).outputs

    def latency(self, model: ir.Model, feed: Feed, *, sandboxed: bool | None = None,
                progress: Report | None = None) -> Latency:
        """Median and p90 latency of ``feed`` with the profile's warm-up and run counts;
        ``progress`` is told how many timed runs are done (a ``latency`` step, in runs)."""
        result = self.run(model, [feed], keep=0, timing=True, what="latency measurement", sandboxed=sandboxed,
                          progress=progress)
        assert result.latency is not None
        return result.latency

    def kernel_census(self, model: ir.Model, *, sandboxed: bool | None = None) -> dict[str, Any]:
        """What ONNX Runtime really runs: op counts of its optimised graph.

        ``int8`` counts integer compute kernels (QLinearConv, MatMulInteger, ...), ``float``
        float compute kernels (Conv, MatMul, FusedConv, ...), ``qdq`` the quantize/dequantize
        nodes left after fusion: a quantized model whose compute stayed float shows it here.
        """
        census = self.run(model, [], census=True, what="kernel census", sandboxed=sandboxed).census
        assert census is not None
        return census

    def placement(self, model: ir.Model, feed: Feed, *, sandboxed: bool | None = None) -> list[Placed]:
        """Which provider ONNX Runtime assigned each node of its optimised graph, from a profiled run."""
        placed = self.run(model, [feed], keep=0, placement=True, what="placement", sandboxed=sandboxed).placement
        assert placed is not None
        return placed

    def peak_memory(self, model: ir.Model, feed: Feed) -> int:
        """Peak resident host memory (bytes) a session adds, built and run once in a fresh process.

        On a GPU provider this is host memory (the CUDA context and libraries are most of it),
        not device memory. 0 when it cannot be measured (the reason is logged).
        """
        try:
            artefact = self._artefact(model)[1]
            return int(sandbox.call_fresh("onnxpress.runtime:_peak_memory", artefact.source,
                                          {k: np.asarray(v) for k, v in feed.items()}, self.settings_for(model),
                                          self.segment_bytes(model), what="peak memory probe"))
        except (sandbox.SandboxedError, sandbox.ResourceLimitError) as err:
            logger.warning("peak memory not measured: %s", err)
            return 0

    def save_optimized(self, model: ir.Model, path: str | Path, *, save_format: str = "ONNX",
                       optimization: str | None = None) -> Path:
        """Write ONNX Runtime's optimised form of ``model`` (``ORT`` format for mobile builds) to ``path``."""
        settings = Settings((("CPUExecutionProvider", ()),), 1, 1, optimization or self.settings.optimization)
        artefact = self._artefact(model)[1]
        Session(artefact.source, settings, optimized_path=str(path), save_format=save_format)
        return Path(path)

    def run_file(self, path: str | Path, feeds: Iterable[Feed]) -> list[dict[str, np.ndarray]]:
        """Outputs of a model file onnxpress itself wrote (an ORT-format bundle), on the CPU."""
        with Session(str(path), Settings()) as session:
            return session.run_all(feeds)


def run_model(model: ir.Model, feeds: Iterable[Feed], target: str | Target | Any = "cpu") -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on ``feeds`` on ``target`` (a shorthand for ``Runner(target).outputs``)."""
    return Runner(target).outputs(model, feeds)


def clear_cache() -> None:
    """Forget every serialised model (their private folders are removed)."""
    for key in list(_ARTEFACTS):
        _drop(key)
