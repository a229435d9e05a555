"""FP16: compute in float16 (or bfloat16), node by node, with float32 kept where it must be."""
from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress import _proto
from onnxpress.context import Pass, PassResult
from onnxpress.passes import _fp16_graph as edits
from onnxpress.passes import _fp16_rules as rules
from onnxpress.passes._common import constant, reject_option

logger = logging.getLogger(__name__)

Dtype = Literal["float16", "bfloat16"]

# A calibrated range this close to the type's limit keeps the node float32: calibration data
# is a sample, and unseen inputs go further (4x headroom).
_MARGIN = 4.0
# A node a range rule keeps (Exp, variance, sums) is converted on calibration evidence only
# with more headroom: a square's range grows with the square of its input's.
_LIFT_MARGIN = 16.0
# Ops that only move data: converted alone between float32 nodes they would only add Casts.
_MOVES = frozenset(("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Identity", "Expand",
                    "Tile", "Concat", "Split", "Pad", "DepthToSpace", "SpaceToDepth"))
# Ops whose outputs are far smaller than their inputs: a guard's cascade stops at them.
_SHRINKS = frozenset(("Div", "Log", "Sqrt", "Reciprocal", "Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Erf",
                      "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Sign", "ArgMax", "ArgMin"))
_BF16_ON_CPU = ("ONNX Runtime's CPU provider has no bfloat16 kernels for most ops (Add, MatMul, Softmax): "
                "run it on CUDA (compute capability 8.0+); check small models with onnx.reference")


class FP16(Pass, ir.passes.InPlacePass):
    """Convert float32 tensors and ops to float16 (or bfloat16), deciding node by node.

    Each node that computes in float32 is converted unless one of three signals says it must
    stay float32, and then the statistics say why (``nodes_kept``: node -> reason):

    1. Static rules, always: ops of other domains, ops whose ONNX schema has no ``dtype`` form
       at the model's opset (Range), the ``block``/``exclude`` options, constants beyond the
       type's range that are no infinity sentinel, and (float16's range) Exp of an input not
       bounded below 11.09 (no ``x - ReduceMax(x)`` before it), ``Pow(x, p >= 2)`` and
       ReduceSum/ReduceSumSquare/ReduceL2/CumSum of inputs not bounded to fit, and the variance
       path of a decomposed normalisation (``(x - mean)²`` → ReduceMean → Add ε → Sqrt), which
       overflows above ``|x - mean| = 256``. Bounds are intervals propagated from constants and
       bounded ops (Sigmoid, Softmax, Tanh, Clip, Relu, LayerNormalization, weight layers of a
       bounded input, ``x - ReduceMax(x)``); ``proven_in_range`` counts nodes they prove safe.
    2. Calibration ranges, with calibration data (float16 only; bfloat16 has float32's
       range): a node whose output reaches a quarter of float16's 65504 stays float32, and a
       node a range rule kept is converted when its range stays below a sixteenth
       (``lifted_by_calibration``).
    3. Measured error (``measure``; ``"auto"``: when there is data and the runner has kernels
       for the type): the converted model runs on the evaluation data with every intermediate
       exposed, and a node whose output's relative error exceeds its inputs' by more than
       ``tolerance``, or that makes Inf/NaN float32 does not, stays float32; up to ``rounds``
       rounds. ONNX Runtime's CPU provider runs float16 ops it has no kernel for in float32
       between Casts: there the measurement sees each node's rounding and overflow of its
       output, not its internal accumulation.

    Known failure patterns are fixed rather than blocked (``fixes``): constants holding
    "minus infinity" sentinels (finfo(float32).min, -1e9) become -1e4 in float16 (what ONNX
    Runtime's transformer optimizer writes: finite however many masks are summed, and 0 after
    exp), instead of -inf and NaN rows; bounds of Clip/Max/Min beyond the range become the
    largest finite value; an epsilon of ``Add(variance, ε) → Sqrt`` that rounds to 0 is raised
    to the smallest subnormal (where its variance path converts); Casts to float32 inside
    converted regions are retargeted and lossless Cast round trips removed; inputs whose type
    constraint is not the converted type (Resize's ``scales``, and its ``roi`` by choice) stay
    float32. LayerNormalization converts as it is: its ``stash_type`` (float32 by default)
    computes mean and variance in float32 (ONNX spec).

    If/Loop/Scan bodies are converted with their outer node: a converted node's body inputs
    and outputs are of the converted type, and values from the outer scope are cast inside the
    body where its consumers want the other type. ``keep_io_types`` (default) keeps the graph's
    inputs and outputs float32, with Casts at the boundary; boundaries between float32 and
    converted nodes get one Cast per value and graph, shared by its consumers. float64 is left
    alone; a model that already computes in float16/bfloat16 is left as it is
    (``modified=False``), so a second run changes nothing.

    bfloat16: only the precision rule applies (the variance path stays float32); ONNX
    Runtime's CPU provider lacks bfloat16 kernels, so no measurement runs there (``runs_on``).

    Options: ``dtype``, ``keep_io_types``, ``block`` (op types kept float32), ``exclude``
    (node names kept float32), ``tolerance``, ``measure`` (True needs calibration data),
    ``rounds``, ``samples`` (evaluation feeds measured), ``calibration_samples``.
    Preconditions: bfloat16 needs opset 13 or later. Unused float32 constants are left for
    ``simplify``.
    """

    name = "fp16"
    lossless = False
    needs_data = False

    def __init__(self, *, dtype: Dtype = "float16", keep_io_types: bool = True, block: list[str] | None = None,
                 exclude: list[str] | None = None, tolerance: float = 0.01,
                 measure: Literal["auto"] | bool = "auto", rounds: int = 3, samples: int = 4,
                 calibration_samples: int = 64) -> None:
        super().__init__()
        reject_option(dtype not in rules.LOW, "fp16", "dtype", "float16 or bfloat16", dtype)
        reject_option(not isinstance(keep_io_types, bool), "fp16", "keep_io_types", "true or false", keep_io_types)
        reject_option(not isinstance(tolerance, (int, float)) or not 0.0 < tolerance < 1.0,
                      "fp16", "tolerance", "in (0, 1)", tolerance)
        reject_option(measure not in ("auto", True, False), "fp16", "measure", "'auto', true or false", measure)
        reject_option(not isinstance(rounds, int) or rounds < 1, "fp16", "rounds", ">= 1", rounds)
        reject_option(not isinstance(samples, int) or samples < 1, "fp16", "samples", ">= 1", samples)
        reject_option(not isinstance(calibration_samples, int) or calibration_samples < 1,
                      "fp16", "calibration_samples", ">= 1", calibration_samples)
        for option, names in (("block", block), ("exclude", exclude)):
            reject_option(names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)),
                          "fp16", option, "a list of strings", names)
        self.dtype = dtype
        self.keep_io_types = keep_io_types
        self.block = list(block or [])
        self.exclude = list(exclude or [])
        self.tolerance = float(tolerance)
        self.measure = measure
        self.rounds = rounds
        self.samples = samples
        self.calibration_samples = calibration_samples

    def needs_calibration(self, model: ir.Model) -> bool:
        """``measure=True`` needs data; the rest runs on static rules without it."""
        return self.measure is True

    def requires(self, model: ir.Model) -> None:
        super().requires(model)
        opset = _opset(model)
        if self.dtype == "bfloat16" and opset < 13:
            raise ir.passes.PreconditionError(
                f"fp16: dtype bfloat16 needs opset >= 13 (Cast and the arithmetic ops take bfloat16 from "
                f"there); the model has opset {opset}")

    def remedy(self, floor: float) -> FP16 | None:
        """The same conversion with every node measured, at a tenth of the tolerance."""
        if self.measure is True and self.tolerance <= 1e-4:
            return None
        return self.with_options(measure=True, tolerance=max(1e-4, self.tolerance / 10))

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        stats: dict[str, Any] = {"dtype": self.dtype, "keep_io_types": self.keep_io_types}
        if self.dtype == "bfloat16":
            stats["runs_on"] = _BF16_ON_CPU
        typed = model.clone()
        # Best effort: values it cannot type stay unknown, and nodes reading them stay float32.
        common_passes.ShapeInferencePass()(typed)
        nodes = list(ir.traversal.RecursiveGraphIterator(typed.graph))
        already = [n for n in nodes if n.op_type not in ("Cast", "Constant")
                   and any(v.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) for v in n.outputs)]
        if already:
            stats.update(nodes_converted=0, nodes_kept={},
                         note=f"the model already computes in float16/bfloat16 ({len(already)} nodes): left as it is")
            return PassResult(model, modified=False, statistics=stats)
        if not any(_is_float(v) for n in nodes for v in (*n.inputs, *n.outputs)):
            stats.update(nodes_converted=0, nodes_kept={}, note="no float32 tensors: nothing to convert")
            return PassResult(model, modified=False, statistics=stats)
        opset = _opset(model)
        planner = _Planner(self, typed, nodes, opset)
        planner.static()
        sources = ["static rules"]
        context = self.context
        if context is not None and context.calibration is not None and self.dtype == "float16":
            planner.calibrated(context.statistics(model, limit=self.calibration_samples))
            sources.append("calibration ranges")
        planner.guard()
        planner.islands()
        planner.decide_casts()
        if self._measuring():
            rounds = planner.measured(self.context)
            if rounds is not None:
                stats["measured"] = rounds
                sources.append("measured error")
        elif self.measure == "auto" and self.dtype == "bfloat16" and context is not None:
            stats["measured"] = "skipped: " + _BF16_ON_CPU
        stats["decided_by"] = " + ".join(sources) + ("" if len(sources) > 1 else " (no calibration data)")
        converted = planner.converted
        labels = planner.labels
        stats["nodes_converted"] = len(converted)
        stats["nodes_kept"] = {labels[i]: planner.reasons[i] for i in sorted(planner.reasons)}
        stats["proven_in_range"] = planner.proven
        if planner.lifted:
            stats["lifted_by_calibration"] = planner.lifted
        stats["bytes_before"] = _proto.weight_bytes(model)
        if not converted:
            stats.update(casts_inserted=0, bytes_after=stats["bytes_before"], fixes={})
            logger.info("fp16: no node converted (%d kept float32)", len(planner.reasons))
            return PassResult(model, modified=False, statistics=stats)
        _copy_types(typed, model)
        applied = edits.apply(model, converted, dtype=self.dtype, keep_io_types=self.keep_io_types, opset=opset)
        stats["casts_inserted"] = applied.casts_inserted
        stats["fixes"] = {**{k: v for k, v in applied.fixes.items() if v},
                          "cast_pairs_removed": applied.cast_pairs_removed}
        stats["bytes_after"] = _proto.weight_bytes(model)
        logger.info("fp16: %d nodes converted to %s, %d kept float32, %d casts", len(converted), self.dtype,
                    len(planner.reasons), applied.casts_inserted)
        return PassResult(model, modified=True, statistics=stats)

    def _measuring(self) -> bool:
        context = self.context
        if context is None or (context.evaluation is None and context.calibration is None):
            return False
        if self.measure == "auto":
            return self.dtype == "float16" or not context.runner.settings.cpu_only
        return bool(self.measure)


def _opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == rules.FLOAT


def _copy_types(typed: ir.Model, model: ir.Model) -> None:
    """Give ``model``'s untyped values the types shape inference found on its clone ``typed``."""
    pairs = zip(ir.traversal.RecursiveGraphIterator(typed.graph), ir.traversal.RecursiveGraphIterator(model.graph))
    for source, target in pairs:
        for found, value in zip(source.outputs, target.outputs):
            if value.dtype is None and found.dtype is not None:
                value.type = ir.TensorType(found.dtype)
            if value.shape is None and found.shape is not None:
                value.shape = found.shape
    for source, target in zip(typed.graphs(), model.graphs()):
        for found, value in zip(source.inputs, target.inputs):
            if value.dtype is None and found.dtype is not None:
                value.type = ir.TensorType(found.dtype)


class _Planner:
    """The per-node decision on a typed clone: ``converted`` (traversal indices) and
    ``reasons`` (index -> why it stays float32)."""

    def __init__(self, owner: FP16, typed: ir.Model, nodes: list[ir.Node], opset: int) -> None:
        self.owner, self.typed, self.nodes, self.opset = owner, typed, nodes, opset
        self.dtype = owner.dtype
        self.index = {node: i for i, node in enumerate(nodes)}
        self.labels = [rules.node_label(n, i) for i, n in enumerate(nodes)]
        self.converted: set[int] = set()
        self.reasons: dict[int, str] = {}
        self.liftable: set[int] = set()  # kept by a range rule that calibration may lift
        self.lifted: dict[str, str] = {}
        self.casts: list[int] = []
        self.proven = 0
        self.risky: set[int] = set()  # kept for range: their outputs may not fit the type
        self.ranges: dict[str, float] = {}  # calibrated peak |value| per tensor

    def static(self) -> None:
        self.bounds = bounds = rules.static_bounds(self.nodes)
        variance = rules.variance_paths(self.nodes)
        limit = rules.MAX[self.dtype]
        for i, node in enumerate(self.nodes):
            values = [*node.inputs, *node.outputs]
            if node.op_type == "Constant" or not any(_is_float(v) for v in values):
                continue
            if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
                self.casts.append(i)
                continue
            reason = self._fixed_reason(node)
            if reason is None:
                reason = rules.range_rule(node, bounds, self.dtype, variance)
                if reason is not None:
                    self.liftable.add(i)
                    self.risky.add(i)
            elif reason.startswith("constant "):
                self.risky.add(i)
            if reason is not None:
                self.reasons[i] = reason
                continue
            self.converted.add(i)
            peaks = [bounds.get(v, rules.UNKNOWN) for v in node.outputs if _is_float(v)]
            if peaks and all(max(abs(b[0]), abs(b[1])) <= limit for b in peaks):
                self.proven += 1

    def _fixed_reason(self, node: ir.Node) -> str | None:
        """Why ``node`` stays float32 whatever the data says, or None."""
        if node.domain not in ("", "ai.onnx"):
            return f"op of domain {node.domain}: not converted"
        if node.name in self.owner.exclude:
            return "excluded by the exclude option"
        if node.op_type in self.owner.block:
            return "blocked by the block option"
        if any(v is not None and v.dtype is None for v in node.outputs):
            return "output types unknown (shape inference could not type them)"
        found = rules.slots(node, self.opset, self.dtype, _is_float)
        if isinstance(found, str):
            return found
        for index, value in enumerate(node.inputs):
            if not (_is_float(value) and found.inputs[index]):
                continue
            if value.dtype is None:
                return f"input '{value.name}' has an unknown type"
            array = constant(value)
            if array is not None and node.op_type not in rules.BOUND_OPS \
                    and edits.out_of_range(array, self.dtype) == "large":
                peak = float(np.abs(array[np.isfinite(array)]).max())
                return f"constant '{value.name}' holds {peak:.3g}, beyond {self.dtype}'s {rules.MAX[self.dtype]:g}"
        return None

    def calibrated(self, activation_stats) -> None:
        """Keep nodes whose calibrated output range nears float16's limit; lift range rules
        the data shows are safe (main graph only: statistics see no subgraph)."""
        limit = rules.MAX[self.dtype]
        for i, node in enumerate(self.nodes):
            if node.graph is not self.typed.graph or not (i in self.converted or i in self.liftable):
                continue
            outputs = [v for v in node.outputs if _is_float(v)]
            ranges = [activation_stats[v.name] for v in outputs if v.name in activation_stats]
            if not ranges or len(ranges) < len(outputs) or not all(r.count for r in ranges):
                continue
            peak = max(max(abs(r.min), abs(r.max)) for r in ranges)
            if peak >= rules.SENTINEL:
                continue  # an additive mask's "minus infinity": its constant is clamped instead
            self.ranges.update({v.name: peak for v in outputs})
            if i in self.converted and peak > limit / _MARGIN:
                self.converted.discard(i)
                self.risky.add(i)
                self.reasons[i] = (f"calibration range {peak:.2g} exceeds {self.dtype} ({limit:g})" if peak > limit
                                   else f"calibration range {peak:.2g} is within {_MARGIN:g}x of {self.dtype}'s "
                                        f"limit ({limit:g})")
            elif i in self.liftable and peak <= limit / _LIFT_MARGIN:
                self.lifted[self.labels[i]] = f"calibration range {peak:.2g} fits {self.dtype}; was: {self.reasons[i]}"
                del self.reasons[i]
                self.liftable.discard(i)
                self.risky.discard(i)
                self.converted.add(i)

    def guard(self) -> None:
        """Keep float32 the converted consumers of values that may not fit the type (the
        outputs of nodes kept for their range): the Cast before them would make inf. Each such
        consumer passes the risk on unless its output is bounded (static bounds, calibration)
        or it shrinks magnitudes (Div, Log, Sqrt, Softmax, ...: ``Exp(x) / ReduceSum(Exp(x))``)."""
        if self.dtype == "bfloat16":
            return
        limit = rules.MAX[self.dtype]
        queue = sorted(self.risky)
        while queue:
            i = queue.pop()
            node = self.nodes[i]
            if node.op_type == "Sqrt" and self.reasons.get(i, "").startswith("variance path"):
                continue  # a standard deviation of values that fit, fits
            for value in node.outputs:
                if not _is_float(value) or self.ranges.get(value.name, math.inf) <= limit / _MARGIN:
                    continue
                for use in value.uses():
                    j = self.index.get(use.node)
                    if j is None or j not in self.converted:
                        continue
                    self.converted.discard(j)
                    self.reasons[j] = (f"reads '{value.name}' from '{self.labels[i]}', kept float32 for its range "
                                       f"(a Cast to {self.dtype} could make inf)")
                    bound = self.bounds.get(use.node.outputs[0], rules.UNKNOWN) if use.node.outputs else rules.UNKNOWN
                    if use.node.op_type not in _SHRINKS and max(abs(bound[0]), abs(bound[1])) > limit:
                        self.risky.add(j)
                        queue.append(j)

    def islands(self) -> None:
        """Keep float32 the data-moving nodes (Transpose, Reshape, Slice, ...) that would be
        converted alone between float32 nodes: they compute nothing, so converting them only
        adds a Cast on each side. Connected moving nodes are
        judged together; constants are neutral, graph inputs and outputs count as float32
        under ``keep_io_types``."""
        moving = {i for i in self.converted if self.nodes[i].op_type in _MOVES}
        seen: set[int] = set()
        for start in sorted(moving):
            if start in seen:
                continue
            component, frontier = {start}, [start]
            while frontier:  # the moving nodes connected to ``start`` through float values
                node = self.nodes[frontier.pop()]
                neighbours = [v.producer() for v in node.inputs if _is_float(v)] + \
                    [u.node for v in node.outputs if _is_float(v) for u in v.uses()]
                for other in neighbours:
                    j = self.index.get(other)
                    if j in moving and j not in component:
                        component.add(j)
                        frontier.append(j)
            seen |= component
            if not any(self._converted_neighbour(self.nodes[i], component) for i in component):
                for i in component:
                    self.converted.discard(i)
                    self.reasons[i] = "moves data between float32 nodes: converting it would only add Casts"

    def _converted_neighbour(self, node: ir.Node, component: set[int]) -> bool:
        """Whether ``node`` reads from or feeds a converted node outside ``component`` (or a
        graph input/output that is converted, without ``keep_io_types``)."""
        for value in node.inputs:
            if not _is_float(value) or value.is_initializer() or value.const_value is not None:
                continue
            producer = value.producer()
            if producer is None:
                if not self.owner.keep_io_types and value.is_graph_input():
                    return True
            elif producer.op_type != "Constant" and self.index.get(producer) not in component \
                    and self.index.get(producer) in self.converted:
                return True
        for value in node.outputs:
            if not _is_float(value):
                continue
            if value.is_graph_output() and not self.owner.keep_io_types:
                return True
            if any(self.index.get(u.node) not in component and self.index.get(u.node) in self.converted
                   for u in value.uses()):
                return True
        return False

    def decide_casts(self) -> None:
        """A Cast converts with its neighbours: from float32, when its producer does; to float32,
        when every consumer does (and it feeds no float32 graph output)."""
        outputs = set(self.typed.graph.outputs)
        for i in self.casts:
            node = self.nodes[i]
            source, result = node.inputs[0], node.outputs[0]
            self.converted.discard(i)
            self.reasons.pop(i, None)
            if result.dtype == rules.FLOAT:
                consumers = [u.node for u in result.uses()]
                if not consumers or result in outputs and self.owner.keep_io_types:
                    self.reasons[i] = "feeds a float32 graph output"
                elif all(self.index.get(c) in self.converted for c in consumers):
                    self.converted.add(i)
                else:
                    self.reasons[i] = "feeds nodes kept float32"
            elif _is_float(source):
                producer = source.producer()
                if producer is not None and self.index.get(producer) in self.converted:
                    self.converted.add(i)
                else:
                    self.reasons[i] = "reads a float32 value"

    def measured(self, context) -> list[dict[str, Any]] | None:
        """Keep nodes whose measured error jump exceeds the tolerance, round by round.

        Best effort: when ONNX Runtime cannot run the converted model (no kernel for the type
        on the runner's providers) it logs a warning and keeps the plan as it is.
        """
        from onnxpress import runtime

        source = context.evaluation or context.calibration
        feeds = source.take(self.owner.samples)
        tolerance = self.owner.tolerance
        try:
            reference = _run_exposed(context.runner, self.typed, feeds)
        except (runtime.ort_errors()) as err:
            logger.warning("fp16: the float32 model did not run for the measurement: %s", err)
            return None
        rounds = []
        for number in context.track(range(1, self.owner.rounds + 1), "measured rounds", unit="rounds"):
            candidate = self.typed.clone()
            edits.apply(candidate, self.converted, dtype=self.dtype, keep_io_types=self.owner.keep_io_types,
                        opset=self.opset)
            try:
                trial = _run_exposed(context.runner, candidate, feeds)
            except (runtime.ort_errors()) as err:
                logger.warning("fp16: measurement skipped, ONNX Runtime cannot run the %s model: %s", self.dtype, err)
                rounds.append({"round": number, "error": str(err).splitlines()[0][:200]})
                return rounds
            errors = _errors(reference, trial)
            worst, kept = 0.0, {}
            for i in sorted(self.converted):
                node = self.nodes[i]
                if node.graph is not self.typed.graph:
                    continue
                out = [errors[v.name] for v in node.outputs if v.name in errors]
                if not out:
                    continue
                before = [errors.get(v.name, (0.0, 0)) for v in node.inputs if v is not None]
                jump = max(e for e, _ in out) - max([e for e, _ in before] + [0.0])
                worst = max(worst, jump)
                if any(bad for _, bad in out) and not any(bad for _, bad in before):
                    kept[i] = "measured: makes Inf/NaN on evaluation data where float32 does not"
                elif jump > tolerance:
                    kept[i] = f"measured error {jump:.1e} > tolerance {tolerance:g}"
            rounds.append({"round": number, "kept": len(kept), "largest_jump": float(f"{worst:.3g}")})
            context.say(f"fp16 round {number}: {len(kept)} node(s) kept float32 by measured error")
            if not kept:
                break
            self.converted -= set(kept)
            self.reasons.update(kept)
            self.islands()
            self.decide_casts()
        return rounds


def _run_exposed(runner, model: ir.Model, feeds) -> list[dict[str, np.ndarray]]:
    """Every float intermediate of ``model``'s main graph on each feed (basic optimisation:
    fusions would swallow the tensors measured)."""
    from onnxpress import modelinfo

    exposed, _ = modelinfo.expose_intermediates(model)
    with runner.session(exposed, optimization="basic") as session:
        return [session.run(feed) for feed in feeds]


def _errors(reference: list[dict[str, np.ndarray]], trial: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, int]]:
    """Tensor -> (relative L2 error over the values finite in both, count of values non-finite
    in ``trial`` but finite in ``reference``), worst over the feeds. Tensors carrying mask
    sentinels (``rules.SENTINEL``) are left out."""
    found: dict[str, tuple[float, int]] = {}
    for ref_out, trial_out in zip(reference, trial):
        for name, ref in ref_out.items():
            got = trial_out.get(name)
            if got is None or got.shape != ref.shape:
                continue
            a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
            finite = np.isfinite(a) & np.isfinite(b)
            if finite.any() and np.abs(a[finite]).max() >= rules.SENTINEL:
                continue  # an additive mask's "minus infinity": clamped on purpose, not an error
            bad = int(np.count_nonzero(np.isfinite(a) & ~np.isfinite(b)))
            norm = float(np.linalg.norm(a[finite]))
            error = float(np.linalg.norm(a[finite] - b[finite])) / norm if norm > 0 else 0.0
            old = found.get(name, (0.0, 0))
            found[name] = (max(old[0], error if math.isfinite(error) else 1.0), old[1] + bad)
    return found
