"""A large model cut into segments that ONNX Runtime runs one at a time.

A model whose weights exceed a session's budget (``session_memory_mb`` of the target) is run
piecewise: its main graph, in topological order, is cut into consecutive segments of at most
``budget`` bytes of initializers each (a node whose own weights exceed it is a segment alone).
A segment's inputs are the values it reads that earlier segments (or the feed) made; its
outputs the values it makes that later segments read, the graph's outputs and any value asked
for. Each segment becomes a small model file beside the serialised model in the workspace,
whose initializers refer to the same data files: no weight is copied, and only the running
segment's weights are in memory. The runner (``runtime``) builds one session per segment,
runs every feed through it, keeps the boundary activations, and drops the session.

Plans read our own serialised model (``_weights.artefact``), never a user's file.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from onnxpress import _proto


@dataclass
class Segment:
    """Consecutive nodes of the main graph and what crosses its borders."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from outside themselves (outer-scope values)."""
    reads: set[str] = set()
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for graph in graphs:
            defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                used = set(inner.input) | _subgraph_reads(inner)
                reads |= {name for name in used if name and name not in defined}
                defined |= set(inner.output)
    return reads


def reads(node: onnx.NodeProto) -> list[str]:
    """Every value ``node`` reads: its inputs and its subgraphs' outer-scope values."""
    return [name for name in node.input if name] + sorted(_subgraph_reads(node) - set(node.input))


class Plan:
    """How the model at ``path`` runs in segments of at most ``budget`` bytes of weights.

    ``wanted``: values to return besides the graph's outputs.
    """

    def __init__(self, path: str, budget: int, wanted: Iterable[str] = ()) -> None:
        self.folder = Path(path).parent
        proto = _proto.load_proto(path, load_external_data=False)
        graph = proto.graph
        # Types of the values crossing borders: shape inference on the graph alone (external
        # tensors carry their types), else those of the first values seen (``write``).
        try:
            inferred = onnx.shape_inference.infer_shapes(proto).graph
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            inferred = graph
        self._types = {v.name: v.type.tensor_type.elem_type
                       for v in (*inferred.value_info, *inferred.input, *inferred.output)
                       if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
        sizes = {t.name: _proto.tensor_nbytes(t) or 0 for t in graph.initializer}
        self.tensors = {t.name: t for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in self.tensors]
        self.output_names = [v.name for v in graph.output]
        self.segments: list[Segment] = []
        current = Segment()
        for node in graph.node:
            needed = [n for n in dict.fromkeys(reads(node)) if n in sizes and n not in current.initializers]
            extra = sum(sizes[n] for n in needed)
            if current.nodes and current.weight_bytes + extra > budget:
                self.segments.append(current)
                current = Segment()
                needed = [n for n in dict.fromkeys(reads(node)) if n in sizes]
                extra = sum(sizes[n] for n in needed)
            current.nodes.append(node)
            current.initializers.extend(needed)
            current.weight_bytes += extra
        if current.nodes or not self.segments:
            self.segments.append(current)
        self._borders(set(self.output_names) | set(wanted))
        header = onnx.ModelProto()
        header.CopyFrom(proto)
        header.ClearField("graph")
        self._header = header

    def _borders(self, kept: set[str]) -> None:
        made: dict[str, int] = {name: -1 for name in self.input_names}
        for index, segment in enumerate(self.segments):
            for node in segment.nodes:
                for name in node.output:
                    if name:
                        made[name] = index
        # The last segment reading each value: it is dropped from the activations after it.
        self.last_read: dict[str, int] = {}
        for index, segment in enumerate(self.segments):
            own = set(segment.initializers)
            inputs: dict[str, None] = {}
            for node in segment.nodes:
                for name in reads(node):
                    if name in own:
                        continue
                    if name in made and made[name] < index:
                        inputs[name] = None
                    self.last_read[name] = index
            segment.inputs = list(inputs)
        for index, segment in enumerate(self.segments):
            outputs = []
            for node in segment.nodes:
                for name in node.output:
                    if name and (name in kept or self.last_read.get(name, index) > index):
                        outputs.append(name)
            segment.outputs = outputs
        self.kept = kept
        self.made = made

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def weight_bytes(self) -> int:
        return sum(segment.weight_bytes for segment in self.segments)

    def needed_for(self, names: Iterable[str]) -> int:
        """How many segments must run to produce ``names``."""
        return max((self.made.get(name, -1) for name in names), default=-1) + 1

    def write(self, index: int, sample: Mapping[str, np.ndarray] | None = None) -> Path:
        """Segment ``index`` as a model file in the workspace (``model``); the caller removes it."""
        path = self.folder / f"segment-{secrets.token_hex(6)}-{index}.onnx"
        path.write_bytes(self.model(index, sample).SerializeToString())
        return path

    def model(self, index: int, sample: Mapping[str, np.ndarray] | None = None, *,
              typed_outputs: bool = False) -> onnx.ModelProto:
        """Segment ``index`` as a model whose initializers refer to the workspace's data files;
        its inputs take the types of ``sample``'s arrays (the values the earlier segments made)
        where given, else the inferred ones. Outputs are untyped (ONNX Runtime infers them)
        unless ``typed_outputs`` (for tools that read them: the inferred types)."""
        segment = self.segments[index]
        model = onnx.ModelProto()
        model.CopyFrom(self._header)
        graph = model.graph
        graph.name = f"segment_{index}"
        graph.node.extend(segment.nodes)
        graph.initializer.extend(self.tensors[name] for name in segment.initializers)
        for name in segment.inputs:
            if sample is not None and name in sample:
                array = np.asarray(sample[name])
                kind, shape = onnx.helper.np_dtype_to_tensor_dtype(array.dtype), [None] * array.ndim
            elif name in self._types:
                kind, shape = self._types[name], None
            else:
                raise ValueError(f"segment {index}: the type of its input '{name}' is unknown")
            graph.input.append(onnx.helper.make_tensor_value_info(name, kind, shape))
        for name in segment.outputs:
            typed = typed_outputs and name in self._types
            graph.output.append(onnx.helper.make_tensor_value_info(name, self._types[name], None)
                                if typed else onnx.ValueInfoProto(name=name))
        return model

    def forget(self, index: int, activations: dict[str, np.ndarray]) -> None:
        """Drop from ``activations`` what no segment after ``index`` reads and nobody asked for."""
        for name in list(activations):
            if name not in self.kept and self.last_read.get(name, -1) <= index:
                del activations[name]
