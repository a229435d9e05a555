"""LowRank: factor constant MatMul/Gemm weights and 1x1 Conv weights into two thinner layers."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress.context import Pass, PassResult
from onnxpress.modelinfo import fingerprint
from onnxpress.passes import _compensate
from onnxpress import _weights
from onnxpress.passes._common import constant, constant_tensor, reject_option
from onnxpress.progress import Tracker, track

logger = logging.getLogger(__name__)

Method = Literal["svd", "activation", "eigen"]

# Randomized SVD pays off once the matrix is large and the rank small against it.
_RANDOMIZED_MIN_DIM = 768
_RANDOMIZED_MAX_SHARE = 0.25
_FLOAT64_MAX_ELEMENTS = 2**24


@dataclass
class _Layer:
    """One factorable weight: ``y = x @ W`` with W of shape [K, N] (after undoing transposes)."""

    node: ir.Node
    kind: str  # "matmul", "gemm" or "conv1x1"
    tensor: ir.TensorProtocol  # the weight as stored: read on use (large models keep it on disk)
    transposed: bool  # a Gemm's transB: stored [N, K]
    activation: str  # name of x
    singular: np.ndarray | None = None  # spectrum of the (whitened) weight
    sensitivity: float = 1.0  # final-output error per unit of relative layer error (measured)
    energy_total: float = 0.0
    kept_energy: float = 0.0
    rank: int = 0
    decomposition: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def weight(self) -> np.ndarray:
        """W as [K, N], read from the tensor each time (one layer's weight in memory at a time)."""
        array = _weights.read(self.tensor)
        if self.kind == "conv1x1":
            return array[:, :, 0, 0].T
        return array.T if self.transposed else array

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.tensor.dtype.numpy())

    @property
    def shape(self) -> tuple[int, int]:
        dims = tuple(self.tensor.shape)
        if self.kind == "conv1x1":
            return dims[1], dims[0]
        return (dims[1], dims[0]) if self.transposed else (dims[0], dims[1])  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def dense_params(self) -> int:
        return self.size

    def factored_params(self, rank: int) -> int:
        return rank * (self.shape[0] + self.shape[1])

    def break_even(self, margin: float) -> int:
        """Largest rank that still stores ``margin`` fewer parameters than the dense weight."""
        k, n = self.shape
        return int(np.floor((1.0 - margin) * k * n / (k + n)))


class LowRank(Pass, ir.passes.FunctionalPass):
    """Replace a weight W (K x N) by A (K x r) @ B (r x N) where that stores fewer parameters.

    Applies to MatMul with a constant 2-D weight, Gemm (transA/transB, alpha, beta and bias
    handled: the bias stays on the second factor) and 1x1 Conv (two 1x1 Convs). A layer is
    factored only when ``r * (K + N)`` is at least ``min_saving`` below ``K * N``; others are
    skipped with the reason in the statistics.

    ``method="svd"`` truncates W's singular value decomposition. ``method="activation"``
    minimises the error of the layer's *output* on calibration data: with C = E[x xᵀ] from the
    pipeline's activation statistics and S = C^(1/2), it truncates the SVD of S·W and maps the
    factors back (A = S⁻¹·U_r·Σ_r^½, B = Σ_r^½·V_rᵀ).

    Rank selection (one of): ``rank`` (fixed), ``rank_ratio`` (share of full rank), ``energy``
    (share of σ² kept), ``budget`` (share of the factored layers' parameters kept in total,
    allocated across layers greedily by output error removed per parameter), ``tolerance``
    (largest relative output error per layer, measured through C). Statistics per layer: rank,
    energy kept, relative output error, parameters and FLOPs before and after.

    With a budget and calibration data, layers are weighted by how much the model's outputs
    suffer from their error (``measure_sensitivity``): each layer is factored alone at the
    uniform rank of the budget and the outputs compared on held-out data; the allocation then
    minimises the predicted output error, not the sum of per-layer errors.

    ``method="eigen"`` projects the layer's output onto the top eigenvectors of its output
    covariance E[y yᵀ] = Wᵀ·C·W (A = W·V_r, B = V_rᵀ): the same optimum as ``activation``
    reached from the output side, without the input whitening's damping.

    ``compensate`` (``"auto"``: when the pipeline has calibration data): after factoring, the
    factors are refit in closed form, layer by layer in graph order, so that each factored
    layer given the inputs the factored model really gives it reproduces what the original
    layer gave (see ``passes/_compensate.py``); the ranks stay. Statistics per layer: the
    relative output error before and after the refit.

    Replaced weights become unused initializers; they are removed before returning.
    """

    name = "lowrank"

    def __init__(self, *, method: Method = "svd", rank: int | None = None, rank_ratio: float | None = None,
                 energy: float | None = None, budget: float | None = None, tolerance: float | None = None,
                 min_saving: float = 0.1, min_elements: int = 4096, op_types: list[str] | None = None,
                 exclude: list[str] | None = None, damping: float = 0.01, calibration_samples: int = 256,
                 randomized: bool = True, measure_sensitivity: bool = True, sensitivity_rounds: int = 2,
                 compensate: Literal["auto"] | bool = "auto", seed: int = 0) -> None:
        super().__init__()
        reject_option(method not in ("svd", "activation", "eigen"), "lowrank", "method", "svd, activation or eigen",
                      method)
        reject_option(compensate not in ("auto", True, False), "lowrank", "compensate", "'auto', true or false",
                      compensate)
        chosen = [name for name, value in (("rank", rank), ("rank_ratio", rank_ratio), ("energy", energy),
                                           ("budget", budget), ("tolerance", tolerance)) if value is not None]
        if len(chosen) > 1:
            raise ValueError(f"lowrank: give one rank selection, got {', '.join(chosen)}")
        if not chosen:
            budget = 0.5
        reject_option(rank is not None and rank < 1, "lowrank", "rank", ">= 1", rank)
        for name, value in (("rank_ratio", rank_ratio), ("energy", energy), ("budget", budget)):
            reject_option(value is not None and not 0.0 < value <= 1.0, "lowrank", name, "in (0, 1]", value)
        reject_option(tolerance is not None and not 0.0 < tolerance < 1.0,
                      "lowrank", "tolerance", "in (0, 1)", tolerance)
        reject_option(not 0.0 <= min_saving < 1.0, "lowrank", "min_saving", "in [0, 1)", min_saving)
        reject_option(damping < 0, "lowrank", "damping", ">= 0", damping)
        reject_option(sensitivity_rounds < 1, "lowrank", "sensitivity_rounds", ">= 1", sensitivity_rounds)
        self.method = method
        self.rank = rank
        self.rank_ratio = rank_ratio
        self.energy = energy
        self.budget = budget
        self.tolerance = tolerance
        self.min_saving = min_saving
        self.min_elements = min_elements
        self.op_types = list(op_types) if op_types is not None else ["MatMul", "Gemm", "Conv"]
        self.exclude = list(exclude or [])
        self.damping = damping
        self.calibration_samples = calibration_samples
        self.randomized = randomized
        self.measure_sensitivity = measure_sensitivity
        self.sensitivity_rounds = sensitivity_rounds
        self.compensate = compensate
        self.seed = seed

    def needs_calibration(self, model: ir.Model) -> bool:
        """The activation and eigen methods, a tolerance and ``compensate = true`` need data."""
        return self._needs_statistics() or self.compensate is True

    def _compensating(self, model: ir.Model) -> bool:
        """``auto``: with calibration data, unless the model runs piecewise (past the target's
        ``session_memory_mb``): the refit runs the model once per stage of layers, and a model
        run one segment at a time would take hours; ``compensate = true`` still refits it."""
        if self.compensate == "auto":
            context = self.context
            if context is None or context.calibration is None:
                return False
            if context.runner.segment_bytes(model) is not None:
                logger.info("lowrank: no compensation (compensate = \"auto\"): the model runs piecewise")
                return False
            return True
        return bool(self.compensate)

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        result = model.clone()
        ir.passes.Sequential(common_passes.NameFixPass())(result)
        teacher = result.clone() if self._compensating(model) else None  # the original, by the same names
        layers, skipped = self._layers(result)
        whitening = self._whitening(result, layers) if layers and self._needs_statistics() else {}
        spectrum_needed = self.energy is not None or self.budget is not None or self.tolerance is not None
        say = self.context.say if self.context is not None else None
        for layer in track(layers, say, "spectra" if spectrum_needed else "energies", unit="layers"):
            matrix = layer.weight
            if layer.activation in whitening or spectrum_needed:
                matrix = matrix.astype(np.float64)
            if layer.activation in whitening:
                matrix = whitening[layer.activation][0] @ matrix
            layer.energy_total = float(np.sum(np.square(matrix), dtype=np.float64))
            if spectrum_needed:  # a fixed rank needs only the top triplets, found later
                layer.decomposition = _gram_svd(matrix)
                layer.singular = layer.decomposition[1]
        self._choose_ranks(layers)
        if self.budget is not None and self.measure_sensitivity and self.context is not None \
                and self.context.calibration is not None:
            # Measured at the uniform rank first, then again at the ranks that allocation gave:
            # the second measurement is closer to the error each layer will really have.
            for layer in layers:
                layer.rank = 0
            for number in range(1, self.sensitivity_rounds + 1):
                task = "sensitivity" if self.sensitivity_rounds == 1 else \
                    f"sensitivity, round {number}/{self.sensitivity_rounds}"
                self._measure_sensitivity(result, layers, whitening, task)
                self._allocate(layers)
        report: dict[str, Any] = {}
        factored = 0
        for layer in track(layers, say, "factor", unit="layers"):
            limit = layer.break_even(self.min_saving)
            name = layer.node.name
            if layer.rank <= 0 or layer.rank > limit:
                skipped[name] = (f"rank {layer.rank} would not save {self.min_saving:.0%} of {layer.shape[0]}x"
                                 f"{layer.shape[1]} (break-even {limit})")
                continue
            a, b = self._factors(layer, whitening.get(layer.activation))
            report[name] = self._describe(layer, a, b, whitening.get(layer.activation))
            report[name]["sensitivity"] = round(layer.sensitivity, 6)
            self._rewrite(result, layer, a, b)
            factored += 1
        compensation = self._compensate(teacher, result, [layer for layer in layers if layer.node.name in report]) \
            if teacher is not None and report else {}
        common_passes.RemoveUnusedNodesPass()(result)
        before = sum(layer.dense_params for layer in layers)
        after = sum(r["params_after"] for r in report.values()) + sum(
            layer.dense_params for layer in layers if layer.node.name not in report)
        statistics = {"method": self.method, "compensated": bool(compensation), "compensation": compensation,
                      "factored": factored, "layers": report, "skipped": skipped,
                      "params_before": before, "params_after": after,
                      "params_kept": round(after / before, 4) if before else 1.0}
        if teacher is None and self.compensate == "auto" and self.context is not None \
                and self.context.calibration is not None:
            statistics["note"] = ("not compensated: the model runs piecewise, and a refit would run it once per "
                                  "stage of layers (compensate = true refits it anyway)")
        logger.info("lowrank: factored %d of %d candidate layers, %d -> %d parameters",
                    factored, len(layers), before, after)
        return PassResult(result, modified=fingerprint(result) != fingerprint(model), statistics=statistics)

    def _needs_statistics(self) -> bool:
        return self.method in ("activation", "eigen") or self.tolerance is not None

    def _compensate(self, teacher: ir.Model, student: ir.Model, layers: list[_Layer]) -> dict[str, dict[str, Any]]:
        """Refit each factored layer's A and B to the original layer's outputs (in place)."""
        graph = student.graph
        refits = []
        for layer in layers:
            base = layer.node.name
            if layer.kind == "gemm" and layer.node.attributes.get_int("transA", 0):
                continue  # x enters transposed: its rows are not the layer's inputs
            names = (f"{base}_lowrank_a", f"{base}_lowrank_b")
            if not all(name in graph.initializers for name in names):
                continue
            rows = _compensate.channel_rows if layer.kind == "conv1x1" else _compensate.flat_rows

            def fit(best, damped, layer=layer, names=names):
                a, b = _compensate.factored(best, damped, layer.rank)
                arrays = (a.T[:, :, None, None], b.T[:, :, None, None]) if layer.kind == "conv1x1" else (a, b)

                def write():
                    for name, array in zip(names, arrays):
                        graph.initializers[name].const_value = _weights.keep(ir.tensor(
                            np.ascontiguousarray(array).astype(layer.dtype), name=name))

                return a @ b, write

            a, b = (constant(graph.initializers[name]) for name in names)
            if layer.kind == "conv1x1":
                a, b = a[:, :, 0, 0].T, b[:, :, 0, 0].T
            refits.append(_compensate.Layer(
                key=base, weight=layer.weight, start=a.astype(np.float64) @ b, teacher_input=layer.activation,
                student_input=layer.activation, teacher_rows=rows, student_rows=rows, fit=fit,
                owns=(f"{base}_lowrank_1", f"{base}_lowrank_2")))
        context = self.context
        return _compensate.refit(teacher, student, refits, context.calibration, context.runner, damping=self.damping,
                                 limit=self.calibration_samples, seed=self.seed, say=context.say)

    def _layers(self, model: ir.Model) -> tuple[list[_Layer], dict[str, str]]:
        layers, skipped = [], {}
        for node in model.graph:
            if node.op_type not in self.op_types or node.name in self.exclude or node.op_type in self.exclude:
                continue
            layer, reason = _as_layer(node)
            if layer is None:
                if reason:
                    skipped[node.name] = reason
                continue
            if layer.size < self.min_elements:
                skipped[node.name] = f"{layer.size} weights, fewer than min_elements ({self.min_elements})"
                continue
            layers.append(layer)
        return layers, skipped

    def _whitening(self, model: ir.Model, layers: list[_Layer]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per activation: S = Lᵀ and S⁻¹ from the Cholesky factor of its damped second moments."""
        activations = sorted({layer.activation for layer in layers})
        axes = {name: (1 if any(l.kind == "conv1x1" and l.activation == name for l in layers) else -1)
                for name in activations}
        stats = self.context.statistics(model, tensors=activations, channel_axes=axes, second_moments=activations,
                                        limit=self.calibration_samples)
        result = {}
        for name in activations:
            tensor = stats.tensors.get(name)
            if tensor is None or tensor.second_moment is None or tensor.channel_rows == 0:
                continue
            moment = tensor.second_moment / tensor.channel_rows
            moment += np.eye(moment.shape[0]) * self.damping * max(np.trace(moment) / moment.shape[0], 1e-12)
            # C = L·Lᵀ, so ||X·(W - Ŵ)||² = ||Lᵀ·(W - Ŵ)||²: whiten with Lᵀ, map back with L⁻ᵀ.
            lower = np.linalg.cholesky(moment)
            result[name] = (lower.T, np.linalg.inv(lower).T)
        return result

    # ------------------------------------------------------------------------- rank choice

    def _choose_ranks(self, layers: list[_Layer]) -> None:
        for layer in layers:
            full = min(layer.shape)
            spectrum = layer.singular
            if self.rank is not None:
                layer.rank = min(self.rank, full)
            elif self.rank_ratio is not None:
                layer.rank = max(1, int(round(self.rank_ratio * full)))
            elif self.energy is not None:
                share = np.cumsum(spectrum ** 2) / max(layer.energy_total, 1e-30)
                layer.rank = int(np.searchsorted(share, self.energy - 1e-12) + 1)
            elif self.tolerance is not None:
                # Relative output error of rank r: sqrt(sum of the dropped σ² / total σ²).
                tail = np.sqrt(np.maximum(layer.energy_total - np.cumsum(spectrum ** 2), 0) /
                               max(layer.energy_total, 1e-30))
                layer.rank = int(np.argmax(tail <= self.tolerance) + 1) if np.any(tail <= self.tolerance) else full
        if self.budget is not None:
            self._allocate(layers)

    def _measure_sensitivity(self, model: ir.Model, layers: list[_Layer], whitening, task: str) -> None:
        """Factor each layer alone at the budget's uniform rank and measure the output cosine:
        sensitivity = (1 - cosine) / (relative layer error)². ``task`` names the step."""
        context = self.context
        reference = context.outputs(model)
        uniform = self.budget * sum(l.dense_params for l in layers) / sum(sum(l.shape) for l in layers)
        for layer in context.track(layers, task, unit="layers"):
            rank = layer.rank if layer.rank > 0 else int(uniform)
            rank = max(1, min(rank, layer.break_even(0.0), min(layer.shape)))
            tail = float(np.sum(layer.singular[rank:] ** 2)) / max(layer.energy_total, 1e-30)
            if tail <= 1e-12:
                continue
            trial = model.clone()
            node = next(n for n in trial.graph if n.name == layer.node.name)
            probe = _Layer(node, layer.kind, layer.tensor, layer.transposed, layer.activation,
                           decomposition=layer.decomposition, rank=rank)
            self._rewrite(trial, probe, *self._factors(probe, whitening.get(layer.activation)))
            cosine = context.score(reference, trial)["cosine"]
            layer.sensitivity = max(1.0 - cosine, 1e-9) / tail

    def _allocate(self, layers: list[_Layer]) -> None:
        """Greedy: keep the components with the most relative output energy per parameter until
        the factored layers' parameters reach ``budget`` of their dense total. A layer whose rank
        passes its break-even point is kept dense instead (no error, K·N parameters)."""
        total = sum(layer.dense_params for layer in layers)
        allowance = self.budget * total
        for layer in layers:
            layer.rank = 0
        dense: set[int] = set()
        say = self.context.say if self.context is not None else None
        with Tracker(say, "allocation", None, "rounds") as rounds:  # a round per layer made dense, at most
            while True:
                spent = sum(layers[i].dense_params for i in dense)
                candidates = []
                for index, layer in enumerate(layers):
                    if index in dense:
                        continue
                    gain = layer.singular ** 2 / max(layer.energy_total, 1e-30)
                    cost = layer.shape[0] + layer.shape[1]
                    candidates += [(layer.sensitivity * g / cost, index)
                                   for g in gain[: layer.break_even(self.min_saving)]]
                candidates.sort(key=lambda item: -item[0])
                ranks = {index: 0 for index in range(len(layers)) if index not in dense}
                for _, index in candidates:
                    cost = layers[index].shape[0] + layers[index].shape[1]
                    if spent + cost > allowance:
                        break
                    ranks[index] += 1
                    spent += cost
                for index, rank in ranks.items():
                    layers[index].rank = rank
                rounds.advance()
                # A layer at its break-even rank gains nothing by factoring: make it dense and
                # re-spread what is left, once the budget allows it.
                promote = [i for i, r in ranks.items() if r >= layers[i].break_even(self.min_saving)
                           and sum(layers[j].dense_params for j in dense | {i}) + sum(
                               layers[j].factored_params(ranks[j]) for j in ranks if j != i) <= allowance]
                if not promote:
                    break
                dense.add(promote[0])
        for index in dense:
            layers[index].rank = 0  # marks "left dense"; the statistics say why

    # ----------------------------------------------------------------------------- factors

    def _factors(self, layer: _Layer, whitening) -> tuple[np.ndarray, np.ndarray]:
        # float64 unless the layer is huge (an LM head): its float64 copy and the sketches would
        # hold several times the layer; the randomized SVD keeps its accuracy in float32.
        matrix = np.asarray(layer.weight, dtype=np.float64 if layer.size <= _FLOAT64_MAX_ELEMENTS else np.float32)
        if whitening is not None:
            matrix = whitening[0] @ matrix
        if layer.decomposition is not None:
            u, s, vt = (part[..., : layer.rank] if i == 0 else part[: layer.rank]
                        for i, part in enumerate(layer.decomposition))
        else:
            u, s, vt = _truncated_svd(matrix, layer.rank, self.randomized, self.seed)
        layer.kept_energy = float(np.sum(s ** 2))
        if self.method == "eigen":  # V_r: the top eigenvectors of the output covariance (S·W)ᵀ(S·W)
            return (layer.weight.astype(np.float64) @ vt.T).astype(layer.dtype), vt.astype(layer.dtype)
        root = np.sqrt(s)
        a = u * root
        b = root[:, None] * vt
        if whitening is not None:
            a = whitening[1] @ a
        return a.astype(layer.dtype), b.astype(layer.dtype)

    def _describe(self, layer: _Layer, a: np.ndarray, b: np.ndarray, whitening) -> dict[str, Any]:
        k, n = layer.shape
        kept = layer.kept_energy / max(layer.energy_total, 1e-30)
        weight = layer.weight
        if whitening is not None:
            error = a.astype(np.float64) @ b - weight
            relative = float(np.linalg.norm(whitening[0] @ error) / max(np.linalg.norm(whitening[0] @ weight), 1e-30))
        else:  # in row blocks: an LM head's float64 product and error would hold four times the layer
            step = max(1, _FLOAT64_MAX_ELEMENTS // 4 // max(1, n))
            squared = sum(float(np.sum(np.square(a[i:i + step].astype(np.float64) @ b - weight[i:i + step])))
                          for i in range(0, k, step))
            relative = float(np.sqrt(squared) / max(np.linalg.norm(weight), 1e-30))
        return {"shape": [k, n], "rank": layer.rank, "energy_kept": round(kept, 6),
                "relative_error": round(relative, 6), "output_error_measured": whitening is not None,
                "params_before": k * n, "params_after": layer.rank * (k + n),
                "flops_per_row_before": 2 * k * n, "flops_per_row_after": 2 * layer.rank * (k + n)}

    def _rewrite(self, model: ir.Model, layer: _Layer, a: np.ndarray, b: np.ndarray) -> None:
        node = layer.node
        graph = model.graph
        base = node.name
        a_value = _initializer(graph, f"{base}_lowrank_a", a)
        b_value = _initializer(graph, f"{base}_lowrank_b", b)
        if layer.kind == "matmul":
            first = ir.node("MatMul", [node.inputs[0], a_value], name=f"{base}_lowrank_1")
            second = ir.node("MatMul", [first.outputs[0], b_value], name=f"{base}_lowrank_2")
        elif layer.kind == "gemm":
            # Gemm defaults (ONNX spec): alpha = beta = 1.0, transA = 0. alpha and transA go to the
            # first factor, beta to the second, which carries the bias.
            attributes = node.attributes
            first = ir.node("Gemm", [node.inputs[0], a_value], attributes={
                "alpha": attributes.get_float("alpha", 1.0), "transA": attributes.get_int("transA", 0)},
                name=f"{base}_lowrank_1")
            inputs = [first.outputs[0], b_value] + ([node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else [])
            second = ir.node("Gemm", inputs, attributes={"beta": attributes.get_float("beta", 1.0)},
                             name=f"{base}_lowrank_2")
        else:  # 1x1 Conv: weights [N, K, 1, 1]; the first conv keeps strides, pads and dilations
            attrs = {attr.name: attr.value for attr in node.attributes.values() if attr.name != "group"}
            a_value.const_value = _weights.keep(ir.tensor(a.T[:, :, None, None].copy(), name=a_value.name))
            b_value.const_value = _weights.keep(ir.tensor(b.T[:, :, None, None].copy(), name=b_value.name))
            first = ir.node("Conv", [node.inputs[0], a_value], attributes=attrs, name=f"{base}_lowrank_1")
            inputs = [first.outputs[0], b_value] + ([node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else [])
            second = ir.node("Conv", inputs, attributes={"kernel_shape": [1, 1]}, name=f"{base}_lowrank_2")
        first.outputs[0].name = f"{base}_lowrank_hidden"
        graph.insert_before(node, [first, second])
        output = node.outputs[0]
        name = output.name
        output.replace_all_uses_with(second.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        output.name = None  # the tensor keeps its name: consumers and graph outputs see no change
        second.outputs[0].name = name
        second.outputs[0].type, second.outputs[0].shape = output.type, output.shape


def _as_layer(node: ir.Node) -> tuple[_Layer | None, str]:
    """The node as ``x @ W`` with a constant 2-D W, or None and why not (W is not read)."""
    weight = constant_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
    if node.inputs[0] is None or not node.inputs[0].name:
        return None, ""
    dims = tuple(weight.shape) if weight is not None else ()
    if node.op_type == "MatMul":
        if weight is None:
            return None, ""
        if len(dims) != 2:
            return None, f"batched MatMul weight of rank {len(dims)} left alone"
        return _Layer(node, "matmul", weight, False, node.inputs[0].name), ""
    if node.op_type == "Gemm":
        if weight is None:
            return None, "Gemm weight is not constant"
        trans_b = bool(node.attributes.get_int("transB", 0))
        return _Layer(node, "gemm", weight, trans_b, node.inputs[0].name), ""
    if node.op_type == "Conv":
        if weight is None or len(dims) != 4 or dims[2:] != (1, 1):
            return None, ""
        if node.attributes.get_int("group", 1) != 1:
            return None, "grouped 1x1 Conv left alone"
        return _Layer(node, "conv1x1", weight, False, node.inputs[0].name), ""
    return None, ""


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=_weights.keep(ir.tensor(np.ascontiguousarray(array), name=name)))
    graph.register_initializer(value)
    return value


def _gram_svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full SVD through the eigendecomposition of the smaller Gram matrix (descending order).

    Several times faster than ``numpy.linalg.svd`` on tall or wide weights; the components
    kept by a truncation (the large ones) lose no accuracy that matters here.
    """
    k, n = matrix.shape
    tall = k >= n
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    singular = np.sqrt(values)
    safe = np.where(singular > singular[0] * 1e-12, singular, np.inf) if singular.size else singular
    if tall:  # vectors are V's columns
        return (matrix @ vectors) / safe, singular, vectors.T
    return vectors, singular, (vectors.T @ matrix) / safe[:, None]


def _truncated_svd(matrix: np.ndarray, rank: int, randomized: bool, seed: int):
    """The top ``rank`` singular triplets; randomized (Halko et al.) when the matrix is large."""
    k, n = matrix.shape
    if randomized and min(k, n) >= _RANDOMIZED_MIN_DIM and rank <= _RANDOMIZED_MAX_SHARE * min(k, n):
        rng = np.random.default_rng(seed)
        # In the matrix's own type: a float64 probe would promote a float32 LM head to float64.
        sketch = matrix @ rng.standard_normal((n, rank + max(10, rank // 2)), dtype=matrix.dtype)  # oversampled
        for _ in range(4):  # power iterations: weight spectra decay slowly
            sketch = matrix @ (matrix.T @ np.linalg.qr(sketch)[0])
        basis = np.linalg.qr(sketch)[0]
        u_small, s, vt = np.linalg.svd(basis.T @ matrix, full_matrices=False)
        return (basis @ u_small)[:, :rank], s[:rank], vt[:rank]
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], s[:rank], vt[:rank]
