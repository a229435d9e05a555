"""Prune: zero weights (unstructured, N:M) or remove whole channels and neurons (structured)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxpress.context import Pass, PassResult
from onnxpress.modelinfo import deflated_size, fingerprint, model_flops
from onnxpress.passes import _compensate
from onnxpress.passes._common import constant, reject_option, set_initializer
from onnxpress.progress import track


Criterion = Literal["magnitude", "importance", "random"]
Granularity = Literal["unstructured", "n:m", "structured"]

# Ops that keep the channel axis and act per channel (or per element): channels flow through.
_PASS_THROUGH = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu",
                 "Gelu", "Erf", "Softplus", "Mish", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "GlobalMaxPool", "Identity", "Dropout"}


@dataclass
class _Target:
    """A prunable weight: the node, its weight, and where its output and input channels lie."""

    node: ir.Node
    weight: np.ndarray
    out_axis: int  # axis of the weight holding output channels
    in_axis: int  # axis holding input channels (N:M groups run along it)
    activation: str  # name of the node's data input
    removed: list[int] = field(default_factory=list)


class Prune(Pass, ir.passes.FunctionalPass):
    """Prune Conv, Gemm and MatMul weights by magnitude, activation importance or at random.

    Granularity:
        ``unstructured``: zero the least important single weights, per layer or (``scope =
            "global"``) by one threshold across layers. Shrinks the compressed file; dense
            kernels run no faster.
        ``n:m``: in every group of ``m`` consecutive weights along the input dimension keep the
            ``n`` most important (2:4 is what sparse tensor cores accelerate).
        ``structured``: remove whole output channels of Conv and output neurons of Gemm/MatMul
            and rewrite every consumer: BatchNormalization and per-channel activations and pools
            follow, depthwise convolutions lose the same channels, the next Conv/Gemm/MatMul
            loses the matching input rows (through Flatten/Reshape into Gemm too). A channel is
            left alone, with the reason recorded, when it reaches a graph output, an Add or
            other join, or an op this pass does not understand.

    Criteria: ``magnitude`` (|w|), ``importance`` (|w| scaled by the input channel's RMS from
    the pipeline's activation statistics; needs calibration), ``random`` (seeded baseline).

    ``compensate`` (``"auto"``: when the pipeline has calibration data): after pruning, the
    layers are refit in closed form, in graph order, so that each, given the inputs the pruned
    model really gives it, reproduces what the original layer gave (``passes/_compensate.py``):
    unstructured and N:M weights by optimal-brain-surgeon updates that move the removed
    weights' contribution onto the kept ones (SparseGPT), the mask chosen again block by block
    by that saliency (``random`` keeps its mask; so do N:M convolutions, whose groups run along
    channels); structured pruning refits the pruned layers' kept channels and the next layers'
    weights from the channels left. Grouped convolutions are not refit. Statistics per layer:
    the relative output error before and after, on calibration samples held back from the fit.

    Targets: ``sparsity`` overall, ``sparsity_by`` per op type or node name, ``exclude`` node
    names (the old name ``skip`` is accepted, with a warning, for one release),
    ``skip_first_last`` (structured default: the first and last prunable layers keep their
    channels), ``min_channels``, ``channel_multiple`` (structured: the channels kept are
    rounded to a multiple of it, 8 by default, since CPU kernels work on blocks of 8 or 16
    channels and odd counts lose most of the speed the removed FLOPs promise).
    """

    name = "prune"
    aliases = {"skip": "exclude"}

    def __init__(self, *, criterion: Criterion = "magnitude", granularity: Granularity = "unstructured",
                 sparsity: float = 0.3, sparsity_by: dict[str, float] | None = None, scope: Literal["layer", "global"] = "layer",
                 n: int = 2, m: int = 4, exclude: list[str] | None = None, skip_first_last: bool | None = None,
                 min_channels: int = 4, channel_multiple: int = 8, op_types: list[str] | None = None,
                 calibration_samples: int = 128, compensate: Literal["auto"] | bool = "auto",
                 damping: float = 0.01, seed: int = 0, skip: list[str] | None = None) -> None:
        super().__init__()
        if skip is not None:
            warnings.warn("prune: option 'skip' is deprecated; use 'exclude'", DeprecationWarning, stacklevel=2)
            exclude = skip
        reject_option(criterion not in ("magnitude", "importance", "random"),
                      "prune", "criterion", "magnitude, importance or random", criterion)
        reject_option(granularity not in ("unstructured", "n:m", "structured"),
                      "prune", "granularity", "unstructured, n:m or structured", granularity)
        reject_option(not 0.0 <= sparsity < 1.0, "prune", "sparsity", "in [0, 1)", sparsity)
        for key, value in (sparsity_by or {}).items():
            reject_option(not 0.0 <= value < 1.0, "prune", f"sparsity_by[{key!r}]", "in [0, 1)", value)
        reject_option(scope not in ("layer", "global"), "prune", "scope", "'layer' or 'global'", scope)
        if not 0 < n < m:
            raise ValueError(f"prune: n:m needs 0 < n < m, got {n}:{m}")
        reject_option(min_channels < 1, "prune", "min_channels", ">= 1", min_channels)
        reject_option(channel_multiple < 1, "prune", "channel_multiple", ">= 1", channel_multiple)
        reject_option(compensate not in ("auto", True, False), "prune", "compensate", "'auto', true or false", compensate)
        reject_option(damping <= 0, "prune", "damping", "> 0", damping)
        self.criterion = criterion
        self.granularity = granularity
        self.sparsity = sparsity
        self.sparsity_by = dict(sparsity_by or {})
        self.scope = scope
        self.n = n
        self.m = m
        self.exclude = list(exclude or [])
        self.skip_first_last = granularity == "structured" if skip_first_last is None else skip_first_last
        self.min_channels = min_channels
        self.channel_multiple = channel_multiple
        self.op_types = list(op_types) if op_types is not None else ["Conv", "Gemm", "MatMul"]
        self.calibration_samples = calibration_samples
        self.compensate = compensate
        self.damping = damping
        self.seed = seed

    def needs_calibration(self, model: ir.Model) -> bool:
        """The importance criterion weighs weights by activation statistics; ``compensate = true``
        refits on calibration data."""
        return self.criterion == "importance" or self.compensate is True

    def _compensating(self) -> bool:
        if self.compensate == "auto":
            return self.context is not None and self.context.calibration is not None
        return bool(self.compensate)

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        result = model.clone()
        # Flatten/Reshape rewrites and FLOP counts need shapes. Shape inference is best effort:
        # when it fails it logs why and leaves the model as it was.
        ir.passes.Sequential(common_passes.NameFixPass(), common_passes.ShapeInferencePass())(result)
        flops_before, deflated_before = model_flops(result), deflated_size(result)
        teacher = result.clone() if self._compensating() else None  # the original, by the same names
        targets, skipped = self._targets(result)
        scales = self._input_scales(result, targets) if self.criterion == "importance" else {}
        output_rms = (self._output_scales(result, targets)
                      if self.criterion == "importance" and self.granularity == "structured" else {})
        rng = np.random.default_rng(self.seed)
        scores = {t.node.name: self._scores(t, scales.get(t.activation), rng) for t in targets}
        layers: dict[str, Any] = {}
        if self.granularity == "structured":
            layers = self._structured(result, targets, scores, skipped, output_rms)
        else:
            thresholds = self._global_thresholds(targets, scores) if self.scope == "global" else {}
            for target in track(targets, self.context.say if self.context is not None else None, "masks",
                                unit="layers"):
                mask = (self._nm_mask(target, scores[target.node.name]) if self.granularity == "n:m"
                        else self._unstructured_mask(target, scores[target.node.name], thresholds.get(target.node.name)))
                pruned = np.where(mask, target.weight, 0).astype(target.weight.dtype)
                set_initializer(result.graph, target.node, 1, pruned, f"{target.node.inputs[1].name}_pruned")
                layers[target.node.name] = {"sparsity": round(float(1 - np.count_nonzero(pruned) / pruned.size), 6),
                                            "params": int(pruned.size), "nonzero": int(np.count_nonzero(pruned))}
        compensation = self._compensate(teacher, result, layers) if teacher is not None and layers else {}
        common_passes.RemoveUnusedNodesPass()(result)
        total = sum(layer.get("params", 0) for layer in layers.values()) if layers else 0
        nonzero = sum(layer.get("nonzero", 0) for layer in layers.values())
        statistics = {"criterion": self.criterion, "granularity": self.granularity, "layers": layers,
                      "skipped": skipped, "pruned_layers": len(layers), "compensated": bool(compensation),
                      "compensation": compensation,
                      "sparsity": round(1 - nonzero / total, 6) if total else 0.0,
                      "flops_before": flops_before, "flops_after": model_flops(result),
                      "deflated_bytes_before": deflated_before, "deflated_bytes_after": deflated_size(result)}
        return PassResult(result, modified=fingerprint(result) != fingerprint(model), statistics=statistics)

    def _compensate(self, teacher: ir.Model, student: ir.Model, pruned: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Refit the pruned layers (and, structured, the layers after them) to the original
        layers' outputs, in place; returns each refit's statistics by node name."""
        originals = {node.name: node for node in teacher.graph}
        refits = []
        for node in student.graph:
            original = originals.get(node.name)
            if original is None or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
                continue
            weight, before = constant(node.inputs[1]), constant(original.inputs[1])
            if weight is None or before is None or (node.name not in pruned and weight.shape == before.shape):
                continue  # untouched by this pass
            layer = _refit_layer(node, original, weight, before, pruned.get(node.name, {}), self)
            if layer is not None:
                refits.append(layer)
        context = self.context
        return _compensate.refit(teacher, student, refits, context.calibration, context.runner, damping=self.damping,
                                 limit=self.calibration_samples, seed=self.seed, say=context.say)

    def _targets(self, model: ir.Model) -> tuple[list[_Target], dict[str, str]]:
        targets, skipped = [], {}
        for node in model.graph:
            if node.op_type not in self.op_types or node.name in self.exclude:
                if node.name in self.exclude:
                    skipped[node.name] = "in exclude"
                continue
            weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
            if weight is None or node.inputs[0] is None:
                continue
            if node.op_type == "Conv" and weight.ndim >= 3:
                target = _Target(node, weight, 0, 1, node.inputs[0].name)
            elif node.op_type == "Gemm" and weight.ndim == 2:
                trans_b = node.attributes.get_int("transB", 0)
                target = _Target(node, weight, 0 if trans_b else 1, 1 if trans_b else 0, node.inputs[0].name)
            elif node.op_type == "MatMul" and weight.ndim == 2:
                target = _Target(node, weight, 1, 0, node.inputs[0].name)
            else:
                continue
            if self._sparsity_for(node) <= 0.0:
                skipped[node.name] = "sparsity 0 for this node"
                continue
            targets.append(target)
        if self.skip_first_last and len(targets) > 2:
            for edge in (targets[0], targets[-1]):
                skipped[edge.node.name] = "first or last prunable layer (skip_first_last)"
            targets = targets[1:-1]
        return targets, skipped

    def _sparsity_for(self, node: ir.Node) -> float:
        return self.sparsity_by.get(node.name, self.sparsity_by.get(node.op_type, self.sparsity))

    def _input_scales(self, model: ir.Model, targets: list[_Target]) -> dict[str, np.ndarray]:
        """RMS of each input channel of the targets' activations (calibration statistics)."""
        axes = {t.activation: (1 if t.node.op_type == "Conv" else -1) for t in targets}
        stats = self.context.statistics(model, tensors=list(axes), channel_axes=axes, limit=self.calibration_samples)
        return {name: np.sqrt(np.maximum(stats[name].channel_mean_square(), 0.0))
                for name in axes if name in stats and stats[name].channel_mean_square() is not None}

    def _output_scales(self, model: ir.Model, targets: list[_Target]) -> dict[str, np.ndarray]:
        """RMS of each output channel of the targets (how much each channel carries downstream)."""
        axes = {t.node.outputs[0].name: (1 if t.node.op_type == "Conv" else -1) for t in targets}
        stats = self.context.statistics(model, tensors=list(axes), channel_axes=axes, limit=self.calibration_samples)
        return {t.node.name: np.sqrt(np.maximum(stats[t.node.outputs[0].name].channel_mean_square(), 0.0))
                for t in targets if t.node.outputs[0].name in stats
                and stats[t.node.outputs[0].name].channel_mean_square() is not None}

    def _scores(self, target: _Target, input_rms: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """Per-weight importance, the shape of the weight."""
        if self.criterion == "random":
            return rng.random(target.weight.shape)
        score = np.abs(target.weight.astype(np.float64))
        if self.criterion == "importance" and input_rms is not None and input_rms.shape[0] == target.weight.shape[target.in_axis]:
            shape = [1] * target.weight.ndim
            shape[target.in_axis] = -1
            score = score * input_rms.reshape(shape)
        return score

    # ----------------------------------------------------------------------- zeroing masks

    def _global_thresholds(self, targets: list[_Target], scores: dict[str, np.ndarray]) -> dict[str, float]:
        everything = np.concatenate([scores[t.node.name].ravel() for t in targets]) if targets else np.zeros(0)
        if everything.size == 0:
            return {}
        cut = float(np.quantile(everything, self.sparsity))
        return {t.node.name: cut for t in targets}

    def _unstructured_mask(self, target: _Target, score: np.ndarray, threshold: float | None) -> np.ndarray:
        if threshold is None:
            count = int(round(self._sparsity_for(target.node) * score.size))
            if count == 0:
                return np.ones(score.shape, bool)
            order = np.argsort(score, axis=None, kind="stable")
            mask = np.ones(score.size, bool)
            mask[order[:count]] = False
            return mask.reshape(score.shape)
        return score > threshold

    def _nm_mask(self, target: _Target, score: np.ndarray) -> np.ndarray:
        """Keep the ``n`` best of every ``m`` consecutive weights along the input axis."""
        moved = np.moveaxis(score, target.in_axis, -1)
        length = moved.shape[-1]
        padded = -(-length // self.m) * self.m
        filled = np.full(moved.shape[:-1] + (padded,), -np.inf)
        filled[..., :length] = moved
        groups = filled.reshape(moved.shape[:-1] + (padded // self.m, self.m))
        ranks = np.argsort(np.argsort(-groups, axis=-1, kind="stable"), axis=-1, kind="stable")
        keep = (ranks < self.n).reshape(moved.shape[:-1] + (padded,))[..., :length]
        return np.moveaxis(keep, -1, target.in_axis)

    # ------------------------------------------------------------------------- structured

    def _structured(self, model: ir.Model, targets: list[_Target], scores: dict[str, np.ndarray],
                    skipped: dict[str, str], output_rms: dict[str, np.ndarray]) -> dict[str, Any]:
        layers = {}
        for target in track(targets, self.context.say if self.context is not None else None, "channels",
                            unit="layers"):
            node = target.node
            channels = target.weight.shape[target.out_axis]
            score = scores[node.name]
            per_channel = np.sqrt(np.sum(np.moveaxis(score, target.out_axis, 0).reshape(channels, -1) ** 2, axis=1))
            if node.name in output_rms and output_rms[node.name].shape == (channels,):
                per_channel = output_rms[node.name]  # importance: what the channel really carries
            keep = channels * (1.0 - self._sparsity_for(node))
            if channels >= 2 * self.channel_multiple:
                keep = self.channel_multiple * round(keep / self.channel_multiple)
            count = min(channels - int(round(keep)), channels - self.min_channels)
            if count <= 0:
                skipped[node.name] = f"{channels} channels; min_channels {self.min_channels} leaves none to remove"
                continue
            removed = sorted(np.argsort(per_channel, kind="stable")[:count].tolist())
            plan, reason = _plan(node.outputs[0], removed, 1 if node.op_type == "Conv" else -1)
            if plan is None:
                skipped[node.name] = reason
                continue
            _apply(model, node, target.out_axis, removed, plan)
            layers[node.name] = {"channels_before": channels, "channels_after": channels - count, "removed_channels": removed,
                                 "removed": count, "params": int(target.weight.size),
                                 "nonzero": int(target.weight.size * (channels - count) / channels)}
        return layers


# ----------------------------------------------------------------------------- compensation

def _refit_layer(node: ir.Node, original: ir.Node, weight: np.ndarray, before: np.ndarray, record: dict[str, Any],
                 prune: Prune) -> _compensate.Layer | None:
    """``node`` (pruned, or fed fewer channels) as a layer to refit to ``original``'s outputs."""
    found = _compensate.layout(node, weight)
    if found is None:
        return None
    rows, to_rows, back = found
    op = node.op_type
    teacher = to_rows(before).astype(np.float64)
    if "removed_channels" in record:  # structured: the original's kept output channels are the target
        teacher = np.delete(teacher, record["removed_channels"], axis=1)
    start = to_rows(weight).astype(np.float64)
    if teacher.shape[1] != start.shape[1]:
        return None
    structured = prune.granularity == "structured"
    fixed = prune.criterion == "random" or (prune.granularity == "n:m" and op == "Conv")
    sparsity = 1.0 - np.count_nonzero(start) / max(start.size, 1)

    def fit(best: np.ndarray, damped: np.ndarray):
        if structured:
            fitted = best
        elif fixed:
            fitted = _compensate.masked(best, damped, keep=start != 0)
        elif prune.granularity == "n:m":
            fitted = _compensate.masked(best, damped, n=prune.n, m=prune.m)
        else:
            fitted = _compensate.masked(best, damped, sparsity=sparsity)

        def write():
            node.inputs[1].const_value = ir.tensor(np.ascontiguousarray(back(fitted)).astype(weight.dtype),
                                                   name=node.inputs[1].name)

        return fitted, write

    return _compensate.Layer(key=node.name, weight=teacher, start=start, teacher_input=original.inputs[0].name,
                             student_input=node.inputs[0].name, teacher_rows=rows, student_rows=rows, fit=fit,
                             owns=(node.name,))


# --------------------------------------------------------------------- structured rewriting

def _plan(value: ir.Value, removed: list[int], channel_axis: int) -> tuple[list | None, str]:
    """The edits that removing ``removed`` channels of ``value`` needs, or None and why not.

    Each edit is (kind, node, extra, channel indices at that point): ``slice_in`` (a consumer's weight input channels),
    ``slice_params`` (BatchNormalization), ``depthwise`` (a grouped conv losing the same
    channels, followed further), ``flatten`` (Flatten/Reshape into a Gemm/MatMul: rows of
    ``removed`` x spatial size).
    """
    edits: list = []
    # value, removed channel indices, elements per channel (after a flatten), its channel axis
    frontier = [(value, removed, 1, channel_axis)]
    while frontier:
        current, indices, spatial, axis = frontier.pop()
        if current.is_graph_output():
            return None, f"channels reach graph output '{current.name}'"
        edits.append(("resize", current, (axis, len(indices) * spatial), indices))
        for use in current.uses():
            consumer, index = use.node, use.idx
            op = consumer.op_type
            if op in _PASS_THROUGH and index == 0 and spatial == 1:
                if op == "PRelu" and constant(consumer.inputs[1]) is not None and constant(consumer.inputs[1]).size > 1:
                    edits.append(("slice_prelu", consumer, None, indices))
                frontier.append((consumer.outputs[0], indices, spatial, axis))
            elif op == "BatchNormalization" and index == 0 and spatial == 1:
                edits.append(("slice_params", consumer, None, indices))
                frontier.append((consumer.outputs[0], indices, spatial, axis))
            elif op == "Conv" and index == 0 and spatial == 1:
                weight = constant(consumer.inputs[1])
                if weight is None:
                    return None, f"consumer '{consumer.name}' has no constant weight"
                group = consumer.attributes.get_int("group", 1)
                if group == 1:
                    edits.append(("slice_in", consumer, (1, 1), indices))
                elif group == weight.shape[0] and weight.shape[1] == 1:
                    edits.append(("depthwise", consumer, None, indices))
                    frontier.append((consumer.outputs[0], indices, spatial, axis))
                else:
                    return None, f"grouped conv '{consumer.name}' (group {group}) not handled"
            elif op in ("Gemm", "MatMul") and index == 0:
                weight = constant(consumer.inputs[1])
                if weight is None or weight.ndim != 2:
                    return None, f"consumer '{consumer.name}' has no constant 2-D weight"
                trans_b = consumer.attributes.get_int("transB", 0) if op == "Gemm" else 0
                edits.append(("slice_in", consumer, (1 if trans_b else 0, spatial), indices))
            elif op == "Concat" and spatial == 1:
                # Concatenation shifts channel indices by the channels of the inputs before this one.
                concat_axis = consumer.attributes.get_int("axis", 0)
                rank = len(current.shape) if current.shape is not None else None
                if rank is None or concat_axis % rank != axis % rank:
                    return None, f"Concat '{consumer.name}' joins along another axis than the channels"
                offset = 0
                for other in consumer.inputs[:index]:
                    if other is None or other.shape is None or not isinstance(other.shape[axis], int):
                        return None, f"Concat '{consumer.name}' has an input of unknown channel count"
                    offset += other.shape[axis]
                frontier.append((consumer.outputs[0], [offset + i for i in indices], spatial, axis))
            elif op in ("Flatten", "Reshape") and index == 0 and spatial == 1:
                shape = current.shape
                if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[2:]):
                    return None, f"'{consumer.name}' flattens channels of unknown spatial size"
                axis = consumer.attributes.get_int("axis", 1) if op == "Flatten" else 1
                if op == "Flatten" and axis != 1:
                    return None, f"Flatten '{consumer.name}' with axis {axis} not handled"
                if op == "Reshape":
                    target = constant(consumer.inputs[1])
                    if target is None or target.size != 2:
                        return None, f"Reshape '{consumer.name}' to {target} not handled (only to [batch, features])"
                    edits.append(("reshape", consumer, None, indices))
                frontier.append((consumer.outputs[0], indices, int(np.prod(shape[2:])) if len(shape) > 2 else 1, -1))
            else:
                return None, f"channels reach {op} '{consumer.name}' (input {index}), which is not pruned the same way"
    return edits, ""


def _slice(array: np.ndarray, axis: int, removed: list[int], spatial: int = 1) -> np.ndarray:
    if spatial == 1:
        return np.delete(array, removed, axis=axis)
    rows = [c * spatial + s for c in removed for s in range(spatial)]
    return np.delete(array, rows, axis=axis)


def _apply(model: ir.Model, node: ir.Node, out_axis: int, removed: list[int], plan: list) -> None:
    graph = model.graph
    weight = constant(node.inputs[1])
    set_initializer(graph, node, 1, _slice(weight, out_axis, removed), f"{node.inputs[1].name}_pruned")
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant(node.inputs[2]) is not None:
        bias = constant(node.inputs[2])
        if bias.ndim == 1 and bias.shape[0] == weight.shape[out_axis]:
            set_initializer(graph, node, 2, _slice(bias, 0, removed), f"{node.inputs[2].name}_pruned")
    for kind, consumer, extra, indices in plan:
        if kind == "resize":  # a value on the pruned path: its channel (or feature) axis shrinks
            axis, amount = extra
            if consumer.shape is not None and len(consumer.shape) >= 2 and isinstance(consumer.shape[axis], int):
                dims = list(consumer.shape)
                dims[axis] -= amount
                consumer.shape = ir.Shape(dims)
        elif kind == "slice_params":
            for index in range(1, 5):
                set_initializer(graph, consumer, index, _slice(constant(consumer.inputs[index]), 0, indices),
                                f"{consumer.inputs[index].name}_pruned")
        elif kind == "slice_prelu":
            slope = constant(consumer.inputs[1])
            set_initializer(graph, consumer, 1, _slice(slope, 0, indices), f"{consumer.inputs[1].name}_pruned")
        elif kind == "depthwise":
            set_initializer(graph, consumer, 1, _slice(constant(consumer.inputs[1]), 0, indices),
                            f"{consumer.inputs[1].name}_pruned")
            if len(consumer.inputs) > 2 and consumer.inputs[2] is not None:
                set_initializer(graph, consumer, 2, _slice(constant(consumer.inputs[2]), 0, indices),
                                f"{consumer.inputs[2].name}_pruned")
            group = consumer.attributes.get_int("group", 1) - len(indices)
            consumer.attributes["group"] = ir.AttrInt64("group", group)
        elif kind == "slice_in":
            axis, spatial = extra
            set_initializer(graph, consumer, 1, _slice(constant(consumer.inputs[1]), axis, indices, spatial),
                            f"{consumer.inputs[1].name}_pruned")
        elif kind == "reshape":
            target = constant(consumer.inputs[1]).copy()
            if target[1] > 0:
                spatial_size = int(np.prod([d for d in consumer.inputs[0].shape[2:]])) if consumer.inputs[0].shape else 1
                target[1] -= len(indices) * spatial_size
                set_initializer(graph, consumer, 1, target, f"{consumer.inputs[1].name}_pruned")
