"""Distill: fine-tune a compressed model's float weights so its outputs follow the input model's."""
from __future__ import annotations

import logging
import time
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress.context import Pass, PassResult
from onnxpress.errors import PassError
from onnxpress.passes._common import reject_option

logger = logging.getLogger(__name__)

Loss = Literal["mse", "cosine", "kl", "features"]
TaskLoss = Literal["cross_entropy", "mse"]

CONVERTER = "onnxpress torch executor (node by node on the onnx-ir graph)"
_DEFAULT_TRAIN = ("MatMul", "Gemm", "Conv", "bias", "norm")
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
_NORM_OPS = ("LayerNormalization", "BatchNormalization")


class Distill(Pass, ir.passes.FunctionalPass):
    """Fine-tune the float weights of the model (the student) toward the teacher's outputs.

    The teacher is the pipeline's input model (``PassContext.teacher``), or ``teacher=`` when
    the pass is called outside a pipeline. Training runs on the calibration data, labels are not
    needed: first block by block (each block fed the teacher's tensor at the previous boundary
    and trained to give the teacher's tensor at its own boundary; boundaries are the tensors
    both models name alike: LayerNormalization outputs, else the outputs of the weight layers),
    then end to end on the model outputs with ``loss``:

    - ``mse``: squared error relative to the teacher's output energy;
    - ``cosine``: 1 - cosine of each row (last axis) of the outputs;
    - ``kl``: KL divergence of the softmax of the logits (last axis) at ``temperature``;
    - ``features`` (default): ``mse`` over the boundary tensors and the outputs together. Every
      token's features constrain the weights, where a pooled output gives one row per sample:
      on MiniLM with 80 training sentences it generalises better than ``mse`` (embedding cosine
      0.887 against 0.882 after lowrank at budget 0.5, 60 s).

    With ``labels`` (one per calibration row, in the calibration data's order: an array, or
    ``"<file.npz>:<key>"``, the path relative to the working directory), training adds a task loss on ``task_output`` (default: the first
    output): ``task_loss`` ``cross_entropy`` (logits on the last axis, integer classes) or
    ``mse`` (targets), each term divided by its value before training and the task's weighted
    by ``task_weight``. When the pipeline has a task ``metric`` and evaluation data, the metric
    on the evaluation data (higher is better) chooses the checkpoint kept, the held-out loss
    breaking ties; otherwise the held-out loss alone does.

    ``augment`` (default on): half the training batches are replaced by copies near the
    calibration data, labelled by the teacher (``_trainer.Augmenter``: 15 % of a token-id
    input's inner positions swapped for other ids of the calibration data; float rows mixed with
    another row of their batch), so the student follows the teacher on more than the few
    calibration samples. On MiniLM after 50 % unstructured pruning and compensation (80
    training sentences), 240 s of training without it ends worse than 60 s (held-out embedding
    cosine 0.9576 against 0.9595: it overfits); with it 240 s reaches 0.9657 and is still
    improving.

    Options: ``steps`` and/or ``time_budget`` (seconds for the whole pass, measurements
    included: the phases share the time left, a held-out check's time is kept free for the last
    one; the first of the two reached ends training; 200 steps when neither is given),
    ``learning_rate`` (Adam, cosine decay), ``batch_size`` (rows
    per step; feeds of one shape are concatenated when the model's first input axis is dynamic),
    ``block_share`` (share of the steps and time for the block phase; 0 skips it), ``train``
    (op types whose float initializer inputs train, ``bias`` for biases added to a layer's
    output, ``norm`` for normalisation gains and offsets, or initializer names),
    ``calibration_samples``, ``threads`` (torch's intra-op threads while training, restored
    afterwards; None keeps torch's setting: on a machine whose cores are busy with other work,
    1 avoids threads spinning against each other), ``seed``.

    Pruned zeros stay zero (their gradients are masked and the masks re-applied after each
    step), so unstructured and N:M sparsity survive; shapes never change, so factor ranks do
    not either. The held-out loss (the context's evaluation data, else the last fifth of the
    calibration feeds) is measured before training, after the block phase and up to ten times
    during the end-to-end phase (the checks take at most a fifth of its time); the best weights
    are returned, with their held-out loss and cosine. When no checkpoint beats the weights the
    pass got, it returns its input unchanged with ``modified=False`` and says so.

    Training runs on torch (``pip install 'onnxpress[torch]'``) through a node-by-node executor
    of the onnx-ir graph (``passes/_torchgraph.py``); trained tensors are written back into
    the model by initializer name. Running the pass again on its output may train further, so
    ``modified`` says whether weights changed on this run, not that a fixed point was reached.
    """

    name = "distill"
    needs_data = True
    recovers = True  # the accuracy floor judges the pass before it after this one

    def __init__(self, *, steps: int | None = None, time_budget: float | None = None, learning_rate: float = 1e-4,
                 train: list[str] | None = None, loss: Loss = "features", temperature: float = 1.0,
                 batch_size: int = 8,
                 block_share: float = 0.5, calibration_samples: int = 512, threads: int | None = None,
                 labels: np.ndarray | str | None = None, task_loss: TaskLoss = "cross_entropy",
                 task_weight: float = 1.0, task_output: str | None = None, augment: bool = True,
                 seed: int = 0, teacher: ir.Model | None = None) -> None:
        super().__init__()
        reject_option(steps is not None and steps < 1, "distill", "steps", ">= 1", steps)
        reject_option(time_budget is not None and not time_budget > 0, "distill", "time_budget", "> 0 seconds",
                      time_budget)
        reject_option(not learning_rate > 0, "distill", "learning_rate", "> 0", learning_rate)
        reject_option(loss not in ("mse", "cosine", "kl", "features"), "distill", "loss",
                      "'mse', 'cosine', 'kl' or 'features'", loss)
        reject_option(not temperature > 0, "distill", "temperature", "> 0", temperature)
        reject_option(batch_size < 1, "distill", "batch_size", ">= 1", batch_size)
        reject_option(not 0.0 <= block_share < 1.0, "distill", "block_share", "in [0, 1)", block_share)
        reject_option(calibration_samples < 2, "distill", "calibration_samples", ">= 2", calibration_samples)
        reject_option(threads is not None and threads < 1, "distill", "threads", ">= 1", threads)
        reject_option(train is not None and (not train or not all(isinstance(t, str) for t in train)),
                      "distill", "train", "a non-empty list of op types, 'bias', 'norm' or initializer names", train)
        reject_option(teacher is not None and not isinstance(teacher, ir.Model), "distill", "teacher",
                      "an onnx_ir.Model", type(teacher).__name__)
        reject_option(task_loss not in ("cross_entropy", "mse"), "distill", "task_loss", "'cross_entropy' or 'mse'",
                      task_loss)
        reject_option(not task_weight >= 0, "distill", "task_weight", ">= 0", task_weight)
        reject_option(labels is not None and not isinstance(labels, str) and np.ndim(labels) == 0, "distill", "labels",
                      "an array of one label per calibration row or '<file.npz>:<key>'", labels)
        self.steps = steps if steps is not None or time_budget is not None else 200
        self.time_budget = time_budget
        self.learning_rate = learning_rate
        self.train = list(train) if train is not None else list(_DEFAULT_TRAIN)
        self.loss = loss
        self.temperature = temperature
        self.batch_size = batch_size
        self.block_share = block_share
        self.calibration_samples = calibration_samples
        self.threads = threads
        self.labels = labels
        self.task_loss = task_loss
        self.task_weight = task_weight
        self.task_output = task_output
        self.augment = augment
        self.seed = seed
        self.teacher = teacher

    @property
    def deterministic(self) -> bool:  # type: ignore[override]
        """False with a ``time_budget``: the number of training steps follows the wall clock."""
        return self.time_budget is None

    def requires(self, model: ir.Model) -> None:
        """Calibration data. A missing teacher is reported first, by ``call`` (onnx_ir wraps any
        error raised here in a ``PreconditionError``, which would hide the ``PassError``)."""
        if self._teacher() is not None:
            super().requires(model)

    def _teacher(self) -> ir.Model | None:
        if self.teacher is not None:
            return self.teacher
        return self.context.teacher if self.context is not None else None

    # ------------------------------------------------------------------------------- call

    def call(self, model: ir.Model) -> PassResult:
        teacher = self._teacher()
        if teacher is None:
            raise PassError("distill: no teacher model: run the pass in a Pipeline (its input model is the "
                            "teacher) or give teacher=<onnx_ir.Model>")
        try:
            import torch
        except ImportError as err:
            raise PassError("distill: training needs torch: pip install 'onnxpress[torch]'") from err
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._distill(model, teacher)
        finally:
            torch.set_num_threads(previous)

    def _distill(self, model: ir.Model, teacher: ir.Model) -> PassResult:
        import torch

        from onnxpress.passes._torchgraph import TorchGraph
        from onnxpress.passes._trainer import LABELS, TeacherCache, Trainer, find_blocks, make_batches

        start = time.perf_counter()
        deadline = None if self.time_budget is None else start + self.time_budget
        torch.manual_seed(self.seed)
        student = model.clone()
        trainable, unmatched = _trainable(student.graph, self.train)
        statistics: dict[str, Any] = {"converter": CONVERTER, "loss": self.loss, "train": self.train,
                                      "augment": self.augment}
        unmatched = [entry for entry in unmatched if entry not in _DEFAULT_TRAIN or self.train != list(_DEFAULT_TRAIN)]
        if unmatched:
            statistics["train_unmatched"] = unmatched
            logger.warning("distill: train entries %s match no op type or initializer", unmatched)
        if not trainable:
            return PassResult(student, modified=False, statistics={**statistics, "reason": "nothing to train"})
        student_graph = TorchGraph(student.graph, trainable)
        teacher_graph = TorchGraph(teacher.graph)
        outputs = self._outputs(student.graph, teacher.graph)
        boundaries = _boundaries(student.graph, teacher.graph, trainable)
        train_feeds, held_feeds, held_name, evaluation = self._data()
        batchable = _batchable(student.graph)
        train_batches = make_batches(train_feeds, self.batch_size if batchable else 1)
        held_batches = make_batches(held_feeds, self.batch_size if batchable else 1)
        if boundaries and train_batches:  # channels removed by structured pruning: shapes differ there
            with torch.no_grad():
                mine = student_graph.run(train_batches[0].feeds, boundaries)
                theirs = teacher_graph.run(train_batches[0].feeds, boundaries)
            boundaries = [name for name in boundaries if mine[name].shape == theirs[name].shape]
        wanted = boundaries + [o for o in outputs if o not in boundaries]
        cache = TeacherCache(teacher_graph, wanted)
        masks = {name: (p.detach() != 0) for name, p in student_graph.parameters.items()
                 if trainable[name] == "weight" and bool((p.detach() == 0).any())}
        metric = self.context.metric if evaluation else None
        trainer = Trainer(self, student_graph, cache, outputs, boundaries, masks, deadline=deadline, metric=metric,
                          held_feeds=held_feeds)
        if self.labels is not None and self.task_output is not None and self.task_output not in outputs:
            raise PassError(f"distill: task_output '{self.task_output}' is not a float output the model and the "
                            f"teacher share ({outputs})")
        trainer.measure_scales(train_batches)
        before = trainer.measure(held_batches, 0)
        before.weights = {name: p.detach().clone() for name, p in student_graph.parameters.items()}
        trainer.best = before
        blocks = [b for b in find_blocks(student_graph, boundaries) if b.parameters] if self.block_share > 0 else []
        run = trainer.fit(train_batches, held_batches, blocks)
        best = trainer.best
        improved = best is not before
        statistics.update({
            "held_out": held_name, "train_samples": len(train_feeds), "held_out_samples": len(held_feeds),
            "tensors_trained": len(trainable),
            "params_trained": int(sum(p.numel() for p in student_graph.parameters.values())),
            "zeros_kept": int(sum((~m).sum().item() for m in masks.values())),
            "boundaries": len(boundaries),
            "blocks": {b.boundary: {"before": _round(b.before), "after": _round(b.after), "steps": b.steps}
                       for b in blocks if b.steps},
            "steps": run.steps_blocks + run.steps_end_to_end, "steps_blocks": run.steps_blocks,
            "steps_end_to_end": run.steps_end_to_end, "best_step": best.step,
            "held_out_loss_before": _round(before.loss), "held_out_loss_after": _round(best.loss),
            "held_out_cosine_before": _round(before.cosine), "held_out_cosine_after": _round(best.cosine),
        })
        if self.labels is not None:
            statistics["task"] = {"loss": self.task_loss, "output": trainer.task_output, "weight": self.task_weight,
                                  "labelled_samples": sum(LABELS in feed for feed in train_feeds)}
        if metric is not None:
            statistics.update(metric_before=_round(before.metric), metric_after=_round(best.metric))
        statistics.update(improved=improved, seconds=round(time.perf_counter() - start, 3))
        if not improved:
            statistics["reason"] = (f"no checkpoint beat the held-out {'metric' if metric else 'loss'} of the weights "
                                    f"it got ({before.metric if metric else before.loss:.6g}); the model is returned "
                                    f"unchanged")
            return PassResult(student, modified=False, statistics=statistics)
        write_back(student.graph, best.weights)
        logger.info("distill: held-out loss %.6g -> %.6g in %d steps", before.loss, best.loss, statistics["steps"])
        return PassResult(student, modified=True, statistics=statistics)

    def _outputs(self, student: ir.Graph, teacher: ir.Graph) -> list[str]:
        names = {v.name for v in teacher.outputs}
        chosen = [v.name for v in student.outputs if v.name in names and _is_float(v)]
        if not chosen:
            raise PassError("distill: the model and the teacher share no float output by name "
                            f"(model: {[v.name for v in student.outputs]}, teacher: {sorted(names)})")
        return chosen

    def _data(self) -> tuple[list[dict], list[dict], str, bool]:
        """Training feeds, held-out feeds, the held-out data's name, and whether it is the
        pipeline's evaluation data (where a task metric applies)."""
        context = self.context
        if context is None or context.calibration is None:
            raise ir.passes.PreconditionError("distill: calibration data needed (run the pass in a Pipeline "
                                              "with calibration=...)")
        feeds = self._labelled(context.calibration.take(self.calibration_samples))
        if context.evaluation is not None and len(context.evaluation) > 0:
            # A task metric reads every evaluation feed (its labels are the whole set's).
            count = len(context.evaluation) if context.metric is not None else self.calibration_samples
            return feeds, context.evaluation.take(count), context.evaluation.name, True
        if len(feeds) >= 2:
            cut = max(1, min(len(feeds) - 1, round(len(feeds) * 0.8)))
            return feeds[:cut], feeds[cut:], f"{context.calibration.name} (last {len(feeds) - cut} feeds)", False
        raise PassError("distill: one calibration feed cannot be split into training and held-out data; "
                        "give more calibration data or evaluation data")

    def _labelled(self, feeds: list[dict]) -> list[dict]:
        """``feeds`` with their rows' labels (``labels`` in calibration order) under ``LABELS``."""
        if self.labels is None:
            return feeds
        from onnxpress.passes._trainer import LABELS, rows_of

        labels = self._label_array()
        rows = [rows_of(feed) for feed in feeds]
        if len(labels) < sum(rows):
            raise PassError(f"distill: labels: {len(labels)} labels for {sum(rows)} calibration rows; give one "
                            f"label per row, in the calibration data's order")
        labelled, at = [], 0
        for feed, count in zip(feeds, rows):
            labelled.append({**feed, LABELS: labels[at:at + count]})
            at += count
        return labelled

    def _label_array(self) -> np.ndarray:
        if isinstance(self.labels, str):
            from onnxpress.calibration import read_array

            path, _, key = self.labels.rpartition(":") if ":" in self.labels else (self.labels, "", "label")
            return np.asarray(read_array(path, key or "label"))
        return np.asarray(self.labels)


def write_back(graph: ir.Graph, tensors: Mapping[str, Any]) -> None:
    """Replace the initializers named in ``tensors`` (torch tensors) by their values, each in the
    initializer's own dtype; the values keep their names and their consumers."""
    for name, tensor in tensors.items():
        value = graph.initializers[name]
        array = tensor.detach().cpu().numpy().astype(value.const_value.dtype.numpy(), copy=True)
        value.const_value = ir.tensor(array, name=name)


def _round(value: float) -> float:
    return float(f"{value:.6g}")


# ---------------------------------------------------------------------- graph analysis

def _is_float(value: ir.Value) -> bool:
    return value.dtype in (ir.DataType.FLOAT, None)


def _float_initializer(value: ir.Value | None) -> bool:
    return (value is not None and value.is_initializer() and value.const_value is not None
            and value.const_value.dtype == ir.DataType.FLOAT)


def _trainable(graph: ir.Graph, train: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Initializer name -> kind (``weight``, ``bias``, ``norm``, ``other``) of what trains, and the
    ``train`` entries that matched nothing. Only float32 initializers train."""
    chosen: dict[str, str] = {}
    matched: set[str] = set()
    wanted = set(train)
    for node in graph:
        for index, value in enumerate(node.inputs):
            if not _float_initializer(value):
                continue
            kind = _kind(node, index)
            if node.op_type in wanted:
                matched.add(node.op_type)
                chosen.setdefault(value.name, kind)
            if kind in ("bias", "norm") and kind in wanted:
                matched.add(kind)
                chosen.setdefault(value.name, kind)
            if value.name in wanted:
                matched.add(value.name)
                chosen.setdefault(value.name, kind)
    return chosen, [entry for entry in train if entry not in matched]


def _kind(node: ir.Node, index: int) -> str:
    op = node.op_type
    if op in _WEIGHT_OPS:
        return "bias" if index == 2 else "weight"
    if op in _NORM_OPS and index in (1, 2):
        return "norm"
    if op in ("Add", "Sub"):
        # A bias: a vector added to a layer's output (MatMul + Add as exporters write Linear).
        other = node.inputs[1 - index] if len(node.inputs) == 2 else None
        producer = other.producer() if other is not None else None
        value = node.inputs[index]
        if producer is not None and producer.op_type in _WEIGHT_OPS and value.const_value.size > 1:
            return "bias"
    return "other"


def _boundaries(student: ir.Graph, teacher: ir.Graph, trainable: Mapping[str, str]) -> list[str]:
    """Tensors that mark block ends, in the student's order: LayerNormalization outputs both
    models name alike, else the outputs of the student's weight layers that the teacher names
    too. Graph outputs are left out (the end-to-end phase matches them)."""
    shared = {v.name for node in teacher for v in node.outputs if v.name}
    outputs = {v.name for v in student.outputs}
    norms, layers = [], []
    for node in student:
        value = node.outputs[0] if node.outputs else None
        if value is None or value.name not in shared or value.name in outputs or not _is_float(value):
            continue
        if node.op_type == "LayerNormalization":
            norms.append(value.name)
        elif node.op_type in _WEIGHT_OPS and any(v is not None and v.name in trainable for v in node.inputs[1:]):
            layers.append(value.name)
        elif node.op_type in ("Add", "Sub") and layers and _reads(node, layers[-1]) and any(
                v is not None and trainable.get(v.name) == "bias" for v in node.inputs):
            layers[-1] = value.name  # past the layer's bias (MatMul + Add)
    return norms or layers


def _reads(node: ir.Node, name: str) -> bool:
    return any(v is not None and v.name == name for v in node.inputs)


def _batchable(graph: ir.Graph) -> bool:
    """Feeds may be concatenated along axis 0 when every input's first dim is declared dynamic."""
    for value in graph.inputs:
        shape = value.shape
        if shape is None or len(shape) == 0 or isinstance(shape[0], int):
            return False
    return True


