"""Quantize: int8 weights and activations, static (QDQ) or dynamic, with accuracy and latency control."""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress import _proto, _weights
from onnxpress.context import Pass, PassResult
from onnxpress.errors import PassError
from onnxpress.modelinfo import fingerprint
from onnxpress.passes import _calibrated, _segmented
from onnxpress.passes._common import constant, constant_tensor, fold_batchnorm, reject_option

logger = logging.getLogger(__name__)

Method = Literal["minmax", "percentile", "entropy"]
Mode = Literal["auto", "static", "dynamic"]
Preset = Literal["auto", "cnn", "transformer", "all"]
Scale = Literal["auto", "free", "pow2"]

# Ops whose cost dominates; the rest of a preset's op types only keep int8 flowing between them.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
TRANSFORMER_OPS = ("MatMul", "Gemm", "Gather")  # Gather: embedding tables, stored int8
_SUBGRAPH_OPS = ("If", "Loop", "Scan")
_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm")
# What the static (QDQ) preset quantizes: ops ONNX Runtime runs in int8 or moves int8 through
# (Transpose, Resize, pooling), and unary activations between quantized ops; shape arithmetic,
# casts and normalisation reductions stay float.
_STATIC_OPS = frozenset(COMPUTE_OPS + (
    "Gather", "GatherElements", "Add", "Mul", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Split", "Slice", "Pad", "Resize",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "DepthToSpace", "SpaceToDepth", "Where", "ArgMax",
    "InstanceNormalization", "LayerNormalization", "BatchNormalization"))
# The cheap ops that stay int8 between the convolutions of a transformer's convolutional region.
_CONV_REGION_OPS = frozenset(("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "MaxPool",
                              "AveragePool", "GlobalAveragePool", "Add", "Mul", "Concat", "Resize"))
_FLOOR_MARGIN = 0.2  # the remedy's aim above the accuracy floor, as a share of 1 - floor
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear need opset 13
_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)
# A model run piecewise is smoothed at SmoothQuant's usual alpha: each alpha tried costs a quantization
# and a run of the model, one segment at a time.
_PIECEWISE_ALPHA = 0.5


class Quantize(Pass, ir.passes.FunctionalPass):
    """Quantize weights to int8 per channel and activations to 8 bits, in ONNX Runtime's kernels.

    ``static`` mode inserts QuantizeLinear/DequantizeLinear pairs (QDQ) with activation ranges
    from the pipeline's activation statistics (``minmax``, ``percentile`` or ``entropy``), which
    ONNX Runtime fuses into QLinearConv/QLinearMatMul. ``dynamic`` mode quantizes weights ahead
    of time and activations at run time (MatMulInteger/DynamicQuantizeMatMul): the fast path for
    transformers on CPUs. ``auto`` quantizes per region: a CNN statically; a transformer's weight
    MatMuls, Gemms and embedding tables dynamically and its convolutional parts (a ViT's patch
    embedding, a recogniser's conv stem) statically when there is calibration data (statistics
    ``mode = "mixed"``). ONNX Runtime's quantizers do the node rewriting; this pass prepares the
    model (opset >= 13, batch-norm folding, empty Resize ``roi``/``scales`` dropped, Gemms that
    go dynamic rewritten as MatMul + Add under their own names, shape inference), computes the
    ranges, checks what the quantizers really made int8, and controls accuracy and speed:

    - A Concat of tensors whose ranges differ more than 10x (a detector's boxes and class
      scores), and every reshape, transpose or further Concat of it, stays float: one int8 scale
      would flatten the smaller quantity.

    - ``smoothquant``: migrate activation outliers into the weights (per input channel,
      ``s = max|x|^a / max|w|^(1-a)``), with ``a`` searched on held-out data when not given.
    - ``gptq`` (``"auto"``: with calibration data): round each weight to ONNX Runtime's own
      int8 grid with GPTQ error feedback over its inputs, layer by layer on the inputs the
      rounded layers before give (``_calibrated.gptq``); ONNX Runtime's quantizers are handed
      the scales, so they store exactly those integers. A layer keeps plain rounding where
      GPTQ does not beat it on held-back calibration rows; statistics ``gptq`` per layer.
    - ``bias_correction``: shift Conv/Gemm biases by the mean error the quantized weights cause
      on calibration activations (static mode; the layers GPTQ did not round).
    - ``target_cosine`` / ``max_metric_drop``: accuracy-aware fallback: tensors are ranked by
      how much error each adds (layer-wise comparison) and the fewest that meet the target are
      kept in float (binary search, each step measured); a tensor stays float with its producer
      and its quantized consumers, and a float node gets its uncorrected bias back.
    - ``latency_aware``: time the candidate on the target and keep in float the op groups where
      int8 does not pay; if int8 is still slower than fp32, the model stays float (and says so).
    - ``scale="pow2"`` (fixed point, for integer-only DSPs and MCUs that rescale with shifts):
      every scale a power of two and every zero point 0 — symmetric int8 activations with their
      ranges widened to ``±127·2^k``, symmetric weights with their scales rounded up to ``2^k``
      (GPTQ and bias correction round to that grid), int32 biases at the product. Static mode
      only. ``auto`` (the default) follows the target: pow2 where its ``[recipe] precision`` is
      ``int8-pow2`` (the ``mcu`` profile), free scales elsewhere. The statistics give how much
      resolution the rounding cost (``pow2``: each scale's factor over the free one, in [1, 2)).

    Nodes inside If/Loop/Scan bodies stay float (ONNX Runtime's quantizers do not descend into
    subgraphs), ops of other domains (``ai.onnx.ml``) are left alone, and a model with nothing
    to quantize is refused by name; the statistics list every compute node left float with its
    reason, including any a quantizer was asked for and did not make int8. Needs calibration data
    from the pipeline for static mode, SmoothQuant, bias correction and fallback.

    Options: ``method``, ``mode``, ``preset`` (``auto`` picks ``transformer`` when the graph has
    LayerNormalization/Softmax, else ``cnn``), ``per_channel``, ``activation_type`` and
    ``reduce_range`` (``auto``: what is fast on the target's ``isa``; the host CPU only for
    ``isa = "host"`` or without a target; the statistics record which), ``percentile``, ``op_types``,
    ``include`` / ``exclude`` (node names or op types), ``calibration_samples``.
    """

    name = "quantize"

    def __init__(self, *, method: Method = "percentile", mode: Mode = "auto", preset: Preset = "auto",
                 per_channel: bool = True, activation_type: Literal["auto", "uint8", "int8"] = "auto",
                 reduce_range: Literal["auto"] | bool = "auto", percentile: float = 99.999,
                 op_types: list[str] | None = None, include: list[str] | None = None,
                 exclude: list[str] | None = None, smoothquant: Literal["auto"] | bool = "auto",
                 smoothquant_alpha: float | None = None, bias_correction: bool = True,
                 target_cosine: float | None = None, max_metric_drop: float | None = None,
                 latency_aware: bool = False, calibration_samples: int = 256,
                 fold_batchnorm: bool = True, gptq: Literal["auto"] | bool = "auto", scale: Scale = "auto") -> None:
        super().__init__()
        reject_option(method not in ("minmax", "percentile", "entropy"),
                      "quantize", "method", "minmax, percentile or entropy", method)
        reject_option(mode not in ("auto", "static", "dynamic"),
                      "quantize", "mode", "auto, static or dynamic", mode)
        reject_option(preset not in ("auto", "cnn", "transformer", "all"),
                      "quantize", "preset", "auto, cnn, transformer or all", preset)
        reject_option(activation_type not in ("auto", "uint8", "int8"),
                      "quantize", "activation_type", "auto, uint8 or int8", activation_type)
        reject_option(reduce_range not in ("auto", True, False),
                      "quantize", "reduce_range", "'auto', true or false", reduce_range)
        reject_option(not 50.0 < percentile <= 100.0, "quantize", "percentile", "in (50, 100]", percentile)
        reject_option(smoothquant_alpha is not None and not 0.0 <= smoothquant_alpha <= 1.0,
                      "quantize", "smoothquant_alpha", "in [0, 1]", smoothquant_alpha)
        reject_option(target_cosine is not None and not 0.0 < target_cosine <= 1.0,
                      "quantize", "target_cosine", "in (0, 1]", target_cosine)
        reject_option(max_metric_drop is not None and max_metric_drop < 0,
                      "quantize", "max_metric_drop", ">= 0", max_metric_drop)
        reject_option(calibration_samples < 1, "quantize", "calibration_samples", ">= 1", calibration_samples)
        reject_option(gptq not in ("auto", True, False), "quantize", "gptq", "'auto', true or false", gptq)
        reject_option(scale not in ("auto", "free", "pow2"), "quantize", "scale", "auto, free or pow2", scale)
        reject_option(scale == "pow2" and mode == "dynamic", "quantize", "mode",
                      "static or auto with scale='pow2' (dynamic mode computes scales at run time)", mode)
        reject_option(scale == "pow2" and activation_type == "uint8", "quantize", "activation_type",
                      "int8 or auto with scale='pow2' (a zero point of 0 needs symmetric int8)", activation_type)
        self.method = method
        self.mode = mode
        self.preset = preset
        self.per_channel = per_channel
        self.activation_type = activation_type
        self.reduce_range = reduce_range
        self.percentile = percentile
        self.op_types = list(op_types) if op_types is not None else None
        self.include = list(include or [])
        self.exclude = list(exclude or [])
        self.smoothquant = smoothquant
        self.smoothquant_alpha = smoothquant_alpha
        self.bias_correction = bias_correction
        self.target_cosine = target_cosine
        self.max_metric_drop = max_metric_drop
        self.latency_aware = latency_aware
        self.calibration_samples = calibration_samples
        self.fold_batchnorm = fold_batchnorm
        self.gptq = gptq
        self.scale = scale

    # ------------------------------------------------------------------------------- plan

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        """False with ``latency_aware``: which op groups stay float follows measured latency."""
        return not self.latency_aware

    def needs_calibration(self, model: ir.Model) -> bool:
        """Static mode, SmoothQuant asked for, accuracy targets and latency-aware mode need data."""
        static = self._mode(self._preset(model)) == "static"
        return (static or self.smoothquant is True or self.gptq is True or self._accuracy_target()
                or self.latency_aware)

    def remedy(self, floor: float) -> Quantize | None:
        """The same quantization with the accuracy-aware fallback aiming just above ``floor``.

        It aims a fifth of the way from the floor to 1 (0.99 -> 0.992): the fallback measures
        on the calibration side of the data, and a model that only just meets the floor there
        falls below it on held-out inputs as often as not.
        """
        aim = floor + (1.0 - floor) * _FLOOR_MARGIN
        if self.target_cosine is not None and self.target_cosine >= aim:
            return None  # it already aimed at least that high
        return self.with_options(target_cosine=aim)

    def _accuracy_target(self) -> bool:
        return self.target_cosine is not None or self.max_metric_drop is not None

    def _preset(self, model: ir.Model) -> str:
        if self.preset != "auto":
            return self.preset
        ops = {node.op_type for node in model.graph}
        return "transformer" if ops & {"LayerNormalization", "Softmax", "Attention"} and "MatMul" in ops else "cnn"

    def _mode(self, preset: str) -> str:
        mode = self._mode_option()
        return mode if mode != "auto" else ("dynamic" if preset == "transformer" else "static")

    def _mode_option(self) -> str:
        """The ``mode`` option in force: fixed point is static only."""
        return "static" if self.mode == "auto" and self._pow2() else self.mode

    def _pow2(self) -> bool:
        """Power-of-two scales: asked for, or ``auto`` on a target whose precision is ``int8-pow2``."""
        if self.scale == "auto":
            return self.context is not None and self.context.target.precision == "int8-pow2"
        return self.scale == "pow2"

    def _isa(self) -> str:
        """The instruction set the int8 defaults are for: the bound context's target's, else the host."""
        return self.context.target.isa if self.context is not None else "host"

    def _hardware(self) -> tuple[str, bool]:
        """Activation type and reduce-range: the options, or for ``auto`` what suits the target's ISA."""
        from onnxpress.hardware import quantization_defaults_for

        defaults = quantization_defaults_for(self._isa())
        activation = defaults.activation_type if self.activation_type == "auto" else self.activation_type
        if self._pow2():
            activation = "int8"  # zero point 0: symmetric signed activations
        reduce_range = defaults.reduce_range if self.reduce_range == "auto" else bool(self.reduce_range)
        return activation, reduce_range

    def _eligible(self, model: ir.Model, preset: str) -> tuple[dict[str, str], dict[str, str]]:
        """The nodes to quantize with the mode of each (``static`` or ``dynamic``), and the
        compute nodes left float with the reason.

        ``mode="auto"`` quantizes per region: a CNN statically, a transformer's weight MatMuls,
        Gemms and embedding tables dynamically and its convolutional parts (a ViT's patch
        embedding, a recogniser's conv stem with the Relu/pooling between its convolutions)
        statically when there is calibration data.
        """
        option = self._mode_option()
        calibrated = option != "auto" or (self.context is not None and self.context.calibration is not None)
        plan: dict[str, str] = {}
        floating: dict[str, str] = {}
        for node in model.graph:
            if node.op_type in _SUBGRAPH_OPS:
                for inner in _subgraph_nodes(node):
                    if inner.op_type in COMPUTE_OPS:
                        floating[inner.name or inner.op_type] = (
                            f"inside a {node.op_type} subgraph of '{node.name}': ONNX Runtime's quantizers "
                            "do not descend into subgraphs")
                continue
            name = node.name
            if node.domain not in ("", "ai.onnx"):
                continue  # ai.onnx.ml and custom-domain ops have no int8 form in ONNX Runtime
            if node.op_type in _QUANTIZED_OPS or any(
                    v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                    for v in node.inputs):
                continue  # already quantized (a second run must change nothing)
            if name in self.exclude or node.op_type in self.exclude:
                if node.op_type in COMPUTE_OPS:
                    floating[name] = "excluded by the exclude option"
                continue
            if self.include and name not in self.include and node.op_type not in self.include:
                continue
            if self.op_types is not None and node.op_type not in self.op_types:
                continue
            mode = self._node_mode(node, preset, plan)
            if mode is None and self.op_types is not None:  # asked for by op type: the preset's mode
                mode = "dynamic" if option == "dynamic" or (option == "auto" and preset == "transformer") \
                    else "static"
            if mode is None:
                continue
            if mode == "dynamic" and node.op_type in ("MatMul", "Gemm"):
                weight = constant_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
                if weight is None or len(weight.shape) != 2:
                    floating[name] = "MatMul of two activations (kept float by the transformer preset)"
                    continue
                if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
                    floating[name] = "Gemm with transA: ONNX Runtime has no dynamic int8 form of it"
                    continue
            if node.op_type == "Gather":
                table = constant_tensor(node.inputs[0])
                if table is None or len(table.shape) != 2 or table.size < 4096:
                    continue  # only embedding tables are worth storing in int8
            if mode == "static" and not calibrated:
                if node.op_type in COMPUTE_OPS:
                    floating[name] = "static int8 needs calibration data, and the pipeline has none"
                continue
            plan[name] = mode
        return plan, floating

    def _node_mode(self, node: ir.Node, preset: str, plan: dict[str, str]) -> str | None:
        """``static``, ``dynamic`` or None (not quantized) for ``node``; ``plan`` holds the
        decisions for the nodes before it (graph order)."""
        option = self._mode_option()
        if option == "dynamic" or (option == "auto" and preset == "transformer"):
            if node.op_type in TRANSFORMER_OPS:
                return "dynamic"
            if option == "dynamic":
                return None
            # The convolutional region of a transformer: convolutions, and the cheap ops
            # between them while every activation input comes from that region.
            if node.op_type in ("Conv", "ConvTranspose"):
                return "static" if constant_tensor(node.inputs[1]) is not None else None
            if node.op_type not in _CONV_REGION_OPS:
                return None
            sources = [v.producer() for v in node.inputs if v is not None and constant_tensor(v) is None]
            inside = [p is not None and plan.get(p.name) == "static" for p in sources]
            return "static" if inside and all(inside) else None
        if preset == "transformer" and option == "static" and self.op_types is None:
            return "static" if node.op_type in TRANSFORMER_OPS else None
        return "static" if node.op_type in _STATIC_OPS else None

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        prepared, prep_stats = self._prepare(model)
        preset = self._preset(prepared)
        plan, floating = self._eligible(prepared, preset)
        by_name = {n.name: n for n in prepared.graph}
        if not any(by_name[n].op_type in COMPUTE_OPS + ("Gather",) for n in plan):
            if any(n.op_type in _QUANTIZED_OPS for n in model.graph.all_nodes()):
                return PassResult(model.clone(), modified=False, statistics={
                    "preset": preset, "mode": self._mode(preset), "quantized_nodes": 0, "float_nodes": floating,
                    "note": "already quantized: nothing left to quantize"})
            raise PassError(f"quantize: nothing to quantize: {_nothing_to_quantize(prepared, floating)}")
        gemms = [by_name[n] for n, m in plan.items() if m == "dynamic" and by_name[n].op_type == "Gemm"]
        if gemms:  # ONNX Runtime's dynamic kernels are MatMul kernels
            prep_stats["gemm_as_matmul"] = _gemm_as_matmul(prepared, gemms)
        pristine = prepared.clone()  # float fallbacks return this: no smoothing, no bias shifts
        activation, reduce_range = self._hardware()
        pow2 = self._pow2()
        modes = sorted(set(plan.values()))
        stats: dict[str, Any] = {"preset": preset, "mode": modes[0] if len(modes) == 1 else "mixed",
                                 "method": self.method if "static" in modes else None,
                                 "activation_type": activation if "static" in modes else "uint8",
                                 "weight_type": "int8", "reduce_range": reduce_range, "isa": self._isa(),
                                 "per_channel": self.per_channel, "scale": "pow2" if pow2 else "free", **prep_stats}
        if len(modes) > 1:
            stats["dynamic_nodes"] = sum(m == "dynamic" for m in plan.values())
            stats["static_nodes"] = sum(m == "static" for m in plan.values())
        # ONNX Runtime's dynamic kernels quantize activations to uint8; static ones take the target's type.
        settings = dict(plan=plan, activation=activation, reduce_range=reduce_range, pow2=pow2)
        nodes = list(plan)
        context = self.context
        reference = None
        if context is not None and context.calibration is not None and (
                self._accuracy_target() or self._search_alpha(preset, prepared)):
            reference = context.outputs(prepared)
        smooth = self._wants_smoothquant(preset)
        if smooth:
            prepared, alpha, tried = self._smooth(prepared, nodes, settings, reference)
            stats["smoothquant_alpha"] = alpha
            if tried:
                stats["smoothquant_search"] = tried
        if self.gptq == "auto" and context is not None and context.calibration is not None and self._piecewise(prepared):
            stats["note"] = ("no GPTQ (gptq = \"auto\"): the model runs piecewise, and GPTQ would run it once per "
                             f"stage of layers; smoothquant alpha {_PIECEWISE_ALPHA} unsearched")
        if self._wants_gptq(prepared):
            layers = [n for n in prepared.graph if n.name in plan and n.op_type in COMPUTE_OPS]
            overrides, originals, fits = _calibrated.gptq(
                prepared, layers, context.calibration, context.runner, per_channel=self.per_channel,
                reduce_range=reduce_range, pow2=pow2, limit=self.calibration_samples, say=context.say)
            settings.update(overrides=overrides, unrounded=originals)
            stats["gptq"] = {"layers": len(originals), "considered": len(fits), "fits": fits}
        ranges = None
        if "static" in modes:
            static = [n for n in nodes if plan[n] == "static"]
            tails = _output_tails(prepared, static)
            ranges, corrected, factors = self._calibrate(prepared, [n for n in static if n not in tails], reduce_range,
                                                         settings.get("unrounded"))
            if pow2:
                stats["pow2"] = {"activation_tensors": len(factors), "rounded_down": sum(f < 1 for f in factors),
                                 "mean_factor": round(float(np.mean(factors)), 4) if factors else None}
            settings["uncorrected"] = corrected
            stats["bias_corrected"] = len(corrected)
            left = {**tails, **_mixed_range_joins(prepared, static, ranges)}
            nodes = [n for n in nodes if n not in left]
            floating.update(left)
        candidate = self._quantize(prepared, nodes, ranges, settings)
        if self._accuracy_target() and reference is not None:
            candidate, nodes, fallback = self._fallback(prepared, pristine, candidate, nodes, ranges, settings,
                                                        reference)
            floating.update(fallback.pop("float_nodes"))
            stats["fallback"] = fallback
        if self.latency_aware and context is not None:
            candidate, nodes, latency = self._latency(prepared, pristine, candidate, nodes, ranges, settings,
                                                      floating)
            stats["latency"] = latency
        missed = _left_float(candidate, prepared, nodes)
        floating.update(missed)
        stats["quantized_nodes"] = len([n for n in nodes if n not in missed])
        stats["float_nodes"] = floating
        logger.info("quantize: %d nodes quantized (%s, %s), %d left float", stats["quantized_nodes"],
                    stats["mode"], preset, len(floating))
        return PassResult(candidate, modified=fingerprint(candidate) != fingerprint(model), statistics=stats)

    def _prepare(self, model: ir.Model) -> tuple[ir.Model, dict[str, Any]]:
        """A copy at opset >= 13 with batch norms folded, empty Resize inputs dropped and shapes inferred."""
        stats: dict[str, Any] = {}
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if opset < MIN_OPSET:
            try:
                prepared = _proto.convert_opset(model, MIN_OPSET)
            except _proto.ConversionError as err:
                raise PassError(f"quantize: cannot upgrade the model from opset {opset} to {MIN_OPSET}: {err}") from err
            stats["opset_upgraded"] = [opset, MIN_OPSET]
        else:
            prepared = model.clone()
        if self.fold_batchnorm:
            stats["batchnorm_folded"] = fold_batchnorm(prepared)
        _drop_empty_resize_inputs(prepared)
        # Shape inference is best effort (it logs and leaves the model as it was when it fails):
        # ONNX Runtime's quantizer copes with partial shapes.
        ir.passes.Sequential(common_passes.RemoveUnusedNodesPass(), common_passes.NameFixPass(),
                             common_passes.ShapeInferencePass())(prepared)
        return prepared, stats

    def _wants_smoothquant(self, preset: str) -> bool:
        if self.smoothquant == "auto":
            return preset == "transformer" and self.context is not None and self.context.calibration is not None
        return bool(self.smoothquant)  # True: needs_calibration made sure there is data

    def _piecewise(self, model: ir.Model) -> bool:
        """Whether ``model`` runs piecewise on the target (past its ``session_memory_mb``)."""
        return self.context is not None and self.context.runner.segment_bytes(model) is not None

    def _wants_gptq(self, model: ir.Model) -> bool:
        """``auto``: with calibration data, unless the model runs piecewise (GPTQ's refit runs it
        once per stage of layers, one segment at a time: hours on a large model)."""
        if self.gptq == "auto":
            return self.context is not None and self.context.calibration is not None and not self._piecewise(model)
        return bool(self.gptq)  # True: needs_calibration made sure there is data

    def _search_alpha(self, preset: str, model: ir.Model) -> bool:
        """The alpha is searched unless given, or the model runs piecewise (``_PIECEWISE_ALPHA``)."""
        return self._wants_smoothquant(preset) and self.smoothquant_alpha is None and not self._piecewise(model)

    def _smooth(self, model: ir.Model, nodes: list[str], settings: dict, reference):
        groups = _calibrated.matmul_groups(model, set(nodes))
        if not groups:
            return model, None, []
        stats = self.context.statistics(model, tensors=list(groups), channel_axes={a: -1 for a in groups},
                                        limit=self.calibration_samples)
        alpha = self.smoothquant_alpha if self.smoothquant_alpha is not None else \
            _PIECEWISE_ALPHA if self._piecewise(model) else None
        if alpha is not None:
            smoothed = model.clone()
            _calibrated.smooth(smoothed, groups, stats, alpha)
            return smoothed, alpha, []
        tried, best = [], (None, -np.inf, model)
        for alpha in self.context.track(_ALPHAS, "smoothquant alpha", unit="alphas"):
            smoothed = model.clone()
            _calibrated.smooth(smoothed, groups, stats, alpha)
            static = [n for n in nodes if settings["plan"][n] == "static"]
            ranges = self._calibrate(smoothed, static, settings["reduce_range"])[0] if static else None
            candidate = self._quantize(smoothed, nodes, ranges, settings)
            cosine = self.context.score(reference, candidate)["cosine"]
            tried.append({"alpha": alpha, "cosine": round(cosine, 6)})
            self.context.say(f"smoothquant alpha {alpha}: cosine {cosine:.5f}")
            if cosine > best[1]:
                best = (alpha, cosine, smoothed)
        return best[2], best[0], tried

    def _calibrate(self, model: ir.Model, nodes: list[str], reduce_range: bool, unrounded: dict | None = None):
        """Activation ranges for every float tensor (static mode), after bias correction, with
        power-of-two scales under ``scale="pow2"`` (and each scale's factor over the free one).

        Bias correction changes ``model``'s biases in place, so the ranges are collected last.
        It leaves out the nodes whose weights GPTQ rounded (``unrounded``): GPTQ fitted their
        outputs, mean included, and a correction on top of it measured worse on the digits
        CNN (held-out logits' mean error 0.0379 with GPTQ alone, 0.0391 with both, 0.0407
        with bias correction alone).
        """
        corrected: dict[str, str] = {}
        if self.bias_correction:
            by_name = {n.name: n for n in model.graph}
            targets = [by_name[n] for n in nodes if n in by_name and by_name[n].op_type in ("Conv", "Gemm")
                       and n not in (unrounded or {})]
            probed = model.clone()
            probed_nodes = {n.name: n for n in probed.graph}
            probes = _calibrated.error_probes(probed, [probed_nodes[n.name] for n in targets], reduce_range,
                                              self._pow2())
            if probes:
                axes = {probe: 1 if by_name[name].op_type == "Conv" else -1 for name, probe in probes.items()}
                shifts = self.context.statistics(probed, tensors=list(axes), channel_axes=axes,
                                                 limit=self.calibration_samples)
                corrected = _calibrated.correct_biases(model, targets, probes, shifts)
        stats = self.context.statistics(model, limit=self.calibration_samples)
        ranges = stats.ranges(self.method, self.percentile)
        for output in model.graph.outputs:  # clipping what the model returns distorts it directly
            if output.name in stats:
                ranges[output.name] = stats[output.name].range("minmax")
        factors: list[float] = []
        if self._pow2():
            ranges, factors = _calibrated.pow2_ranges(ranges, stats)
        return ranges, corrected, factors

    def _quantize(self, model: ir.Model, nodes: list[str], ranges, settings: dict) -> ir.Model:
        """``model`` with ``nodes`` quantized, each in its planned mode: the static (QDQ) ones
        first, then the dynamic ones, by ONNX Runtime's quantizers."""
        plan = settings["plan"]
        static = [n for n in nodes if plan.get(n) == "static"]
        dynamic = [n for n in nodes if plan.get(n) == "dynamic"]
        # A bias corrected for int8 weights, or a weight rounded to its grid, is wrong on a node
        # that stays float.
        quantized = set(nodes)
        uncorrect = {n: b for n, b in settings.get("uncorrected", {}).items() if n not in set(static)}
        unround = {n: w for n, w in settings.get("unrounded", {}).items() if n not in quantized}
        if uncorrect or unround:
            model = model.clone()
            _calibrated.restore_inputs(model, uncorrect, 2)
            _calibrated.restore_inputs(model, unround, 1)
        if settings.get("pow2") and static:  # fixed point: GPTQ's grids are powers of two already
            overrides = _calibrated.pow2_weight_overrides(model, static, self.per_channel, settings["reduce_range"])
            settings = {**settings, "overrides": {**overrides, **settings.get("overrides", {})}}
        segment_bytes = self.context.runner.segment_bytes(model) if self.context is not None else None
        if dynamic and not static and segment_bytes is not None:
            # A model run piecewise is quantized piecewise: one segment's weights in memory at a time.
            def quantize(piece, names):
                # Its shapes are inferred (``_segmented``): ONNX Runtime's quantizer would otherwise
                # copy the segment twice (save and reload) to infer them again.
                piece.metadata_props.add(key="onnx.infer", value="onnxruntime.quant")
                return self._run_quantizer(piece, names, None, settings, dynamic=True)

            try:
                result = _segmented.rewrite(model, dynamic, quantize, segment_bytes)
            except _segmented.SegmentError as err:
                raise PassError(f"quantize: piecewise quantization failed: {err}") from err
            ir.passes.Sequential(common_passes.TopologicalSortPass(), common_passes.RemoveUnusedNodesPass())(result)
            return result
        if _weights.is_large(model):
            logger.warning("quantize: %s of a large model: ONNX Runtime's QDQ quantizer takes it as one "
                           "ModelProto, so it is held whole in memory (mode = \"dynamic\" runs piecewise)",
                           "static quantization" if static else "quantization")
        proto = _proto.to_proto(model)
        if static:
            proto = self._run_quantizer(proto, static, ranges, settings, dynamic=False)
        if dynamic:
            proto = self._run_quantizer(proto, dynamic, None, settings, dynamic=True)
        result = _proto.from_proto(proto)
        # ONNX Runtime's quantizers append nodes out of order; the ONNX spec wants them sorted.
        ir.passes.Sequential(common_passes.TopologicalSortPass(), common_passes.RemoveUnusedNodesPass())(result)
        return result

    def _run_quantizer(self, proto, nodes: list[str], ranges, settings: dict, *, dynamic: bool):
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
        from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType

        weight = QuantType.QInt8
        activation = QuantType.QInt8 if settings["activation"] == "int8" and not dynamic else QuantType.QUInt8
        options = {"MatMulConstBOnly": True, "WeightSymmetric": True,
                   "ActivationSymmetric": activation == QuantType.QInt8}
        names = {v for n in proto.graph.node if n.name in set(nodes) for v in n.input}
        overrides = {name: o for name, o in settings.get("overrides", {}).items() if name in names}
        if overrides:  # GPTQ's (or fixed point's) grids: the quantizer stores the integers they chose
            options["TensorQuantOverrides"] = overrides
        try:
            if dynamic:
                from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

                # After the static region's QDQ pass ONNX Runtime warns that the model "is
                # already quantized"; here that is the plan, not a QAT model.
                logging.getLogger().addFilter(_not_already_quantized)
                quantizer = ONNXQuantizer(proto, self.per_channel, settings["reduce_range"], QuantizationMode.IntegerOps,
                                          False, weight, QuantType.QUInt8, None, nodes, [], list(TRANSFORMER_OPS) +
                                          ["Conv", "Gather", "Attention", "LSTM", "EmbedLayerNormalization"], options)
            else:
                from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

                data = {name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
                        for name, (low, high) in ranges.items()}
                by_name = {n.name: n.op_type for n in proto.graph.node}
                op_types = sorted({by_name[n] for n in nodes if n in by_name})
                quantizer = QDQQuantizer(proto, self.per_channel, settings["reduce_range"], weight, activation,
                                         TensorsData(CalibrationMethod.MinMax, data), nodes, [], op_types, options)
            quantizer.quantize_model()
        except (ValueError, KeyError, RuntimeError, IndexError, TypeError, AssertionError) as err:
            raise PassError(f"quantize: ONNX Runtime's quantizer failed: {type(err).__name__}: {err}") from err
        finally:
            logging.getLogger().removeFilter(_not_already_quantized)
        return quantizer.model.model

    # --------------------------------------------------------------------- accuracy and speed

    def _meets(self, score: dict[str, float]) -> bool:
        ok = True
        if self.target_cosine is not None:
            ok &= score["cosine"] >= self.target_cosine
        if self.max_metric_drop is not None:
            if "metric_drop" not in score:
                raise PassError("quantize: max_metric_drop needs a metric (Pipeline.run(..., metric=...))")
            ok &= score["metric_drop"] <= self.max_metric_drop
        return ok

    def _fallback(self, prepared, pristine, candidate, nodes, ranges, settings, reference):
        """The fewest nodes in float that meet the accuracy target, by measurement.

        The unit put back in float is a tensor, not a node: a quantized node quantizes its
        inputs and its outputs (QDQ), so a tensor whose int8 form costs accuracy stays float
        only when its producer and every quantized consumer do. Units are ranked by the error
        their tensor adds; a binary search over how many of the first units are float, each
        step measured, finds the fewest that meet the target.
        """
        context = self.context
        score = context.score(reference, candidate)
        trials = [{"float": 0, **_rounded(score)}]
        context.say(f"all {len(nodes)} nodes int8: cosine {score['cosine']:.5f}")
        if self._meets(score):
            return candidate, nodes, {"target_met": True, "trials": trials, "float_nodes": {}}
        ranking = self._rank(prepared, candidate, nodes)
        units = _tensor_units(prepared, ranking, nodes)

        def floated(count: int) -> dict[str, str]:
            reasons: dict[str, str] = {}
            for rank, (head, members) in enumerate(units[:count], start=1):
                for member in members:
                    reasons.setdefault(member, f"accuracy-aware fallback: rank {rank} by added error" if member == head
                                       else f"accuracy-aware fallback: keeps the output of '{head}' (rank {rank}) float")
            return reasons

        low, high, best = 0, len(units), None
        with context.step("fallback", None, "trials") as search:  # a search: its length is not known ahead
            while low < high:
                middle = (low + high) // 2 if best is not None else max(1, min(len(units), 2 * max(1, low)))
                floating = floated(middle)
                keep = [n for n in nodes if n not in floating]
                trial = self._quantize(prepared, keep, ranges, settings) if keep else pristine.clone()
                score = context.score(reference, trial)
                trials.append({"float": len(floating), **_rounded(score)})
                context.say(f"{len(floating)} node(s) float: cosine {score['cosine']:.5f}")
                search.advance()
                if self._meets(score):
                    best, high = (middle, trial, keep), middle
                else:
                    low = middle + 1
                    if best is None and middle >= len(units):
                        break
        if best is None:
            logger.warning("quantize: the accuracy target is not met even with every node in float")
            return candidate, nodes, {"target_met": False, "trials": trials, "float_nodes": {}}
        count, model, keep = best
        return model, keep, {"target_met": True, "trials": trials, "float_nodes": floated(count)}

    def _rank(self, prepared: ir.Model, candidate: ir.Model, nodes: list[str]) -> list[str]:
        """Quantized nodes by the error each adds: (1 - cosine) at its output minus at its inputs."""
        result = self.context.compare_layers(prepared, candidate)
        error = {layer.tensor: 1.0 - layer.cosine for layer in result.layers}
        by_name = {n.name: n for n in prepared.graph}
        added = {}
        for name in nodes:
            node = by_name[name]
            out = error.get(node.outputs[0].name)
            if out is None:
                continue
            before = max([error.get(v.name, 0.0) for v in node.inputs if v is not None] + [0.0])
            added[name] = out - before
        ranked = sorted(added, key=lambda n: -added[n])
        return ranked + [n for n in nodes if n not in added]

    def _latency(self, prepared, pristine, candidate, nodes, ranges, settings, floating):
        """Keep int8 only where it pays on the target, by measurement.

        From the fully quantized model, op groups whose int8 form is slower are put back in
        float one at a time. If int8 is slower than fp32 overall, the search starts from fp32
        instead and adds the compute groups (largest first) that make it faster. A change is
        kept only for a clear gain (3 %, beyond timing noise).
        """
        context = self.context
        fp32 = context.latency(pristine)
        full = context.latency(candidate)
        record = {"fp32_ms": round(fp32, 4), "int8_ms": round(full, 4), "groups_left_float": []}
        context.say(f"latency fp32 {fp32:.3f} ms, int8 {full:.3f} ms")
        by_name = {n.name: n for n in prepared.graph}
        groups = _latency_groups(by_name, nodes)
        if full <= fp32:
            current, kept = full, list(nodes)
            for group, members in context.track(groups.items(), "latency-aware", unit="op groups"):
                keep = [n for n in kept if n not in members]
                if not keep:
                    continue
                trial = self._quantize(prepared, keep, ranges, settings)
                latency = context.latency(trial)
                context.say(f"without int8 {group}: {latency:.3f} ms")
                if latency < current * 0.97:
                    candidate, kept, current = trial, keep, latency
                    record["groups_left_float"].append(group)
        else:
            current, kept, candidate = fp32, [], pristine
            compute = [g for g in groups if g.split()[-1] in COMPUTE_OPS]
            for group in context.track(sorted(compute, key=lambda g: -len(groups[g])), "latency-aware",
                                       unit="op groups"):
                keep = kept + sorted(groups[group])
                trial = self._quantize(prepared, keep, ranges, settings)
                latency = context.latency(trial)
                context.say(f"with int8 {group} only: {latency:.3f} ms")
                if latency < current * 0.97:
                    candidate, kept, current = trial, keep, latency
            record["groups_left_float"] = [g for g in groups if not groups[g] & set(kept)]
        for group in record["groups_left_float"]:
            floating.update({m: f"latency-aware: int8 {group} does not pay on this target" for m in groups[group]})
        record["final_ms"] = round(current, 4)
        if not kept:
            record["kept_fp32"] = True
            logger.warning("quantize: int8 is slower than fp32 here (%.3f > %.3f ms): model left float", full, fp32)
            return pristine, [], record
        return candidate, kept, record


def _not_already_quantized(record: logging.LogRecord) -> bool:
    """A logging filter dropping ONNX Runtime's "already quantized" warning (see ``_run_quantizer``)."""
    return not record.getMessage().startswith("Please check if the model is already quantized")


def _rounded(score: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in score.items()}


# Activations ONNX Runtime folds into the quantized op before them (its output range clips).
_FUSED_ACTIVATIONS = frozenset(("Relu", "Clip"))
# Ops that move values without computing: a tensor of mixed ranges stays mixed through them.
_MOVES = frozenset(("Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Split",
                    "Slice", "Gather", "Expand", "Tile", "Pad"))
# Inputs of a join whose ranges differ more than this keep the join float (see _mixed_range_joins).
_RANGE_GAP = 10.0


def _mixed_range_joins(model: ir.Model, nodes: list[str], ranges: dict) -> dict[str, str]:
    """Concat nodes among ``nodes`` whose inputs' ranges differ by more than ``_RANGE_GAP``.

    A quantized Concat has one scale for all its inputs (ONNX Runtime's QLinearConcat wants
    them equal); a detector's boxes (hundreds) beside its class scores ([0, 1]) would leave the
    scores a few int8 levels, or none. Kept float, each input keeps its own scale.
    """
    found = {}
    by_name = {n.name: n for n in model.graph}
    for name in nodes:
        node = by_name.get(name)
        if node is None or node.op_type != "Concat":
            continue
        spans = [max(abs(low), abs(high)) for low, high in
                 (ranges.get(v.name, (0.0, 0.0)) for v in node.inputs if v is not None and v.name in ranges)]
        spans = [span for span in spans if span > 0]
        if len(spans) >= 2 and max(spans) / min(spans) > _RANGE_GAP:
            found[name] = (f"Concat of inputs whose ranges differ {max(spans) / min(spans):.0f}x "
                           f"({min(spans):.3g} to {max(spans):.3g}): one int8 scale would flatten the smaller")
    # What such a join makes still mixes the scales after a reshape, a transpose or a further
    # concatenation (a detector's levels concatenated into one output): those stay float too.
    chosen, queue = set(nodes), list(found)
    while queue:
        source = queue.pop()
        for value in by_name[source].outputs:
            for consumer in value.consumers():
                if consumer.op_type in _MOVES and consumer.name in chosen and consumer.name not in found:
                    found[consumer.name] = f"carries the mixed ranges of '{source}' (one int8 scale would flatten them)"
                    queue.append(consumer.name)
    return found


def _output_tails(model: ir.Model, nodes: list[str]) -> dict[str, str]:
    """The cheap nodes between the last compute node and each graph output (a Softmax, a
    Sigmoid, a Reshape), among ``nodes``: int8 there adds error to what the model returns and
    saves no compute (a 1000-class Softmax's probabilities of 0.001 are 0 at a scale of 1/255)."""
    chosen, found = set(nodes), {}
    for output in model.graph.outputs:
        node = output.producer()
        while node is not None and node.op_type not in COMPUTE_OPS and node.name in chosen and node.name not in found:
            found[node.name] = f"feeds the model's output '{output.name}': int8 there only adds error"
            sources = [v for v in node.inputs if v is not None and constant(v) is None]
            if node.op_type in _MOVES and node.inputs and node.inputs[0] is not None:
                sources = [node.inputs[0]]  # the data moved; the rest are shapes and indices
            node = sources[0].producer() if len(sources) == 1 else None
    return found


def _tensor_units(model: ir.Model, ranking: list[str], nodes: list[str]) -> list[tuple[str, list[str]]]:
    """For each ranked node, the quantized nodes that must be float for its output to stay
    float: itself and the consumers of its outputs among ``nodes``, through the activations
    ONNX Runtime fuses into it (a Conv's Relu). Compute nodes lead; a node already in an
    earlier unit is not repeated."""
    by_name = {n.name: n for n in model.graph}
    quantized, seen, units = set(nodes), set(), []
    leading = [n for n in ranking if n in by_name and by_name[n].op_type in COMPUTE_OPS]
    for name in leading + [n for n in ranking if n not in set(leading)]:
        if name in seen or name not in by_name:
            continue
        members, frontier = [name], [by_name[name]]
        while frontier:
            node = frontier.pop()
            for consumer in {c for v in node.outputs for c in v.consumers()}:
                if consumer.name in quantized and consumer.name not in seen and consumer.name not in members:
                    members.append(consumer.name)
                    if consumer.op_type in _FUSED_ACTIVATIONS:
                        frontier.append(consumer)
        seen.update(members)
        units.append((name, members))
    return units


def _nothing_to_quantize(model: ir.Model, floating: dict[str, str]) -> str:
    """Why a model has no node to quantize, in words: its float compute nodes' reasons, or its
    op types (a scikit-learn model's ai.onnx.ml ops have no int8 form)."""
    if floating:
        reasons = sorted(set(floating.values()))
        return f"{len(floating)} compute node(s) left float ({'; '.join(reasons[:3])})"
    domains = sorted({n.domain for n in model.graph if n.domain not in ("", "ai.onnx")})
    ops = sorted({n.op_type for n in model.graph})
    where = f" (ops of {', '.join(domains)}, which have no int8 form)" if domains else ""
    return f"the model has no Conv, MatMul, Gemm or embedding Gather; its ops are {', '.join(ops[:12])}{where}"


def _drop_empty_resize_inputs(model: ir.Model) -> None:
    """Drop Resize's empty ``roi`` and ``scales`` inputs (0-element constants, as opset-11
    exporters write them), in place: optional from opset 13, and ONNX Runtime's QDQ quantizer
    asks for a range of every float input it sees."""
    for node in model.graph.all_nodes():
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
            continue
        for index in (1, 2):
            if index < len(node.inputs) and node.inputs[index] is not None:
                value = constant(node.inputs[index])
                if value is not None and value.size == 0:
                    node.replace_input_with(index, None)


def _gemm_as_matmul(model: ir.Model, gemms: list[ir.Node]) -> int:
    """Rewrite each Gemm (constant 2-D ``B``, no ``transA``) as MatMul + Add, in place.

    ONNX Runtime's dynamic kernels are MatMul kernels (its dynamic quantizer rewrites Gemms
    itself, under new names its node list then misses). ``alpha`` and ``transB`` are folded into
    the weight, ``beta`` into the bias; the MatMul keeps the Gemm's name, so include/exclude
    lists and statistics still name it. Returns the count rewritten.
    """
    done = 0
    for gemm in gemms:
        weight = constant(gemm.inputs[1])
        alpha = gemm.attributes.get_float("alpha", 1.0)
        beta = gemm.attributes.get_float("beta", 1.0)
        if weight is None or weight.ndim != 2:
            continue
        if gemm.attributes.get_int("transB", 0):
            weight = weight.T
        name = gemm.name
        w = ir.Value(name=f"{name}_weight", const_value=ir.tensor(np.ascontiguousarray(weight * alpha).astype(
            weight.dtype), name=f"{name}_weight"))
        model.graph.register_initializer(w)
        matmul = ir.node("MatMul", [gemm.inputs[0], w], name=name)
        new_nodes, result = [matmul], matmul.outputs[0]
        bias = constant(gemm.inputs[2]) if len(gemm.inputs) > 2 and gemm.inputs[2] is not None else None
        if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
            if bias is not None and beta != 1.0:
                scaled = (bias * beta).astype(bias.dtype)
                c = ir.Value(name=f"{name}_bias", const_value=ir.tensor(scaled, name=f"{name}_bias"))
                model.graph.register_initializer(c)
            elif beta != 1.0:
                continue  # a computed bias scaled by beta: left as a float Gemm
            else:
                c = gemm.inputs[2]
            add = ir.node("Add", [result, c], name=f"{name}_bias_add")
            matmul.outputs[0].name = f"{gemm.outputs[0].name}_matmul"
            new_nodes.append(add)
            result = add.outputs[0]
        ir.convenience.replace_nodes_and_values(model.graph, gemm, [gemm], new_nodes, [gemm.outputs[0]], [result])
        done += 1
    return done


def _left_float(quantized: ir.Model, prepared: ir.Model, nodes: list[str]) -> dict[str, str]:
    """The compute nodes among ``nodes`` that ONNX Runtime's quantizers left float, with why.

    A node is int8 when its quantized model has an integer kernel made from it (named after
    it, dynamic mode) or its weight reaches it through DequantizeLinear (QDQ).
    """
    by_name = {n.name: n for n in quantized.graph}
    original = {n.name: n for n in prepared.graph}
    missed = {}
    for name in nodes:
        node = original.get(name)
        if node is None or node.op_type not in COMPUTE_OPS:
            continue
        made = by_name.get(name)
        if made is not None and made.op_type in COMPUTE_OPS:
            weights = made.inputs[1:2] if made.op_type.startswith("Conv") else made.inputs[:2]
            if any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                   for v in weights):
                continue
        elif any(n.op_type in _QUANTIZED_OPS and n.name.startswith(name) for n in quantized.graph):
            continue
        missed[name] = f"ONNX Runtime's quantizer left this {node.op_type} float (no int8 kernel for its form)"
    return missed


def _subgraph_nodes(node: ir.Node):
    for attr in node.attributes.values():
        graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else (
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else [])
        for graph in graphs:
            yield from graph.all_nodes()


def _latency_groups(by_name: dict[str, ir.Node], nodes: list[str]) -> dict[str, set[str]]:
    """Quantized nodes grouped by kind: depthwise convs, small convs, other convs, each op type."""
    groups: dict[str, set[str]] = {}
    for name in nodes:
        node = by_name.get(name)
        if node is None:
            continue
        kind = node.op_type
        if node.op_type == "Conv":
            weight = constant(node.inputs[1])
            group = node.attributes.get_int("group", 1)
            if weight is not None and group > 1 and group == weight.shape[0]:
                kind = "depthwise Conv"
            elif weight is not None and weight[0].size * weight.shape[0] < 4096:
                kind = "small Conv"
        groups.setdefault(kind, set()).add(name)
    return groups
