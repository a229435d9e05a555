"""Closed-form error compensation: refit compressed layers to what the original layers gave.

After a lossy pass a layer of the compressed model (the student) sees inputs x̂ that differ from
the original model's x (earlier layers are compressed too) and has constrained weights (a
sparsity mask, a rank, fewer input channels). Its refit minimises, over calibration rows,

    ||x̂·Ŵ - x·W||²   (the compressed model's activations in, the original layer's outputs out)

With Ĉ = Σ x̂ᵀx̂ and M = Σ x̂ᵀx the unconstrained optimum is W* = Ĉ⁻¹·M·W, and the error splits
as ||x̂·(Ŵ - W*)||² + a constant, so each constrained fit is the same fit of W* in the metric of
Ĉ, done in closed form:

- ``dense``: Ŵ = W* (a layer that lost input channels to structured pruning, or kept ones);
- ``masked``: optimal-brain-surgeon updates over the input dimension (SparseGPT, Frantar &
  Alistarh 2023): each pruned weight's error is spread over the weights of later inputs
  through the Cholesky factor of Ĉ⁻¹, in blocks of 128 inputs, the mask chosen per block by
  saliency w²/[Ĉ⁻¹]ᵢᵢ (or kept as the pass chose it);
- ``quantized``: the same updates with each weight rounded to its quantization grid instead of
  pruned (GPTQ, Frantar et al. 2023), for int8 weights;
- ``grouped``: the same with a block-wise grid, one scale and zero point per group of input
  rows, chosen as the sweep reaches the group (GPTQ with groups; the weightonly pass's int4);
- ``factored``: truncated SVD of S·W* with S the Cholesky factor of Ĉ, mapped back (the
  anchored refit of SVD-LLM / AA-SVD): the best rank-r weight for the compressed inputs.

W* is computed as ``W₀ + (Ĉ + λI)⁻¹·(M·W - Ĉ·W₀)`` from the layer's current weights W₀, so a
layer whose inputs did not change (x̂ = x, the first compressed layer) and that lost nothing
keeps exactly its weights. Layers are refit in stages in graph order: a stage holds the layers
none of whose inputs depends on a layer of the same stage (a transformer block's Q, K and V
projections share one), so each is fitted on the inputs the already-refit layers before it
give. One streaming sweep over the calibration data per stage collects Ĉ and M (float64,
K̂ x K̂ and K̂ x K per layer; one sample's activations held at a time).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import modelinfo
from onnxpress.feeds import check_feed
from onnxpress.progress import Tracker, track

logger = logging.getLogger(__name__)

Rows = Callable[[np.ndarray], np.ndarray]

BLOCK = 128  # inputs per OBS block (SparseGPT's lazy batch)
CHECK_EVERY = 4  # every 4th calibration sample is held back to choose the damping
DAMPINGS = (0.01, 0.1, 1.0)  # tried, times the mean diagonal of Ĉ
MAX_ROWS_PER_SAMPLE = 4096  # rows drawn from one sample's activation (a conv's patches), seeded
BATCH_ROWS = 4096  # rows multiplied at once when the moments are summed


@dataclass
class Moments:
    """What one set of rows gives a layer's fit: Ĉ = Σ x̂ᵀx̂, M = Σ x̂ᵀx, ||x·W||² and the count.

    Layers that read the same input (a block's Q, K and V projections) share one Ĉ and M;
    ``energy`` is the layer's own.
    """

    gram: np.ndarray
    cross: np.ndarray
    energy: float = 0.0
    rows: int = 0

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.gram + other.gram, self.cross + other.cross, self.energy + other.energy,
                       self.rows + other.rows)

    def error(self, weight: np.ndarray, fitted: np.ndarray) -> float:
        """||x̂·F - x·W|| / ||x·W|| over these rows: ||x̂F - xW||² = tr(FᵀĈF) - 2·tr(FᵀMW) + ||xW||²."""
        fitted = fitted.astype(np.float64)
        error = np.sum(fitted * (self.gram @ fitted)) - 2.0 * np.sum(fitted * (self.cross @ weight)) + self.energy
        return float(np.sqrt(max(error, 0.0) / max(self.energy, 1e-30)))


@dataclass
class Layer:
    """One layer to refit.

    ``weight`` is the original layer's weight as ``x @ W`` ([K, N]); ``start`` the student's
    current weight ([K̂, N], K̂ <= K rows: the inputs the student still has). ``teacher_input`` /
    ``student_input`` name the layer's input tensor in each model; ``teacher_rows`` /
    ``student_rows`` turn one sample's activation into rows (a reshape, or a convolution's
    patches). ``fit`` takes W* and the damped Ĉ and returns the constrained weight ([K̂, N], as
    the layer computes it) and a function that writes it into the student. ``owns`` are the
    student nodes the refit changes (later stages wait for them). ``baseline`` is what the
    layer would compute without the refit when that is not ``start`` (GPTQ: ``start`` rounded
    to the nearest grid point, as the quantizer would store it); a refit must beat it.
    """

    key: str
    weight: np.ndarray
    start: np.ndarray
    teacher_input: str
    student_input: str
    teacher_rows: Rows
    student_rows: Rows
    fit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, Callable[[], None]]]
    owns: tuple[str, ...]
    baseline: np.ndarray | None = None
    moments: dict[str, Moments] = field(default_factory=dict, repr=False)


def flat_rows(array: np.ndarray) -> np.ndarray:
    """A MatMul/Gemm input's rows: every axis but the last folded."""
    return array.reshape(-1, array.shape[-1])


def channel_rows(array: np.ndarray) -> np.ndarray:
    """A 1x1 convolution's input rows: one per position, channels last."""
    return np.moveaxis(array, 1, -1).reshape(-1, array.shape[1])


def patch_rows(node: ir.Node) -> Rows:
    """A 2-D convolution's input rows: its patches (im2col), channel-major as its weight."""
    kernel = list(node.attributes.get_ints("kernel_shape", []) or [])
    strides = list(node.attributes.get_ints("strides", [1, 1]) or [1, 1])
    dilations = list(node.attributes.get_ints("dilations", [1, 1]) or [1, 1])
    pads = list(node.attributes.get_ints("pads", [0, 0, 0, 0]) or [0, 0, 0, 0])
    weight = node.inputs[1].const_value.shape if node.inputs[1].const_value is not None else None
    if not kernel and weight is not None:
        kernel = list(weight[2:])

    def rows(array: np.ndarray) -> np.ndarray:
        padded = np.pad(array, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
        windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
        batch, channels, height, width = windows.shape[:4]
        return windows.transpose(0, 2, 3, 1, 4, 5).reshape(batch * height * width, -1)

    return rows


def layout(node: ir.Node, weight: np.ndarray) -> tuple[Rows, Callable, Callable] | None:
    """How ``node``'s weight computes ``x @ W``: the rows of its input, the weight as [K, N]
    and its inverse; None for a layer read otherwise (grouped convolutions, ``transA``).

    MatMul: the weight as is; Gemm: transposed with ``transB``; Conv: [N, C, kh, kw] as
    [C·kh·kw, N] over the input's patches.
    """
    op = node.op_type
    if op == "Conv":
        if node.attributes.get_int("group", 1) != 1 or weight.ndim != 4:
            return None
        shape = weight.shape
        return patch_rows(node), (lambda w: w.reshape(w.shape[0], -1).T), (lambda w: w.T.reshape(shape))
    if op == "Gemm":
        if node.attributes.get_int("transA", 0) or weight.ndim != 2:
            return None
        turn = (lambda w: w.T) if node.attributes.get_int("transB", 0) else (lambda w: w)
        return flat_rows, turn, turn
    if op == "MatMul" and weight.ndim == 2:
        return flat_rows, (lambda w: w), (lambda w: w)
    return None


def refit(teacher: ir.Model, student: ir.Model, layers: Sequence[Layer], feeds: Iterable[Mapping[str, np.ndarray]],
          runner: Any, *, damping: float = 0.01, dampings: Sequence[float] | None = None, limit: int | None = None,
          seed: int = 0, say: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Refit ``layers`` of ``student`` (in place) to the outputs of ``teacher``'s layers.

    ``feeds`` is read once per stage (a list, or a re-iterable source). ``dampings``, when
    given, are the dampings tried instead of ``damping`` and the larger ``DAMPINGS``
    (``_solve``). Returns the statistics
    of each layer's fit by key: the rows seen and the relative output error before and after
    (measured through the collected moments). ``say`` is told how far it got: a ``refit`` step
    in layers, and per stage a ``refit inputs`` step in feeds.
    """
    feeds = list(itertools.islice(feeds, limit))  # read once, held for the stages: a calibration set
    for index, feed in enumerate(feeds):
        check_feed(student, feed, f"calibration: sample {index}")
    stages = _stages(student, layers)
    wanted = sorted({layer.teacher_input for layer in layers})
    taught, _ = modelinfo.expose_intermediates(teacher, wanted, include_inputs=True)
    result: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(seed)
    with runner.session(taught, optimization="basic") as teacher_session, \
            Tracker(say, "refit", len(layers), "layers") as refitting:
        teacher_names = [n for n in teacher_session.output_names if n in set(wanted)]
        for number, stage in enumerate(stages, start=1):
            names = sorted({layer.student_input for layer in stage})
            exposed, _ = modelinfo.expose_intermediates(student, names, include_inputs=True)
            with runner.session(exposed, optimization="basic") as session:
                student_names = [n for n in session.output_names if n in set(names)]
                taught_names = [n for n in teacher_names if n in {layer.teacher_input for layer in stage}]
                groups: dict[tuple, _Group] = {}  # layers reading one input share its moments
                for layer in stage:
                    key = (layer.student_input, layer.teacher_input, layer.student_rows, layer.teacher_rows)
                    groups.setdefault(key, _Group([])).members.append(layer)
                for group in groups.values():
                    group.start()
                for index, feed in enumerate(track(feeds, say, "refit inputs", unit="feeds")):
                    split = "check" if index % CHECK_EVERY == CHECK_EVERY - 1 else "fit"
                    taught_values = {**feed, **teacher_session.run(feed, taught_names)}
                    student_values = {**feed, **session.run(feed, student_names)}
                    for group in groups.values():
                        first = group.members[0]
                        group.add(split, student_values[first.student_input], taught_values[first.teacher_input], rng)
                for group in groups.values():
                    group.flush()
            for layer in stage:
                result[layer.key] = _solve(layer, damping, dampings)
                layer.moments = {}
                refitting.advance(note=f"stage {number}/{len(stages)}")
    return result


@dataclass
class _Group:
    """Layers reading one input: their rows are gathered once and their Ĉ and M shared.

    Rows are buffered and multiplied in batches of ``BATCH_ROWS`` (one sample of a transformer
    gives a few dozen rows: a product per sample would spend its time on memory, not BLAS);
    the products are float32, their sums float64.
    """

    members: list[Layer]
    pending: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)

    def start(self) -> None:
        first = self.members[0]
        k_student, k_teacher = first.start.shape[0], first.weight.shape[0]
        for split in ("fit", "check"):
            shared = Moments(np.zeros((k_student, k_student)), np.zeros((k_student, k_teacher)))
            for layer in self.members:
                layer.moments[split] = Moments(shared.gram, shared.cross)
            self.pending[split] = ([], [])

    def add(self, split: str, student: np.ndarray, teacher: np.ndarray, rng: np.random.Generator) -> None:
        first = self.members[0]
        x_hat = first.student_rows(np.asarray(student, np.float32))
        x = first.teacher_rows(np.asarray(teacher, np.float32))
        if x_hat.shape[0] != x.shape[0]:
            raise ValueError(f"compensation: '{first.key}' sees {x_hat.shape[0]} rows in the compressed model and "
                             f"{x.shape[0]} in the original")
        if x_hat.shape[0] > MAX_ROWS_PER_SAMPLE:
            pick = rng.choice(x_hat.shape[0], MAX_ROWS_PER_SAMPLE, replace=False)
            x_hat, x = x_hat[pick], x[pick]
        hats, xs = self.pending[split]
        hats.append(np.ascontiguousarray(x_hat))
        xs.append(np.ascontiguousarray(x))
        if sum(len(part) for part in hats) >= BATCH_ROWS:
            self._flush(split)

    def flush(self) -> None:
        for split in self.pending:
            self._flush(split)

    def _flush(self, split: str) -> None:
        hats, xs = self.pending[split]
        if not hats:
            return
        x_hat, x = np.concatenate(hats), np.concatenate(xs)
        hats.clear()
        xs.clear()
        shared = self.members[0].moments[split]
        shared.gram += x_hat.T @ x_hat
        shared.cross += x_hat.T @ x
        for layer in self.members:
            moments = layer.moments[split]
            moments.energy += float(np.sum(np.square(x @ layer.weight.astype(np.float32)), dtype=np.float64))
            moments.rows += x_hat.shape[0]


def _solve(layer: Layer, damping: float, dampings: Sequence[float] | None = None) -> dict[str, Any]:
    """Choose the damping on the held-back rows, refit on all rows, write the result.

    The fit is a regression on as few rows as there are calibration tokens or positions,
    often no more than the layer has inputs: undamped it reproduces those rows and little
    else. Each damping of ``DAMPINGS`` (times Ĉ's mean diagonal; ``damping`` is the least) is
    fitted on the fit rows and scored on the check rows (every ``CHECK_EVERY``-th sample); the
    layer keeps its current weights when no refit beats them there. Given ``dampings`` of one
    value, there is nothing to choose: the fit on the fit rows is written as it was scored
    (one solve instead of two, for GPTQ).
    """
    fit, check = layer.moments["fit"], layer.moments["check"]
    weight, start = layer.weight.astype(np.float64), layer.start.astype(np.float64)
    baseline = start if layer.baseline is None else layer.baseline.astype(np.float64)
    everything = fit + check
    if not (np.isfinite(everything.gram).all() and np.isfinite(everything.cross).all()
            and np.isfinite(everything.energy)):  # activations near float32's limit (untrained weights)
        return {"rows": everything.rows, "kept": True, "reason": "the input moments overflow float32"}
    before = check.error(weight, baseline) if check.rows else everything.error(weight, baseline)
    scores = {}
    tried = sorted(set(dampings)) if dampings else sorted({damping, *(d for d in DAMPINGS if d > damping)})
    if check.rows:
        for value in tried:
            fitted, write = layer.fit(*_optimum(fit, weight, start, value))
            scores[value] = check.error(weight, fitted)
        chosen = min(scores, key=scores.get)
        if scores[chosen] >= before:
            return {"rows": everything.rows, "kept": True, "output_error": round(before, 6),
                    "dampings": {f"{d:g}": round(e, 6) for d, e in scores.items()}}
    else:
        chosen = tried[0]
    if len(tried) > 1 or not check.rows:
        fitted, write = layer.fit(*_optimum(everything, weight, start, chosen))
    if not check.rows and not everything.error(weight, fitted) < before:
        # No rows held back to judge the fit (under CHECK_EVERY samples): it must at least beat
        # the current weights on the rows it was fitted on.
        return {"rows": everything.rows, "kept": True, "output_error": round(before, 6)}
    write()
    stats = {"rows": everything.rows, "damping": chosen, "output_error_before": round(before, 6),
             "output_error_after": round(scores.get(chosen, everything.error(weight, fitted)), 6)}
    if len(scores) > 1:
        stats["dampings"] = {f"{d:g}": round(e, 6) for d, e in scores.items()}
    return stats


def _optimum(moments: Moments, weight: np.ndarray, start: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """W* = W₀ + (Ĉ + λI)⁻¹·(M·W - Ĉ·W₀), and the damped Ĉ."""
    gram = moments.gram
    scale = max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    damped = gram + np.eye(gram.shape[0]) * damping * scale
    return start + np.linalg.solve(damped, moments.cross @ weight - gram @ start), damped


def _stages(student: ir.Model, layers: Sequence[Layer]) -> list[list[Layer]]:
    """Layers grouped so that none depends on a layer of its own or a later stage."""
    producers = {v.name: node for node in student.graph for v in node.outputs if v.name}
    owner = {name: index for index, layer in enumerate(layers) for name in layer.owns}
    stage_of: dict[int, int] = {}
    for index, layer in enumerate(layers):
        ancestors = _ancestors(producers, layer.student_input)
        depends = [stage_of[owner[name]] for name in ancestors if name in owner and owner[name] in stage_of]
        stage_of[index] = 1 + max(depends, default=-1)
    stages: list[list[Layer]] = [[] for _ in range(max(stage_of.values(), default=-1) + 1)]
    for index, stage in stage_of.items():
        stages[stage].append(layers[index])
    return [stage for stage in stages if stage]


def _ancestors(producers: dict[str, ir.Node], tensor: str) -> set[str]:
    seen: set[str] = set()
    queue = [tensor]
    while queue:
        node = producers.get(queue.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        queue.extend(v.name for v in node.inputs if v is not None and v.name)
    return seen


# ------------------------------------------------------------------------- constrained fits

def factored(best: np.ndarray, damped: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The rank-``rank`` A·B closest to ``best`` in the metric of ``damped``: truncated SVD of
    Lᵀ·W* (Ĉ = L·Lᵀ), mapped back with L⁻ᵀ."""
    lower = np.linalg.cholesky(damped)
    u, s, vt = np.linalg.svd(lower.T @ best, full_matrices=False)
    root = np.sqrt(s[:rank])
    a = np.linalg.solve(lower.T, u[:, :rank] * root)
    return a, root[:, None] * vt[:rank]


def masked(best: np.ndarray, damped: np.ndarray, *, keep: np.ndarray | None = None, sparsity: float = 0.0,
           n: int | None = None, m: int | None = None) -> np.ndarray:
    """``best`` pruned with optimal-brain-surgeon updates over the input rows (SparseGPT).

    ``keep`` ([K̂, N] bool) fixes the mask; otherwise it is chosen block by block, per output
    column, by saliency w²/[Ĉ⁻¹]ᵢᵢ²: the ``sparsity`` share of each block's rows, or ``n`` kept
    of every ``m`` consecutive inputs. Returns the pruned weight (exact zeros where pruned).
    """

    def prepare(first: int, block: np.ndarray, diagonal: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        if keep is not None:
            kept = keep[first:first + block.shape[0]]
        elif n is not None and m is not None:
            kept = np.ones_like(block, bool)
            saliency = block ** 2 / diagonal ** 2
            for group in range(0, block.shape[0], m):
                part = saliency[group:group + m]
                if part.shape[0] == m:
                    order = np.argsort(part, axis=0)  # ascending: the first m - n go
                    np.put_along_axis(kept[group:group + m], order[:m - n], False, axis=0)
        else:
            saliency = block ** 2 / diagonal ** 2
            count = int(round(sparsity * block.shape[0]))
            kept = np.ones_like(block, bool)
            if count:
                order = np.argsort(saliency, axis=0, kind="stable")
                np.put_along_axis(kept, order[:count], False, axis=0)
        return lambda row, value: np.where(kept[row], value, 0.0)

    return _surgeon(best, damped, prepare)


def quantized(best: np.ndarray, damped: np.ndarray, scale: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """``best`` rounded to the grid ``scale·q`` (q integer in [qmin, qmax], zero point 0; ``scale``
    one value per output column, or one for all) with error feedback over the input rows (GPTQ,
    Frantar et al. 2023): each row's rounding error is spread over the rows not yet rounded.
    Returns weights exactly on the grid (``round(w / scale)`` gives back q)."""
    scale = np.broadcast_to(np.asarray(scale, np.float64), best.shape[1:])

    def prepare(first: int, block: np.ndarray, diagonal: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        return lambda row, value: np.clip(np.round(value / scale), qmin, qmax) * scale

    return _surgeon(best, damped, prepare)


def _surgeon(best: np.ndarray, damped: np.ndarray,
             prepare: Callable[[int, np.ndarray, np.ndarray], Callable[[int, np.ndarray], np.ndarray]]) -> np.ndarray:
    """The optimal-brain-surgeon sweep over the input rows that ``masked`` and ``quantized`` share.

    Rows are constrained one at a time in blocks of ``BLOCK``; ``prepare(first, block,
    diagonal)`` is called at each block's start (with the block's current weights and the
    diagonal of its Cholesky factor) and returns ``constrain(row, values)``, the row's values
    as the constraint allows them. Each row's error is spread over the later rows through the
    upper Cholesky factor of Ĉ⁻¹, lazily across blocks.
    """
    weight = best.copy()
    rows = weight.shape[0]
    # float32 LAPACK, as SparseGPT: twice as fast, and the damping keeps Ĉ well conditioned.
    # Ĉ is scaled to a unit mean diagonal first (float32 holds what float64 summed); the sweep
    # does not depend on the scale of Ĉ (the factor scales the errors and their spread alike).
    scale = max(float(np.trace(damped)) / damped.shape[0], 1e-30)
    inverse = np.linalg.inv((damped / scale).astype(np.float32))
    inverse = (inverse + inverse.T) / 2
    upper = np.linalg.cholesky(inverse).T.astype(np.float64)  # Ĉ⁻¹ = Uᵀ·U, U upper triangular
    for first in range(0, rows, BLOCK):
        last = min(first + BLOCK, rows)
        block = weight[first:last].copy()
        factor = upper[first:last, first:last]
        constrain = prepare(first, block, np.diag(factor)[:, None])
        errors = np.zeros_like(block)
        for row in range(last - first):
            value = block[row]
            constrained = constrain(row, value)
            error = (value - constrained) / factor[row, row]
            block[row:] -= np.outer(factor[row, row:], error)
            block[row] = constrained
            errors[row] = error
        weight[first:last] = block
        weight[last:] -= upper[first:last, last:].T @ errors  # the block's errors, spread onward
    return weight


def grouped(best: np.ndarray, damped: np.ndarray, group: int,
            choose: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], top: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``best`` rounded to a block-wise grid ``(q - zero)·scale`` (q integer in [0, ``top``]) with
    error feedback over the input rows (GPTQ with groups, Frantar et al. 2023): one scale and
    zero point per ``group`` consecutive input rows and output column.

    As GPTQ does, a group's grid is chosen when the sweep reaches its first row, by
    ``choose(rows)`` ([group, N] -> scale [N], zero [N]) from the group's weights as the errors
    of the rows before left them (rows of the group past the current OBS block, only when
    ``group`` exceeds ``BLOCK``, are read as they were). Returns the weights, exactly on the grid,
    and the scales and zero points, each ``[ceil(K / group), N]``.
    """
    rows = best.shape[0]
    count = -(-rows // group)
    scales = np.ones((count, best.shape[1]))
    zeros = np.zeros((count, best.shape[1]))

    def prepare(first: int, block: np.ndarray, diagonal: np.ndarray) -> Callable[[int, np.ndarray], np.ndarray]:
        def constrain(row: int, value: np.ndarray) -> np.ndarray:
            index = first + row
            number = index // group
            if index % group == 0:
                ahead = block[row:row + group]
                if ahead.shape[0] < group and first + block.shape[0] < rows:
                    ahead = np.concatenate([ahead, best[first + block.shape[0]:index + group]])
                scales[number], zeros[number] = choose(ahead)
            scale, zero = scales[number], zeros[number]
            return (np.clip(np.round(value / scale) + zero, 0, top) - zero) * scale

        return constrain

    return _surgeon(best, damped, prepare), scales, zeros
