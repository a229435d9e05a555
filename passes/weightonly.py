"""Weight-only quantization: MatMul/Gemm weights and embedding tables to 4 or 8 bits, block-wise."""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxpress import _weights
from onnxpress.context import Pass, PassResult
from onnxpress.passes import _blockwise, _weightfit
from onnxpress.passes._common import add_initializer, constant, constant_tensor, reject_option
from onnxpress.passes._weightfit import Entry
from onnxpress.progress import track

logger = logging.getLogger(__name__)

_ROWS_ELEMENTS = 2**22  # weights fitted at once, layer by layer (rows of a block)

Algorithm = Literal["auto", "rtn", "hqq", "gptq", "awq"]
Format = Literal["auto", "matmulnbits", "dequantize"]

MIN_DEQUANTIZE_OPSET = 21  # DequantizeLinear's block_size attribute
_LATENCY_GAIN = 0.97  # accuracy_level 4 is taken only when it is 3 % faster than level 0 (beyond timing noise)
_FLOOR_MARGIN = 0.2  # the remedy's aim above the accuracy floor, as a share of 1 - floor
# Providers that take standard QDQ graphs rather than ONNX Runtime's contrib ops.
_QDQ_PROVIDERS = ("TensorrtExecutionProvider", "OpenVINOExecutionProvider", "QNNExecutionProvider",
                  "NnapiExecutionProvider", "CoreMLExecutionProvider", "VitisAIExecutionProvider")


class WeightOnly(Pass, ir.passes.InPlacePass):
    """Store MatMul/Gemm weights and embedding tables in 4 or 8 bits with block-wise scales.

    Each weight is cut into blocks of ``block_size`` values along its input dimension (a table
    along its embedding dimension), each block with its own float32 scale and, when
    asymmetric, integer zero point. A MatMul (or a Gemm with a constant ``B``: ``alpha``,
    ``transB`` and a constant 1-D ``beta·C`` folded) becomes com.microsoft ``MatMulNBits`` and a
    Gather of a constant 2-D table ``GatherBlockQuantized`` (``format="matmulnbits"``), or reads
    its weight through a blocked ``DequantizeLinear`` (``format="dequantize"``, opset >= 21). Only
    the weights are quantized: activations stay float, so on CPUs this is a size method at
    encoder shapes (ONNX Runtime's int4 kernels beat dynamic int8 only near one token); with a
    pipeline context the pass measures its result's latency against the float model and a
    dynamic-int8 build, and says so in its statistics (``latency``).

    Algorithms (``algorithm``): ``rtn`` rounds to nearest on each block's min/max grid; ``hqq``
    fits each block's grid to its weights under an l_p error (half-quadratic, data-free);
    ``gptq`` rounds with error feedback over calibration inputs, layer by layer; ``awq`` scales
    input channels by their activation size before rounding. ``auto``: AWQ with calibration
    data, else HQQ (on MiniLM, int4 block 32: cosine 0.9848 with AWQ in 28 s, 0.9843 with GPTQ
    in 160 s, 0.9769 HQQ, 0.9752 RTN). A layer keeps the data-free grid where GPTQ does not beat it on held-back
    rows, and AWQ keeps ``α = 0`` (plain rounding) where scaling does not pay.

    Options: ``bits`` (1, 4 or 8; 1 hands the model to ``_binary.binarize`` with
    ``binary_scale`` and ``keep_first_last``), ``block_size`` (16-256, a power of two),
    ``symmetric``, ``accuracy_level`` (MatMulNBits' activation precision: 0 unset, 1 fp32,
    2 fp16, 3 bf16, 4 int8; ``auto``: the faster of 0 and 4 on the target, measured, else 0 for
    4 bits and 4 for 8 bits),
    ``format``, ``embeddings`` (quantize Gather tables too), ``exclude`` (node names or op
    types), ``min_elements`` (smaller weights stay float), ``error_budget`` (with 4 bits: the
    largest ``1 - cosine`` of the outputs on held-out data; the layers whose 4-bit form costs
    most are promoted to 8 bits, by measurement, until it holds), ``limit`` (calibration
    samples read by GPTQ and AWQ), ``measure_latency``.

    Preconditions: calibration data for ``gptq``/``awq``/``error_budget``; opset >= 21 for
    ``format="dequantize"``. The float weights replaced are removed when nothing else reads
    them (the point of the pass is their size). Nodes inside subgraphs are left float.
    """

    name = "weightonly"
    lossless = False
    needs_data = False

    def __init__(self, *, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                 algorithm: Algorithm = "auto", accuracy_level: int | Literal["auto"] = "auto",
                 format: Format = "auto", embeddings: bool = True, exclude: list[str] | None = None,
                 min_elements: int = 4096, error_budget: float | None = None, limit: int = 128,
                 measure_latency: bool = True, binary_scale: Literal["mean", "optimal"] = "mean",
                 keep_first_last: bool = True) -> None:
        super().__init__()
        reject_option(bits not in (1, 4, 8), "weightonly", "bits", "1, 4 or 8", bits)
        reject_option(not isinstance(block_size, int) or not 16 <= block_size <= 256
                      or block_size & (block_size - 1), "weightonly", "block_size",
                      "a power of two in [16, 256]", block_size)
        reject_option(algorithm not in ("auto", "rtn", "hqq", "gptq", "awq"), "weightonly", "algorithm",
                      "auto, rtn, hqq, gptq or awq", algorithm)
        reject_option(accuracy_level != "auto" and accuracy_level not in (0, 1, 2, 3, 4), "weightonly",
                      "accuracy_level", "0, 1, 2, 3, 4 or 'auto'", accuracy_level)
        reject_option(format not in ("auto", "matmulnbits", "dequantize"), "weightonly", "format",
                      "auto, matmulnbits or dequantize", format)
        reject_option(min_elements < 0, "weightonly", "min_elements", ">= 0", min_elements)
        reject_option(error_budget is not None and not 0.0 < error_budget < 1.0, "weightonly", "error_budget",
                      "in (0, 1)", error_budget)
        reject_option(error_budget is not None and bits != 4, "weightonly", "error_budget",
                      "used with bits=4 only (it promotes layers to 8 bits)", error_budget)
        reject_option(limit < 1, "weightonly", "limit", ">= 1", limit)
        reject_option(binary_scale not in ("mean", "optimal"), "weightonly", "binary_scale", "mean or optimal",
                      binary_scale)
        reject_option(bits == 1 and algorithm in ("hqq", "gptq", "awq"), "weightonly", "algorithm",
                      "auto or rtn with bits=1 (binarization has its own scales)", algorithm)
        self.bits = bits
        self.block_size = block_size
        self.symmetric = symmetric
        self.algorithm = algorithm
        self.accuracy_level = accuracy_level
        self.format = format
        self.embeddings = embeddings
        self.exclude = list(exclude or [])
        self.min_elements = min_elements
        self.error_budget = error_budget
        self.limit = limit
        self.measure_latency = measure_latency
        self.binary_scale = binary_scale
        self.keep_first_last = keep_first_last

    # ------------------------------------------------------------------------------- plan

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        """False when ``accuracy_level="auto"`` picks 0 or 4 by measured latency (flips run to run)."""
        return not (self.accuracy_level == "auto" and self.measure_latency)

    def needs_calibration(self, model: ir.Model) -> bool:
        """GPTQ, AWQ, an error budget and optimal binary scales need data; RTN, HQQ and ``auto``
        without data do not."""
        if self.bits == 1:
            return self.binary_scale == "optimal"
        return self.algorithm in ("gptq", "awq") or self.error_budget is not None

    def requires(self, model: ir.Model) -> None:
        if self.needs_calibration(model) and (self.context is None or self.context.calibration is None):
            option = ("binary_scale='optimal'" if self.bits == 1 else f"algorithm={self.algorithm!r}"
                      if self.algorithm in ("gptq", "awq") else f"error_budget={self.error_budget}")
            raise ir.passes.PreconditionError(
                f"weightonly: {option} needs calibration data (run the pass in a Pipeline with calibration=...)")
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if self.format == "dequantize" and self.bits != 1 and opset < MIN_DEQUANTIZE_OPSET:
            raise ir.passes.PreconditionError(
                f"weightonly: format='dequantize' needs opset >= {MIN_DEQUANTIZE_OPSET} (DequantizeLinear's "
                f"block_size); the model has opset {opset}: use format='matmulnbits' or upgrade the model")

    def remedy(self, floor: float) -> WeightOnly | None:
        """The same pass with 4-bit layers promoted to 8 bits until the outputs' cosine is a fifth
        of the way from ``floor`` to 1 (``error_budget``), or None when that is already asked for."""
        budget = (1.0 - floor) * (1.0 - _FLOOR_MARGIN)
        if self.bits != 4 or budget <= 0 or (self.error_budget is not None and self.error_budget <= budget):
            return None
        return self.with_options(error_budget=budget)

    def _resolved_algorithm(self) -> str:
        if self.algorithm != "auto":
            return self.algorithm
        calibrated = self.context is not None and self.context.calibration is not None
        return "awq" if calibrated else "hqq"

    def _resolved_format(self, model: ir.Model) -> str:
        if self.format != "auto":
            return self.format
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        providers = self.context.target.providers if self.context is not None else ["CPUExecutionProvider"]
        qdq = bool(providers) and providers[0] in _QDQ_PROVIDERS and opset >= MIN_DEQUANTIZE_OPSET
        return "dequantize" if qdq else "matmulnbits"

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        if self.bits == 1:
            return self._binarize(model)
        entries, skipped = self._entries(model)
        if not entries:
            logger.info("weightonly: nothing to quantize (%d node(s) skipped)", len(skipped))
            return PassResult(model, modified=False, statistics={"layers": 0, "skipped": skipped})
        before = _sizes(entries)
        algorithm = self._resolved_algorithm()
        stats: dict[str, Any] = {"bits": self.bits, "block_size": self.block_size, "symmetric": self.symmetric,
                                 "algorithm": algorithm}
        base = "hqq" if algorithm == "hqq" else "rtn"
        say = self.context.say if self.context is not None else None
        if algorithm in ("rtn", "hqq") and self.error_budget is None and not (
                self.measure_latency and self.context is not None):
            return self._layer_by_layer(model, entries, skipped, stats, base, before, say)
        for entry in track(entries, say, f"{base} grids", unit="layers"):
            entry.grids[self.bits] = self._grid(entry.weight, self.bits, base)
            entry.algorithm = base
        matmuls = [e for e in entries if e.kind == "matmul"]
        if algorithm == "awq" and matmuls:
            stats["awq"] = self._awq(model, matmuls)
        if algorithm == "gptq" and matmuls:
            context = self.context
            stats["gptq"] = _weightfit.gptq(model, entries, context.calibration, context.runner, bits=self.bits,
                                            block_size=self.block_size, symmetric=self.symmetric,
                                            limit=self.limit, say=context.say)
        chosen = {e.name: self.bits for e in entries}
        if self.error_budget is not None:
            for entry in entries:
                entry.grids.setdefault(8, self._grid(entry.weight, 8, "rtn"))
            chosen, stats["mixed"] = self._mix(model, entries)
        fmt = self._resolved_format(model)
        level = self.accuracy_level
        if self.measure_latency and self.context is not None:
            level, stats["latency"] = self._latency(model, entries, chosen, fmt)
        elif level == "auto":
            level = self._unmeasured_level()
        if fmt == "matmulnbits" and "com.microsoft" not in model.opset_imports:
            model.opset_imports["com.microsoft"] = 1
        count = _apply(model, entries, chosen, fmt, level)
        errors = {e.name: round(_weight_error(e, chosen[e.name]), 6) for e in entries}
        return self._result(model, entries, skipped, stats, chosen, fmt, level, count, errors, before,
                            _sizes(entries, chosen), algorithm)

    def _result(self, model: ir.Model, entries: list[Entry], skipped: dict[str, str], stats: dict[str, Any],
                chosen: dict[str, int], fmt: str, level: int, count: int, errors: dict[str, float],
                before: dict[str, int], after: dict[str, int], algorithm: str) -> PassResult:
        stats.update({
            "format": fmt, "accuracy_level": level if fmt == "matmulnbits" else None, "layers": count,
            "matmul_layers": sum(1 for e in entries if e.kind == "matmul"),
            "embedding_layers": sum(1 for e in entries if e.kind == "embedding"),
            "bits_per_layer": chosen, "algorithm_per_layer": {e.name: e.algorithm for e in entries},
            "weight_error": errors, "bytes_before": before, "bytes_after": after, "skipped": skipped})
        if "latency" in stats and stats["latency"].get("note"):
            stats["note"] = stats["latency"]["note"]
        logger.info("weightonly: %d layer(s) to %s bits (%s, %s), %d skipped", count, self.bits, algorithm, fmt,
                    len(skipped))
        return PassResult(model, modified=count > 0, statistics=stats)

    def _layer_by_layer(self, model: ir.Model, entries: list[Entry], skipped: dict[str, str], stats: dict[str, Any],
                        base: str, before: dict[str, int], say) -> PassResult:
        """Each layer's grid made, written into the model and dropped before the next layer's
        weight is read: a large model's weights pass through memory one at a time (the new
        tensors go to the spill file as they are made, ``_weights.keep``)."""
        fmt = self._resolved_format(model)
        level = self._unmeasured_level() if self.accuracy_level == "auto" else self.accuracy_level
        if fmt == "matmulnbits" and "com.microsoft" not in model.opset_imports:
            model.opset_imports["com.microsoft"] = 1
        chosen = {e.name: self.bits for e in entries}
        after = {"matmul": 0, "embedding": 0}
        errors: dict[str, float] = {}
        count = 0
        for entry in track(entries, say, f"{base} layers", unit="layers"):
            stored = _weights.read(entry.tensor)
            rows_k = stored.T if entry.kind == "matmul" else stored
            # Row blocks in float64, one at a time: a whole LM head in float64 with the fit's
            # temporaries would hold several times the layer.
            step = max(1, _ROWS_ELEMENTS // max(1, rows_k.shape[1]))
            parts, error, norm = [], 0.0, 0.0
            for start in range(0, rows_k.shape[0], step):
                rows = np.ascontiguousarray(rows_k[start:start + step], dtype=np.float64)
                part = self._grid(rows, self.bits, base)
                error += float(np.sum(np.square(rows - part.dequantized())))
                norm += float(np.sum(np.square(rows)))
                parts.append(part)
            del stored, rows_k
            grid = entry.grids[self.bits] = _blockwise.stack(parts)
            entry.algorithm = base
            errors[entry.name] = round(float(np.sqrt(error) / max(np.sqrt(norm), 1e-30)), 6)
            after[entry.kind] += grid.nbytes
            count += _apply(model, [entry], chosen, fmt, level)
            entry.grids.clear()
        return self._result(model, entries, skipped, stats, chosen, fmt, level, count, errors, before, after, base)

    def _unmeasured_level(self) -> int:
        """``accuracy_level="auto"`` without a measurement: MLAS has no fast 8-bit kernel at level 0
        (MiniLM, 2 threads: 9.6 ms at one token against 0.73 ms at level 4); 4-bit level 0 is exact
        and the faster at 128 tokens."""
        return 4 if self.bits == 8 else 0

    def _grid(self, weight: np.ndarray, bits: int, algorithm: str) -> _blockwise.Grid:
        if algorithm == "hqq":
            return _blockwise.hqq(weight, bits, self.block_size, self.symmetric)
        return _blockwise.rtn(weight, bits, self.block_size, self.symmetric)

    def _binarize(self, model: ir.Model) -> PassResult:
        """Hand the model to the 1-bit binarizer (``passes/_binary.py``)."""
        from onnxpress.passes import _binary

        context = self.context
        # The mean scale is data-free: no calibration sweep (measuring each layer's output error
        # costs a refit's solves, 70 s on ResNet-18), "optimal" fits on the data.
        feeds = context.calibration if context is not None and self.binary_scale == "optimal" else None
        runner = context.runner if context is not None else None
        changed, statistics = _binary.binarize(model, scale=self.binary_scale, keep_first_last=self.keep_first_last,
                                               exclude=self.exclude, feeds=feeds, runner=runner)
        return PassResult(model, modified=changed > 0, statistics={"bits": 1, **statistics})

    # --------------------------------------------------------------------------- layers

    def _entries(self, model: ir.Model) -> tuple[list[Entry], dict[str, str]]:
        """The layers to quantize (Gemms rewritten as MatMul + Add in place, unnamed nodes named)
        and the skipped candidates with the reason."""
        found: list[tuple[ir.Node, str]] = []
        skipped: dict[str, str] = {}
        for index, node in enumerate(model.graph):
            kind, reason = self._kind(node)
            label = node.name or f"{node.op_type}_{index}"
            if reason is not None:
                skipped[label] = reason
                logger.debug("weightonly: %s skipped: %s", label, reason)
            elif kind is not None:
                found.append((node, kind))
        if not found:
            return [], skipped
        taken = {n.name for n in model.graph if n.name}
        for index, node in enumerate(model.graph):  # statistics, GPTQ's stages and trials name nodes
            if not node.name:
                name = f"{node.op_type}_{index}"
                while name in taken:
                    name += "_"
                node.name = name
                taken.add(name)
        entries = []
        for node, kind in found:
            if kind == "gemm":
                bias_add = _gemm_as_matmul(model, node)
                node = next(n for n in model.graph if n.name == node.name)
                entries.append(Entry(node.name, "matmul", constant_tensor(node.inputs[1]), bias_add=bias_add))
            elif kind == "matmul":
                entries.append(Entry(node.name, kind, constant_tensor(node.inputs[1])))
            else:
                entries.append(Entry(node.name, kind, constant_tensor(node.inputs[0])))
        return entries, skipped

    def _kind(self, node: ir.Node) -> tuple[str | None, str | None]:
        """``matmul``, ``gemm`` or ``embedding`` for a node to quantize, or the reason a
        candidate is skipped (None, None for any other node)."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in ("MatMul", "Gemm", "Gather"):
            return None, None
        if op == "Gather" and not self.embeddings:
            return None, None
        index = 0 if op == "Gather" else 1
        tensor = constant_tensor(node.inputs[index]) if len(node.inputs) > index else None
        if tensor is None:
            return None, None  # two activations: nothing to store
        if node.name in self.exclude or op in self.exclude:
            return None, "excluded by the exclude option"
        shape, dtype = tuple(tensor.shape), np.dtype(tensor.dtype.numpy())  # not read: the tensor may be on disk
        size = int(np.prod(shape))
        if len(shape) != 2:
            return None, f"{len(shape)}-D constant: block-wise kernels take 2-D weights"
        if dtype != np.float32:
            return None, f"{dtype} weight: MatMulNBits here computes in float32"
        if size < self.min_elements:
            return None, f"{size} elements, under min_elements={self.min_elements}"
        if constant_tensor(node.inputs[1 - index]) is not None:
            return None, "both inputs constant (left to constant folding)"
        if op == "Gather":
            if node.attributes.get_int("axis", 0) not in (0, -2):
                return None, "Gather along the embedding axis: GatherBlockQuantized gathers rows"
            if shape[1] % self.block_size:
                return None, f"table width {shape[1]} is not a multiple of block_size={self.block_size}"
            return "embedding", None
        if op == "Gemm":
            if node.attributes.get_int("transA", 0):
                return None, "Gemm with transA: no block-wise kernel transposes A"
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            if bias is not None:
                value = constant(bias)
                n = shape[0] if node.attributes.get_int("transB", 0) else shape[1]
                if value is None or value.size != n:
                    return None, "Gemm bias that is not a constant of one value per output: left float"
            return "gemm", None
        return "matmul", None

    def _awq(self, model: ir.Model, entries: list[Entry]) -> dict[str, Any]:
        groups = _weightfit.awq_groups(model, entries)
        if not groups:
            return {}
        stats = self.context.statistics(model, tensors=list(groups), channel_axes={a: -1 for a in groups},
                                        second_moments=list(groups), limit=self.limit)
        return _weightfit.awq(model, groups, stats, bits=self.bits,
                              quantize=lambda weight: self._grid(weight, self.bits, "rtn"), say=self.context.say)

    # ----------------------------------------------------------------- accuracy and speed

    def _mix(self, model: ir.Model, entries: list[Entry]) -> tuple[dict[str, int], dict[str, Any]]:
        """Promote the layers whose 4-bit form costs most to 8 bits until ``1 - cosine`` of the
        outputs on held-out data is within ``error_budget`` (fewest promoted, binary search)."""
        context = self.context
        reference = context.outputs(model)

        def cost(chosen: dict[str, int | None]) -> float:
            trial = model.clone()
            _apply(trial, entries, chosen, "matmulnbits", 0, opset=True)
            return 1.0 - context.score(reference, trial)["cosine"]

        low = {e.name: 4 for e in entries}
        all_low = cost(low)
        record: dict[str, Any] = {"budget": self.error_budget, "error_4bit": round(all_low, 6)}
        if all_low <= self.error_budget:
            return low, {**record, "promoted": [], "error": round(all_low, 6), "met": True}
        sensitivity = {e.name: cost({e.name: 4}) for e in context.track(entries, "sensitivity", unit="layers")}
        ranked = sorted(sensitivity, key=lambda n: -sensitivity[n])
        record["sensitivity"] = {n: round(sensitivity[n], 6) for n in ranked}
        lo, hi, best = 1, len(ranked), None
        with context.step("8-bit search", None, "trials") as search:  # a binary search: its length varies
            while lo <= hi:
                middle = (lo + hi) // 2
                chosen = {n: (8 if n in set(ranked[:middle]) else 4) for n in ranked}
                error = cost(chosen)
                context.say(f"weightonly: {middle} layer(s) at 8 bits: 1 - cosine {error:.5f}")
                search.advance()
                if error <= self.error_budget:
                    best, hi = (middle, chosen, error), middle - 1
                else:
                    lo = middle + 1
        if best is None:
            chosen = {n: 8 for n in ranked}
            return chosen, {**record, "promoted": ranked, "error": round(cost(chosen), 6), "met": False}
        count, chosen, error = best
        return chosen, {**record, "promoted": ranked[:count], "error": round(error, 6), "met": True}

    def _latency(self, model: ir.Model, entries: list[Entry], chosen: dict[str, int], fmt: str
                 ) -> tuple[int, dict[str, Any]]:
        """Latency of the result against the float model (and, on a CPU target, dynamic int8),
        at the evaluation data's shapes; ``accuracy_level="auto"`` takes the faster of 0 and 4."""
        context = self.context
        record: dict[str, Any] = {"fp32_ms": round(context.latency(model), 4)}
        levels = [0, 4] if self.accuracy_level == "auto" and fmt == "matmulnbits" else [
            0 if self.accuracy_level == "auto" else self.accuracy_level]
        timed = {}
        for level in levels:
            trial = model.clone()
            _apply(trial, entries, chosen, fmt, level, opset=True)
            timed[level] = context.latency(trial)
            record[f"level{level}_ms"] = round(timed[level], 4)
        level = levels[0]
        if len(levels) > 1 and timed[4] < timed[0] * _LATENCY_GAIN:
            level = 4
        record["weightonly_ms"] = round(timed[level], 4)
        record["vs_fp32"] = round(timed[level] / record["fp32_ms"], 3)
        if context.runner.settings.cpu_only and (self.format == "auto" or self.accuracy_level == "auto"):
            from onnxpress.passes.quantize import Quantize

            dynamic = Quantize(mode="dynamic", smoothquant=False, gptq=False, bias_correction=False)
            result = dynamic.run_in(context, model.clone())
            record["dynamic_int8_ms"] = round(context.latency(result.model), 4)
            record["vs_dynamic_int8"] = round(timed[level] / record["dynamic_int8_ms"], 3)
        if record["vs_fp32"] >= 0.9 or record.get("vs_dynamic_int8", 0.0) > 1.1:
            against = (f" and {record['vs_dynamic_int8']:.2f}x dynamic int8" if "vs_dynamic_int8" in record else "")
            record["note"] = (f"{self.bits}-bit weight-only runs at {record['vs_fp32']:.2f}x fp32{against} latency "
                              "at these shapes: a size method on this target")
        return level, record


# ------------------------------------------------------------------------------- helpers

def _apply(model: ir.Model, entries: list[Entry], chosen: dict[str, int | None], fmt: str, level: int, *,
           opset: bool = False) -> int:
    """Rewrite the ``entries`` of ``model`` (looked up by name) to their grids of the bits in
    ``chosen`` (absent or None: left float), in place. Returns the count rewritten."""
    by_name = {node.name: node for node in model.graph}
    if opset and fmt == "matmulnbits":
        model.opset_imports.setdefault("com.microsoft", 1)
    count = 0
    for entry in entries:
        bits = chosen.get(entry.name)
        node = by_name.get(entry.name)
        if bits is None or node is None:
            continue
        grid = entry.grids[bits]
        bias_add = by_name.get(entry.bias_add) if entry.bias_add else None
        replaced = [node.inputs[0 if entry.kind == "embedding" else 1]] + ([bias_add.inputs[1]] if bias_add else [])
        if fmt == "dequantize":
            _blockwise.to_dequantize(model.graph, node, grid, embedding=entry.kind == "embedding")
        elif entry.kind == "embedding":
            _blockwise.to_gather(model.graph, node, grid)
        else:
            _blockwise.to_matmulnbits(model.graph, node, grid, accuracy_level=level, bias_add=bias_add)
        for value in replaced:  # the float weights the grids replace, unless read elsewhere
            if value is not None and not value.uses() and value.is_initializer() and not value.is_graph_output():
                model.graph.initializers.pop(value.name)
        count += 1
    return count


def _gemm_as_matmul(model: ir.Model, gemm: ir.Node) -> str | None:
    """Rewrite a Gemm (constant 2-D ``B``, no ``transA``) as MatMul + Add, in place, and return
    the Add's name (None without a bias).

    Gemm computes ``alpha·A·op(B) + beta·C`` (alpha and beta default to 1.0): ``alpha`` and
    ``transB`` are folded into the weight, ``beta`` into the constant bias. The MatMul keeps the
    Gemm's name; the old ``B`` and ``C`` are removed when nothing else reads them.
    """
    weight = constant(gemm.inputs[1])
    if gemm.attributes.get_int("transB", 0):
        weight = weight.T
    weight = np.ascontiguousarray(weight * gemm.attributes.get_float("alpha", 1.0)).astype(np.float32)
    name = gemm.name
    w = add_initializer(model.graph, f"{name}_weight", weight)
    matmul = ir.node("MatMul", [gemm.inputs[0], w], name=name)
    new_nodes, result = [matmul], matmul.outputs[0]
    bias_name = None
    if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
        bias = (constant(gemm.inputs[2]).reshape(-1) * gemm.attributes.get_float("beta", 1.0)).astype(np.float32)
        c = add_initializer(model.graph, f"{name}_bias", bias)
        bias_name = f"{name}_bias_add"
        add = ir.node("Add", [result, c], name=bias_name)
        matmul.outputs[0].name = f"{gemm.outputs[0].name}_matmul"
        new_nodes.append(add)
        result = add.outputs[0]
    old = [v for v in gemm.inputs[1:] if v is not None]
    ir.convenience.replace_nodes_and_values(model.graph, gemm, [gemm], new_nodes, [gemm.outputs[0]], [result])
    for value in old:
        if not value.uses() and value.is_initializer() and not value.is_graph_output():
            model.graph.initializers.pop(value.name)
    return bias_name


def _sizes(entries: list[Entry], chosen: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes of the layers' weights by kind: float32, or as stored at the chosen bits."""
    sizes = {"matmul": 0, "embedding": 0}
    for entry in entries:
        if chosen is None:
            sizes[entry.kind] += entry.size * 4
        else:
            sizes[entry.kind] += entry.grids[chosen[entry.name]].nbytes
    return sizes


def _weight_error(entry: Entry, bits: int) -> float:
    """``||W - Ŵ|| / ||W||`` of the stored grid."""
    weight = entry.weight
    return float(np.linalg.norm(weight - entry.grids[bits].dequantized()) / max(np.linalg.norm(weight), 1e-30))
