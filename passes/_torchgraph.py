"""Run an onnx-ir graph on torch, node by node, with chosen initializers as trainable Parameters.

The executor ``distill`` trains through. Each node is evaluated by a small torch function that
follows the ONNX operator spec (defaults cited where they matter), so gradients flow from the
outputs back to the initializers, which keep their names: trained weights are written back into
the ``ir.Model`` by initializer name. It covers the ops that exported and compressed models
contain (dense and convolutional layers, normalisations, activations, attention's reshapes,
masks and shape arithmetic); any other op, a subgraph (If, Loop, Scan) or a custom domain raises
``PassError`` naming the node.

torch is imported at the top of this module: ``distill`` imports the module inside the function
that needs it, so ``onnxpress.passes`` imports without torch.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch

from onnxpress.errors import PassError
from onnxpress.passes._torchops import OPS, to_torch


class TorchGraph:
    """An ``ir.Graph`` as a torch computation.

    Args:
        graph: the graph (read, never changed; the tensors are copied to torch).
        trainable: names of float initializers to hold as ``torch.nn.Parameter``.

    Raises:
        PassError: a node the executor cannot evaluate (its name and op type in the message).
    """

    def __init__(self, graph: ir.Graph, trainable: Iterable[str] = (), *, what: str = "distill") -> None:
        self.graph = graph
        self.opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 18))
        self.nodes = list(graph)
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx"):
                raise PassError(f"{what}: node '{node.name}' ({node.domain}::{node.op_type}) is in a custom "
                                "domain the torch executor does not run")
            if node.op_type not in OPS:
                raise PassError(f"{what}: node '{node.name}' is a {node.op_type}, which the torch executor "
                                "does not run (it covers the ops of dense, convolutional and transformer layers)")
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                   for attr in node.attributes.values()):
                raise PassError(f"{what}: node '{node.name}' ({node.op_type}) holds a subgraph, which the torch "
                                "executor does not run")
        self.values: dict[str, ir.Value] = {}
        for value in graph.inputs:
            self.values[value.name] = value
        for node in self.nodes:
            for value in node.outputs:
                if value.name:
                    self.values[value.name] = value
        wanted = set(trainable)
        self.parameters: dict[str, torch.nn.Parameter] = {}
        self.constants: dict[ir.Value, torch.Tensor] = {}
        for name, value in graph.initializers.items():
            self.values.setdefault(name, value)
            if value.const_value is None:
                continue
            tensor = to_torch(value.const_value.numpy())
            if name in wanted:
                parameter = torch.nn.Parameter(tensor)
                self.parameters[name] = parameter
                self.constants[value] = parameter
            else:
                self.constants[value] = tensor
        self._plans: dict[tuple, tuple[list[ir.Node], dict[ir.Value, int]]] = {}

    def plan(self, outputs: tuple[str, ...], given: frozenset[str]) -> tuple[list[ir.Node], dict[ir.Value, int]]:
        """The nodes needed for ``outputs`` when the values in ``given`` are supplied, in graph
        order, and how many of them read each value (to drop values after their last use)."""
        key = (outputs, given)
        if key not in self._plans:
            needed: set[ir.Node] = set()
            stack = [self.values[name] for name in outputs]
            seen: set[ir.Value] = set()
            while stack:
                value = stack.pop()
                if value in seen or value.name in given or value in self.constants:
                    continue
                seen.add(value)
                producer = value.producer()
                if producer is None or producer in needed:
                    continue
                needed.add(producer)
                stack.extend(v for v in producer.inputs if v is not None)
            ordered = [node for node in self.nodes if node in needed]
            uses: dict[ir.Value, int] = {}
            for node in ordered:
                for value in node.inputs:
                    if value is not None:
                        uses[value] = uses.get(value, 0) + 1
            self._plans[key] = (ordered, uses)
        return self._plans[key]

    def run(self, feeds: Mapping[str, torch.Tensor | np.ndarray], outputs: Sequence[str] | None = None,
            overrides: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The tensors named ``outputs`` (default: the graph outputs) on ``feeds``.

        ``overrides`` supplies intermediate tensors by name: the nodes that produce them, and
        those only they need, are not run (a block fed the teacher's features).
        """
        names = tuple(outputs if outputs is not None else [v.name for v in self.graph.outputs])
        overrides = dict(overrides or {})
        nodes, uses = self.plan(names, frozenset(overrides))
        env: dict[ir.Value, torch.Tensor] = dict(self.constants)
        for value in self.graph.inputs:
            if value.name in feeds:
                data = feeds[value.name]
                env[value] = data if isinstance(data, torch.Tensor) else to_torch(np.asarray(data))
        for name, tensor in overrides.items():
            if name in self.values:
                env[self.values[name]] = tensor
        keep = {self.values[name] for name in names}
        remaining = dict(uses)
        for node in nodes:
            args = []
            for value in node.inputs:
                if value is None:
                    args.append(None)
                    continue
                if value not in env:
                    raise PassError(f"torch executor: node '{node.name}' reads '{value.name}', which has no value "
                                    "(a graph input missing from the feed?)")
                args.append(env[value])
            results = OPS[node.op_type](node, args, self)
            for value, result in zip(node.outputs, results):
                if value is not None and result is not None:
                    env[value] = result
            for value in node.inputs:  # drop what no later node reads
                if value is None:
                    continue
                remaining[value] -= 1
                if remaining[value] == 0 and value not in keep and value not in self.constants:
                    env.pop(value, None)
        return {name: env[self.values[name]] for name in names}
