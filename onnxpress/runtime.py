"""ONNX Runtime sessions over in-memory models, and inputs generated from a model's signature.

A model is handed to ONNX Runtime as bytes, or, past the protobuf limit, saved with external
data into a private temporary folder that lives as long as the session. ONNX Runtime never
gets a user's path.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress import _proto
from onnxpress.errors import DataError, ProviderError

logger = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]

# Value used for symbolic dimensions other than the leading (batch) one when inputs are made up.
DEFAULT_SYMBOLIC_DIM = 8

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
               "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class CheckFailed(Exception):
    """The ONNX checker rejected a model; the message is the checker's first line."""


def _checked(check, cleanup=None) -> None:
    try:
        check()
    except (_proto.CheckerError, _proto.ShapeInferenceError) as err:
        if cleanup:
            cleanup()
        raise CheckFailed(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from err


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class Session:
    """An ONNX Runtime session over an ``ir.Model``; use as a context manager or ``close()``.

    Args:
        model: the model.
        providers: execution providers in order; each a name or ``(name, options)``.
        threads: intra-op threads (0: ONNX Runtime's default).
        optimization: graph optimisation level: ``disable``, ``basic``, ``extended`` or ``all``.
        disable_fallback: forbid ONNX Runtime's silent fallback to the CPU provider.
        check: run the ONNX checker (full, with shape inference) on the very serialisation
            handed to ONNX Runtime; raises ``CheckFailed``.
    """

    def __init__(self, model: ir.Model, *, providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
                 threads: int = 0, inter_threads: int = 0, optimization: str = "all",
                 disable_fallback: bool = False, profile: bool = False, check: bool = False) -> None:
        import onnxruntime as ort

        if optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization must be one of {sorted(_OPT_LEVELS)}, got {optimization!r}")
        names = [p if isinstance(p, str) else p[0] for p in providers]
        missing = [name for name in names if name not in ort.get_available_providers()]
        if missing:
            raise ProviderError(f"execution provider(s) {missing} not available in this onnxruntime "
                                f"build (available: {ort.get_available_providers()})")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter_threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
        if profile:
            options.enable_profiling = True
        self._folder: Path | None = None
        provider_list = [p if isinstance(p, str) else p[0] for p in providers]
        provider_options = [{} if isinstance(p, str) else dict(p[1]) for p in providers]
        if _proto.fits_in_protobuf(model):
            proto = _proto.to_proto(model)
            if check:
                _checked(lambda: _proto.check_proto(proto))
            source: Any = proto.SerializeToString()
            del proto
        else:
            from onnxpress.io import save

            self._folder = Path(tempfile.mkdtemp(prefix="onnxpress-session-"))
            source = str(save(model, self._folder / "model.onnx", external_data=True))
            if check:
                _checked(lambda: _proto.check_path(source), cleanup=self.close)
        if profile:
            options.profile_file_prefix = str(self._scratch() / "profile")
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=provider_list,
                                                provider_options=provider_options)
        except BaseException:
            self.close()
            raise
        if disable_fallback:
            self.session.disable_fallback()
        # ONNX Runtime drops a provider it cannot start (CUDA libraries missing, a CUDA context
        # refused) with only a log line, and runs everything on the CPU: never take that.
        self.providers: list[str] = list(self.session.get_providers())
        if provider_list and self.providers[:1] != provider_list[:1]:
            self.close()
            raise ProviderError(f"ONNX Runtime did not enable {provider_list[0]} (session providers: "
                                f"{', '.join(self.providers)}); the model would run elsewhere")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _scratch(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="onnxpress-session-"))
        return self._folder

    def run(self, feed: Feed) -> dict[str, np.ndarray]:
        """Run once; returns outputs by name."""
        outputs = self.session.run(None, {name: feed[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))

    def run_all(self, feeds: Iterable[Feed]) -> list[dict[str, np.ndarray]]:
        return [self.run(feed) for feed in feeds]

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class Placed:
    """One node of ONNX Runtime's optimised graph and the provider that ran it."""

    node: str
    op_type: str
    provider: str
    output_types: tuple[str, ...]


def placement(model: ir.Model, feed: Feed, **session_options: Any) -> list[Placed]:
    """Where ONNX Runtime really ran each node: read from the profile of one run of ``feed``."""
    with Session(model, profile=True, **session_options) as session:
        session.run(feed)
        events = json.loads(Path(session.session.end_profiling()).read_text(encoding="utf-8"))
    placed = []
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            args = event.get("args", {})
            types = tuple(next(iter(t)) for t in args.get("output_type_shape", []) if t)
            placed.append(Placed(event["name"][:-len("_kernel_time")], args.get("op_name", "?"),
                                 args.get("provider", "?"), types))
    return placed


def run_model(model: ir.Model, feeds: Iterable[Feed], **session_options: Any) -> list[dict[str, np.ndarray]]:
    """Build a session, run every feed, close the session (limited under ``sandbox.limited``)."""
    return run_limited(model, list(feeds), what="ONNX Runtime session", **session_options)[0]


class RunFailed(RuntimeError):
    """ONNX Runtime could not build a session or run a feed in the limited child process."""


def run_limited(model: ir.Model, feeds: Sequence[Feed], *, what: str, keep: int | None = None,
                latency_runs: int = 0, **session_options: Any) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Build a session (``Session`` options), run every feed, optionally time the first one.

    Returns the outputs of the first ``keep`` feeds (all by default) and the median latency in
    ms of ``latency_runs`` runs of the first feed (None when not timed). Under
    ``sandbox.limited`` (the CLI) all of it, the checker's shape inference included, happens in
    a limited child process: a graph that hangs or exhausts memory becomes a
    ``ResourceLimitError`` naming ``what``; checker and ONNX Runtime failures come back as
    ``CheckFailed`` and ``RunFailed``. Feeds run there once are then safe to run in-process.
    """
    from onnxpress import sandbox

    limits = sandbox.current()
    if limits is None:
        return _run_and_time(model, feeds, keep, latency_runs, session_options)
    weights = _proto.weight_bytes(model)
    if limits.memory_bytes is not None and weights > limits.memory_bytes:
        raise sandbox.ResourceLimitError(
            f"{what}: the model's tensors hold {weights / 2**30:.2f} GiB, more than the memory limit of "
            f"{limits.memory_bytes / 2**30:.2f} GiB (raise it with --memory-limit-gb)")
    with contextlib.ExitStack() as stack:
        if _proto.fits_in_protobuf(model):
            source: Any = _proto.to_bytes(model)
        else:  # our own private copy: the child never sees a user's path
            from onnxpress.io import save

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxpress-limited-"))
            source = str(save(model, Path(folder) / "model.onnx", external_data=True))
        try:
            providers = session_options.get("providers", ("CPUExecutionProvider",))
            cpu_only = all((p if isinstance(p, str) else p[0]) == "CPUExecutionProvider" for p in providers)
            return sandbox.call("onnxpress.runtime:_run_serialised", source, list(feeds), keep, latency_runs,
                                session_options, what=what, address_space=cpu_only)
        except sandbox.SandboxedError as err:
            if err.kind == "CheckFailed":
                raise CheckFailed(err.message) from None
            if err.kind in ("ProviderError", "DataError"):
                raise (ProviderError if err.kind == "ProviderError" else DataError)(err.message) from None
            raise RunFailed(err.message) from None


def _run_serialised(source: bytes | str, feeds: list, keep: int | None, latency_runs: int,
                    session_options: dict) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """``run_limited``'s work in the child: the model comes as bytes or our private copy's path."""
    from onnxpress.io import load

    return _run_and_time(load(source), feeds, keep, latency_runs, session_options)


def _run_and_time(model: ir.Model, feeds: Sequence[Feed], keep: int | None, latency_runs: int,
                  session_options: dict) -> tuple[list[dict[str, np.ndarray]], float | None]:
    outputs = []
    with Session(model, **session_options) as session:
        for index, feed in enumerate(feeds):
            result = session.run(feed)
            if keep is None or index < keep:
                outputs.append(result)
        latency = None
        if feeds and latency_runs:
            times = []
            for _ in range(latency_runs):
                tick = time.perf_counter()
                session.run(feeds[0])
                times.append((time.perf_counter() - tick) * 1e3)
            latency = float(np.median(times))
    return outputs, latency


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises when it cannot load or run a model."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidGraph", "InvalidArgument", "NoSuchFile", "RuntimeException",
             "NotImplemented", "EPFail", "InvalidProtobuf", "EngineError")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError,)


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


def kernel_census(model: ir.Model, optimization: str = "all") -> dict[str, Any]:
    """What ONNX Runtime's CPU provider really runs: op counts of its optimised graph.

    ``int8`` counts integer compute kernels (QLinearConv, MatMulInteger, ...), ``float`` float
    compute kernels (Conv, MatMul, FusedConv, ...), ``qdq`` the quantize/dequantize nodes left
    after fusion: a quantized model whose compute stayed float shows it here.
    """
    import onnxruntime as ort

    from onnxpress.io import load, save

    with tempfile.TemporaryDirectory(prefix="onnxpress-census-") as folder:
        source = save(model, Path(folder) / "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        optimized = load(Path(folder) / "optimized.onnx")
        ops: dict[str, int] = {}
        for node in optimized.graph.all_nodes():
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "int8": sum(c for op, c in ops.items() if op in INT8_KERNELS),
        "float": sum(c for op, c in ops.items() if op in FLOAT_COMPUTE_KERNELS),
        "qdq": sum(c for op, c in ops.items() if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")),
        "ops": dict(sorted(ops.items(), key=lambda item: -item[1])),
    }

