"""A synthetic decoder-only transformer past protobuf's 2 GB limit, written with external data.

Used by ``large.py``. Every weight is drawn from its own seeded generator and appended to the
data file as soon as it is made, so the builder holds one weight at a time, never the model:
the graph refers to the file through ``ir.ExternalTensor`` and only the small graph is
serialized. The model (single-head attention, pre-norm blocks with residuals):

    input_ids int64 [batch, sequence] -> Gather(embedding)
    N x [ LayerNormalization -> Q, K, V MatMuls -> softmax(Q K^T / sqrt(h) + causal mask) V
          -> O MatMul -> + residual; LayerNormalization -> up MatMul -> Relu -> down MatMul
          -> + residual ]
    -> LayerNormalization -> LM-head MatMul -> logits float [batch, sequence, vocab]

The causal mask is computed from the input's shape (Trilu over a [sequence, sequence] block of
ones), so both dimensions stay dynamic.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

OPSET = 17  # LayerNormalization is in the default domain from opset 17
DATA_NAME = "model.data"
_FLOAT_BYTES = 4
_MASKED = -1e9  # added to the scores of future positions: softmax gives them ~0


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes of the transformer."""

    hidden: int
    layers: int
    vocab: int

    @property
    def weight_bytes(self) -> int:
        """Bytes of the float32 weights: embedding and LM head, and per block 4 h^2 + 2 * 4 h^2
        of MatMul weights and two norms (scale and bias); the final norm."""
        h = self.hidden
        block = (12 * h * h + 4 * h) * _FLOAT_BYTES
        return 2 * self.vocab * h * _FLOAT_BYTES + self.layers * block + 2 * h * _FLOAT_BYTES


def shape_for(size_gib: float) -> Shape:
    """The hidden size, vocabulary and number of blocks whose weights just pass ``size_gib`` GiB."""
    hidden, vocab = (2048, 32000) if size_gib >= 1.0 else (1024, 16384)
    empty = Shape(hidden, 0, vocab)
    block = Shape(hidden, 1, vocab).weight_bytes - empty.weight_bytes
    layers = max(1, math.ceil((size_gib * 2**30 - empty.weight_bytes) / block))
    return Shape(hidden, layers, vocab)


class _Writer:
    """Appends arrays to the external data file and returns the values that refer to them."""

    def __init__(self, folder: Path, seed: int) -> None:
        self.folder = folder
        self.seed = seed
        self.offset = 0
        self.count = 0
        self.initializers: list[ir.Value] = []
        self.file = open(folder / DATA_NAME, "wb")  # noqa: SIM115 (closed by build)

    def _append(self, name: str, array: np.ndarray) -> ir.Value:
        array = np.ascontiguousarray(array, dtype=np.float32)
        array.tofile(self.file)
        tensor = ir.ExternalTensor(DATA_NAME, self.offset, array.nbytes, ir.DataType.FLOAT,
                                   shape=ir.Shape(array.shape), name=name, base_dir=self.folder)
        self.offset += array.nbytes
        value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape),
                         const_value=tensor)
        self.initializers.append(value)
        return value

    def random(self, name: str, rows: int, cols: int) -> ir.Value:
        """Uniform weights with variance 1/rows (activations keep a standard deviation near 1)."""
        rng = np.random.default_rng([self.seed, self.count])
        self.count += 1
        weight = rng.random((rows, cols), dtype=np.float32)
        weight -= np.float32(0.5)
        weight *= np.float32(math.sqrt(12.0 / rows))
        return self._append(name, weight)

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        return self._append(name, array)


def build(folder: Path, shape: Shape, seed: int = 2024) -> Path:
    """Write ``model.onnx`` and ``model.data`` into ``folder``; return the model's path."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, seed)
    h = shape.hidden
    nodes: list[ir.Node] = []

    def op(op_type: str, inputs, **attributes) -> ir.Value:
        node = ir.node(op_type, inputs, attributes=attributes or None, name=f"{op_type.lower()}_{len(nodes)}")
        nodes.append(node)
        return node.outputs[0]

    def const(name: str, array: np.ndarray) -> ir.Value:
        node = ir.node("Constant", [], attributes={"value": ir.tensor(array, name=name)}, name=name)
        nodes.append(node)
        return node.outputs[0]

    def norm(prefix: str, x: ir.Value) -> ir.Value:
        scale = writer.constant(f"{prefix}.scale", np.ones(h, np.float32))
        bias = writer.constant(f"{prefix}.bias", np.zeros(h, np.float32))
        return op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)

    input_ids = ir.Value(name="input_ids", type=ir.TensorType(ir.DataType.INT64),
                         shape=ir.Shape(["batch", "sequence"]))
    embedding = writer.random("embed.weight", shape.vocab, h)
    x = op("Gather", [embedding, input_ids], axis=0)
    # Causal mask [sequence, sequence]: 0 on and below the diagonal, _MASKED above it.
    length = op("Gather", [op("Shape", [input_ids]), const("one_index", np.array([1], np.int64))], axis=0)
    square = op("Concat", [length, length], axis=0)
    ones = op("ConstantOfShape", [square], value=ir.tensor(np.array([1.0], np.float32)))
    lower = op("Trilu", [ones], upper=0)
    mask = op("Mul", [op("Sub", [lower, const("one", np.array(1.0, np.float32))]),
                      const("masked", np.array(-_MASKED, np.float32))])
    inverse_sqrt = const("inverse_sqrt_hidden", np.array(1.0 / math.sqrt(h), np.float32))
    for layer in range(shape.layers):
        p = f"layers.{layer}"
        normed = norm(f"{p}.ln1", x)
        q, k, v = (op("MatMul", [normed, writer.random(f"{p}.attn.{n}", h, h)]) for n in "qkv")
        scores = op("Add", [op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 2, 1])]), inverse_sqrt]),
                            mask])
        attended = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        x = op("Add", [x, op("MatMul", [attended, writer.random(f"{p}.attn.o", h, h)])])
        normed = norm(f"{p}.ln2", x)
        up = op("Relu", [op("MatMul", [normed, writer.random(f"{p}.mlp.up", h, 4 * h)])])
        x = op("Add", [x, op("MatMul", [up, writer.random(f"{p}.mlp.down", 4 * h, h)])])
    logits = op("MatMul", [norm("final_norm", x), writer.random("lm_head.weight", h, shape.vocab)])
    writer.file.close()
    logits.name = "logits"
    logits.type = ir.TensorType(ir.DataType.FLOAT)
    logits.shape = ir.Shape(["batch", "sequence", shape.vocab])
    graph = ir.Graph([input_ids], [logits], nodes=nodes, initializers=writer.initializers,
                     opset_imports={"": OPSET}, name="synthetic_decoder")
    path = folder / "model.onnx"
    # The initializers are ExternalTensors already in DATA_NAME: saving writes only the graph.
    ir.save(ir.Model(graph, ir_version=10), path)
    return path
