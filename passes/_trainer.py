"""Distill's training loop on torch: batches, the teacher's cached tensors, the block and
end-to-end phases, held-out checkpoints, and the losses.

Imported by ``passes/distill.py`` inside its call (torch is imported at the top here).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from onnxpress.passes._torchgraph import TorchGraph
from onnxpress.progress import Tracker

logger = logging.getLogger(__name__)

_EVALUATIONS = 10  # held-out checks during the end-to-end phase, at most
_CHECK_SHARE = 0.2  # the end-to-end phase's time the held-out checks may take, at most
_CACHE_BYTES = 1 << 30  # teacher tensors kept in memory at most; beyond it they are recomputed
LABELS = "\x00labels"  # the key under which a feed carries its rows' labels (no graph input has it)


@dataclass
class Batch:
    """Feeds concatenated along the batch axis (or one feed), with the teacher's tensors on them."""

    feeds: dict[str, np.ndarray]
    count: int
    targets: dict[str, Any] | None = None
    transient: bool = False  # made for one step (augmented): its teacher tensors are not cached

    @property
    def labels(self) -> np.ndarray | None:
        return self.feeds.get(LABELS)


@dataclass
class Block:
    """The student's nodes between the previous boundary tensors and ``boundary``."""

    boundary: str
    parameters: list[str]
    before: float = 0.0
    after: float = 0.0
    steps: int = 0


@dataclass
class Checkpoint:
    """Weights measured on the held-out data: the loss, the task metric (when one is given; it
    decides, higher is better) and the outputs' mean row cosine to the teacher's."""

    loss: float
    metric: float
    cosine: float
    weights: dict
    step: int

    def beats(self, other: Checkpoint) -> bool:
        if not math.isfinite(self.loss):
            return False
        if self.metric != other.metric:
            return self.metric > other.metric
        return self.loss < other.loss


@dataclass
class Run:
    """What a training run measured (returned in the statistics)."""

    steps_blocks: int = 0
    steps_end_to_end: int = 0
    best_step: int = 0


class TeacherCache:
    """The teacher's boundary tensors and outputs per batch, kept while they fit ``_CACHE_BYTES``."""

    def __init__(self, graph: TorchGraph, names: list[str]) -> None:
        self.graph = graph
        self.names = names
        self.kept = 0

    def __call__(self, batch: Batch) -> dict[str, Any]:
        if batch.targets is not None:
            return batch.targets
        with torch.no_grad():
            targets = self.graph.run(batch.feeds, self.names)
        size = sum(t.numel() * t.element_size() for t in targets.values())
        if batch.transient:
            batch.targets = targets  # for the rest of its step only: the batch is dropped after it
        elif self.kept + size <= _CACHE_BYTES:
            self.kept += size
            batch.targets = targets
        return targets


class Augmenter:
    """Inputs near the calibration data for the teacher to label: the student learns to follow
    the teacher on more than the few calibration samples (as TinyBERT augments its data).

    Token-id inputs (integer inputs of more than 16 distinct values in the calibration data)
    get ``TOKEN_RATE`` of their positions, all but the first and last (special tokens), replaced
    by ids drawn from the calibration data's; float inputs of a batch of several rows without
    labels are mixed with another row of the batch (mixup, ``x' = λ·x + (1 - λ)·x[j]``, λ in
    ``MIX``). Masks, token types and labels are kept.
    """

    TOKEN_RATE = 0.15
    MIX = (0.6, 1.0)
    SHARE = 0.5  # of the training batches, replaced by an augmented copy

    def __init__(self, batches: list[Batch], rng: np.random.Generator) -> None:
        self.rng = rng
        seen: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            for name, array in batch.feeds.items():
                if name != LABELS and np.issubdtype(array.dtype, np.integer):
                    seen.setdefault(name, []).append(array.ravel())
        pools = {name: np.concatenate(parts) for name, parts in seen.items()}
        self.pools = {name: pool for name, pool in pools.items() if np.unique(pool).size > 16}

    def __call__(self, batch: Batch) -> Batch:
        feeds = {}
        rng = self.rng
        for name, array in batch.feeds.items():
            if name in self.pools and array.ndim >= 2 and array.shape[1] > 2:
                array = array.copy()
                inner = array[:, 1:-1]  # a view: the first and last positions stay
                chosen = rng.random(inner.shape) < self.TOKEN_RATE
                inner[chosen] = rng.choice(self.pools[name], int(chosen.sum()))
            elif (name != LABELS and np.issubdtype(array.dtype, np.floating) and batch.labels is None
                  and array.ndim >= 1 and array.shape[0] > 1):
                weight = rng.uniform(*self.MIX, size=(array.shape[0],) + (1,) * (array.ndim - 1)).astype(array.dtype)
                array = weight * array + (1 - weight) * array[rng.permutation(array.shape[0])]
            feeds[name] = array
        return Batch(feeds, batch.count, transient=True)


class Trainer:
    """Runs the block phase and the end-to-end phase, keeping the best held-out weights."""

    def __init__(self, distill: Any, student: TorchGraph, teacher: TeacherCache, outputs: list[str],
                 boundaries: list[str], masks: dict, *, deadline: float | None = None,
                 metric: Callable[[list[dict[str, np.ndarray]]], float] | None = None,
                 held_feeds: list[dict] | None = None) -> None:
        self.options = distill
        self.student = student
        self.teacher = teacher
        self.outputs = outputs
        self.boundaries = boundaries
        self.masks = masks
        self.deadline = deadline
        self.reserve = 0.0  # seconds a held-out check takes: kept free before the deadline
        self.metric = metric
        self.held_feeds = held_feeds or []
        self.scale = (1.0, 1.0)  # the distillation and task losses' values before training (task loss)
        self.best = Checkpoint(math.inf, -math.inf, 0.0, {}, 0)
        self.rng = np.random.default_rng(distill.seed)

    # -------------------------------------------------------------------- losses

    def loss(self, student: Mapping[str, Any], teacher: Mapping[str, Any]):
        kind = self.options.loss
        if kind == "features":
            names = self.matched
            return sum(_relative_mse(student[n], teacher[n]) for n in names) / len(names)
        terms = []
        for name in self.outputs:
            s, t = student[name], teacher[name]
            if kind == "mse":
                terms.append(_relative_mse(s, t))
            elif kind == "cosine":
                terms.append(_cosine_loss(s, t))
            else:
                terms.append(_kl_loss(s, t, self.options.temperature))
        return sum(terms) / len(terms)

    @property
    def matched(self) -> list[str]:
        """The tensors the end-to-end loss compares: the outputs, with the boundaries for ``features``."""
        if self.options.loss == "features":
            return list(dict.fromkeys(self.boundaries + self.outputs))
        return self.outputs

    def task(self, student: Mapping[str, Any], labels: np.ndarray):
        """The task loss of the student's ``task_output`` against ``labels``: cross-entropy of
        the logits (last axis) with integer classes, or squared error to the targets."""
        produced = student[self.task_output]
        if self.options.task_loss == "cross_entropy":
            target = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)
            return torch.nn.functional.cross_entropy(_rows(produced), target)
        target = torch.as_tensor(np.asarray(labels, np.float32)).reshape(produced.shape)
        return ((produced - target) ** 2).mean()

    @property
    def task_output(self) -> str:
        return self.options.task_output or self.outputs[0]

    def objective(self, batch: Batch):
        """What training minimises on ``batch``: the distillation loss, plus ``task_weight`` times
        the task loss when the batch has labels (each divided by its value before training)."""
        produced = self.student.run(batch.feeds, self.matched)
        loss = self.loss(produced, self.teacher(batch))
        if batch.labels is None:
            return loss
        distill_scale, task_scale = self.scale
        return loss / distill_scale + self.options.task_weight * self.task(produced, batch.labels) / task_scale

    def measure_scales(self, batches: list[Batch]) -> None:
        """The losses' values before training, on up to four labelled batches (``objective``)."""
        labelled = [b for b in batches if b.labels is not None][:4]
        if not labelled:
            return
        with torch.no_grad():
            distill = task = 0.0
            for batch in labelled:
                produced = self.student.run(batch.feeds, self.matched)
                distill += float(self.loss(produced, self.teacher(batch)))
                task += float(self.task(produced, batch.labels))
        self.scale = (max(distill / len(labelled), 1e-12), max(task / len(labelled), 1e-12))

    def evaluate(self, batches: list[Batch]) -> tuple[float, float]:
        """The end-to-end loss and the outputs' mean row cosine over ``batches`` (feed-weighted)."""
        total = cosine = 0.0
        count = 0
        for batch in batches:
            produced = self.student.run(batch.feeds, self.matched)
            targets = self.teacher(batch)
            total += float(self.loss(produced, targets)) * batch.count
            cosine += float(sum(1.0 - _cosine_loss(produced[n], targets[n]) for n in self.outputs)
                            / len(self.outputs)) * batch.count
            count += batch.count
        return total / max(count, 1), cosine / max(count, 1)

    def measure(self, held: list[Batch], step: int) -> Checkpoint:
        """The current weights on the held-out data (the task metric on every held-out feed, in
        order, when one is given); the time it took is kept free before the deadline."""
        began = time.perf_counter()
        with torch.no_grad():
            loss, cosine = self.evaluate(held)
            metric = 0.0
            if self.metric is not None:
                outputs = [{name: tensor.numpy() for name, tensor in self.student.run(feed).items()}
                           for feed in self.held_feeds]
                metric = float(self.metric(outputs))
        self.reserve = max(self.reserve, time.perf_counter() - began)
        return Checkpoint(loss, metric, cosine, {}, step)

    # ----------------------------------------------------------------- schedule

    def _budget(self, step_share: float, time_share: float) -> tuple[int | None, float | None]:
        """The steps (``step_share`` of ``steps``) and seconds (``time_share`` of the time left
        before the deadline, less one held-out check) a phase may take."""
        options = self.options
        steps = None if options.steps is None else max(1, int(round(options.steps * step_share)))
        seconds = None
        if self.deadline is not None:
            seconds = max(0.0, self.deadline - time.perf_counter() - self.reserve) * time_share
        return steps, seconds

    @staticmethod
    def _progress(step: int, steps: int | None, began: float, seconds: float | None) -> float:
        done = 0.0
        if steps is not None:
            done = step / steps
        if seconds is not None:
            done = max(done, (time.perf_counter() - began) / seconds if seconds > 0 else 1.0)
        return done

    def _units(self, batches: list[Batch]):
        """Endless steps: lists of batches holding ``batch_size`` feeds, reshuffled every epoch;
        with ``augment``, a share of them replaced by augmented copies (``Augmenter``)."""
        augment = Augmenter(batches, self.rng) if self.options.augment else None
        while True:
            order = self.rng.permutation(len(batches))
            unit: list[Batch] = []
            for index in order:
                batch = batches[index]
                if augment is not None and self.rng.random() < Augmenter.SHARE:
                    batch = augment(batch)
                unit.append(batch)
                if sum(b.count for b in unit) >= self.options.batch_size:
                    yield unit
                    unit = []
            if unit:
                yield unit

    def _step(self, optimizer, parameters: list, unit: list[Batch], compute, learning_rate: float) -> float:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        optimizer.zero_grad(set_to_none=True)
        total = sum(b.count for b in unit)
        value = 0.0
        for batch in unit:
            loss = compute(batch) * (batch.count / total)
            loss.backward()
            value += loss.detach().item()
        for name, parameter in parameters:
            if name in self.masks and parameter.grad is not None:
                parameter.grad.mul_(self.masks[name])
        optimizer.step()
        for name, parameter in parameters:
            if name in self.masks:
                parameter.data.mul_(self.masks[name])
        return value

    def _say(self, message: str) -> None:
        context = self.options.context
        if context is not None:
            context.say(f"distill: {message}")

    def _phase(self, task: str, steps: int | None) -> Tracker:
        """A training phase's progress step, in optimizer steps (of ``steps``; None under a time
        budget, where the count is not known ahead)."""
        context = self.options.context
        return Tracker(context.say if context is not None else None, task, steps, "steps")

    # ------------------------------------------------------------------- phases

    def fit(self, train: list[Batch], held: list[Batch], blocks: list[Block]) -> Run:
        run = Run()
        share = self.options.block_share if blocks else 0.0
        if share:
            self._train_blocks(train, blocks, share, run)
            self._checkpoint(held, run.steps_blocks, "after the block phase")
        steps, seconds = self._budget(1.0 - share, 1.0)
        parameters = list(self.student.parameters.items())
        optimizer = torch.optim.Adam([p for _, p in parameters], lr=self.options.learning_rate)
        began = time.perf_counter()
        checks = 1
        evaluations = _EVALUATIONS
        if seconds is not None and self.reserve > 0:  # held-out checks take at most a fifth of the time
            evaluations = max(1, min(_EVALUATIONS, int(_CHECK_SHARE * seconds / self.reserve)))
        step = 0
        with self._phase("end to end", steps) as phase:
            for unit in self._units(train):
                done = self._progress(step, steps, began, seconds)
                if done >= 1.0:
                    break
                rate = self.options.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
                value = self._step(optimizer, parameters, unit, self.objective, rate)
                step += 1
                if not math.isfinite(value):
                    logger.warning("distill: the training loss became %s at step %d: stopped", value, step)
                    break
                if self._progress(step, steps, began, seconds) >= checks / evaluations:
                    checks += 1
                    self._checkpoint(held, run.steps_blocks + step, f"end to end, step {step}")
                phase.update(step, note=f"training loss {value:.4g}, best held-out {self.best.loss:.4g}")
        run.steps_end_to_end = step
        if step and (checks - 1) < evaluations:
            self._checkpoint(held, run.steps_blocks + step, "end of training")
        return run

    def _checkpoint(self, held: list[Batch], step: int, when: str) -> None:
        checkpoint = self.measure(held, step)
        if checkpoint.beats(self.best):
            checkpoint.weights = {n: p.detach().clone() for n, p in self.student.parameters.items()}
            self.best = checkpoint
        metric = f", metric {checkpoint.metric:.4g}" if self.metric is not None else ""
        self._say(f"held-out loss {checkpoint.loss:.4g}{metric} {when} (best {self.best.loss:.4g})")

    def _train_blocks(self, train: list[Batch], blocks: list[Block], share: float, run: Run) -> None:
        """Each block on its own: fed the teacher's boundary tensors, trained toward the next one."""
        steps, seconds = self._budget(share, share)
        phase_end = None if seconds is None else time.perf_counter() + seconds
        sample = train[: max(1, min(len(train), 4))]
        active = []
        with torch.no_grad():
            for block in blocks:
                block.before = float(sum(float(self._block_loss(block, b)) for b in sample) / len(sample))
                if block.before > 1e-10:  # an untouched block reproduces the teacher already
                    active.append(block)
        if not active:
            return
        per_steps = None if steps is None else max(1, steps // len(active))
        for index, block in enumerate(active):
            # Each block gets an equal part of the phase's time left (the loss measurements included).
            per_seconds = None if phase_end is None else max(0.0, phase_end - time.perf_counter()) / (len(active) - index)
            parameters = [(n, self.student.parameters[n]) for n in block.parameters]
            kept = [p.detach().clone() for _, p in parameters]
            optimizer = torch.optim.Adam([p for _, p in parameters], lr=self.options.learning_rate)
            began = time.perf_counter()
            step = 0
            with self._phase(f"block {index + 1}/{len(active)}", per_steps) as phase:
                for unit in self._units(train):
                    done = self._progress(step, per_steps, began, per_seconds)
                    if done >= 1.0:
                        break
                    rate = self.options.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))
                    value = self._step(optimizer, parameters, unit, lambda b, blk=block: self._block_loss(blk, b),
                                       rate)
                    step += 1
                    if not math.isfinite(value):
                        break
                    phase.update(step, note=f"'{block.boundary}', loss {value:.4g}")
            block.steps = step
            run.steps_blocks += step
            with torch.no_grad():
                block.after = float(sum(float(self._block_loss(block, b)) for b in sample) / len(sample))
                if not block.after < block.before:  # no better on the sample: the block keeps its weights
                    for (_, parameter), weights in zip(parameters, kept):
                        parameter.copy_(weights)
                    block.after = block.before

    def _block_loss(self, block: Block, batch: Batch):
        targets = self.teacher(batch)
        earlier = self.boundaries[: self.boundaries.index(block.boundary)]
        produced = self.student.run(batch.feeds, [block.boundary], {n: targets[n] for n in earlier})
        return _relative_mse(produced[block.boundary], targets[block.boundary])


# --------------------------------------------------------------------------- losses

def _relative_mse(student, teacher):
    return ((student - teacher) ** 2).sum() / (teacher ** 2).sum().clamp_min(1e-12)


def _rows(tensor):
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(1, -1)


def _cosine_loss(student, teacher):
    return (1.0 - torch.nn.functional.cosine_similarity(_rows(student), _rows(teacher), dim=-1, eps=1e-12)).mean()


def _kl_loss(student, teacher, temperature: float):
    log_p = torch.log_softmax(_rows(teacher) / temperature, dim=-1)
    log_q = torch.log_softmax(_rows(student) / temperature, dim=-1)
    # KL(teacher || student), scaled by T^2 so gradients keep their size across temperatures (Hinton et al.).
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature ** 2


def find_blocks(graph: TorchGraph, boundaries: list[str]) -> list[Block]:
    """One block per boundary: the student's nodes computing it from the earlier boundaries, and
    the trainable tensors they read."""
    found = []
    for index, boundary in enumerate(boundaries):
        nodes, _ = graph.plan((boundary,), frozenset(boundaries[:index]))
        used = dict.fromkeys(v.name for node in nodes for v in node.inputs
                             if v is not None and v.name in graph.parameters)
        found.append(Block(boundary, list(used)))
    return found


def make_batches(feeds: list[dict], batch_size: int) -> list[Batch]:
    """Feeds of one shape concatenated along axis 0 up to ``batch_size`` rows (feeds keep their order
    within a shape). ``batch_size`` 1 leaves every feed alone."""
    groups: dict[tuple, list[dict]] = {}
    for feed in feeds:
        key = tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in feed.items()))
        groups.setdefault(key, []).append(feed)
    joined = []
    for members in groups.values():
        chunk: list[dict] = []
        for feed in members:
            chunk.append(feed)
            if batch_size == 1 or sum(rows_of(f) for f in chunk) >= batch_size:
                joined.append(_join(chunk))
                chunk = []
        if chunk:
            joined.append(_join(chunk))
    return joined


def _join(chunk: list[dict]) -> Batch:
    if len(chunk) == 1:
        return Batch(dict(chunk[0]), rows_of(chunk[0]))
    joined = {name: np.concatenate([f[name] for f in chunk], axis=0) for name in chunk[0]}
    return Batch(joined, sum(rows_of(f) for f in chunk))


def rows_of(feed: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1
