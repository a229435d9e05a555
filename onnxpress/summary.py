"""``inspect``: what is in a model, at a glance."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import onnx_ir as ir

from onnxpress.modelinfo import format_bytes, node_count, op_histogram
from onnxpress.feeds import input_specs


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list
    bytes: int


@dataclass
class ModelSummary:
    """Opsets, inputs and outputs, op histogram, parameters and bytes by dtype, largest tensors."""

    producer: str
    ir_version: int
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    ops: dict[str, int]
    parameters: int
    bytes_by_dtype: dict[str, int]
    params_by_dtype: dict[str, int]
    external_tensors: int
    largest: list[TensorInfo]
    functions: int

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        def shape(info: TensorInfo) -> str:
            return "[" + ", ".join(str(d) for d in info.shape) + "]"

        lines = [f"producer: {self.producer or '-'}   ir_version: {self.ir_version}   opsets: "
                 + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in self.opsets.items())]
        lines.append("inputs:")
        lines += [f"  {i.name}: {i.dtype}{shape(i)}" for i in self.inputs]
        lines.append("outputs:")
        lines += [f"  {o.name}: {o.dtype}{shape(o)}" for o in self.outputs]
        lines.append(f"nodes: {self.nodes}" + (f" (+{self.functions} functions)" if self.functions else ""))
        lines += [f"  {op:<28}{count:>6}" for op, count in self.ops.items()]
        total = sum(self.bytes_by_dtype.values())
        lines.append(f"parameters: {self.parameters:,} ({format_bytes(total)})"
                     + (f", {self.external_tensors} in external data" if self.external_tensors else ""))
        lines += [f"  {dtype:<10}{self.params_by_dtype[dtype]:>14,} params {format_bytes(b):>10}"
                  for dtype, b in self.bytes_by_dtype.items()]
        if self.largest:
            lines.append("largest initializers:")
            lines += [f"  {t.name:<40} {t.dtype}{shape(t)} {format_bytes(t.bytes)}" for t in self.largest]
        return "\n".join(lines)


def _value_info(value: ir.Value) -> TensorInfo:
    dims = [] if value.shape is None else [d if isinstance(d, int) else (d.value or "?") for d in value.shape]
    return TensorInfo(value.name, str(value.dtype.name if value.dtype else "?").lower(), dims, 0)


def inspect(model, *, top: int = 10) -> ModelSummary:
    """Summarise a model (anything ``onnxpress.load`` accepts)."""
    from onnxpress.io import load

    model = load(model)
    feed_names = {spec.name for spec in input_specs(model)}
    tensors = []
    external = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None:
                continue
            external += isinstance(tensor, ir.ExternalTensor)
            tensors.append(TensorInfo(value.name, tensor.dtype.name.lower(), list(tensor.shape), tensor.nbytes))
    bytes_by_dtype: dict[str, int] = {}
    params_by_dtype: dict[str, int] = {}
    for info in tensors:
        bytes_by_dtype[info.dtype] = bytes_by_dtype.get(info.dtype, 0) + info.bytes
        count = 1
        for d in info.shape:
            count *= d
        params_by_dtype[info.dtype] = params_by_dtype.get(info.dtype, 0) + count
    largest = sorted(tensors, key=lambda t: -t.bytes)[:top]
    return ModelSummary(
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        ir_version=model.ir_version,
        opsets=dict(sorted(model.opset_imports.items())),
        inputs=[_value_info(v) for v in model.graph.inputs if v.name in feed_names],
        outputs=[_value_info(v) for v in model.graph.outputs],
        nodes=node_count(model),
        ops=op_histogram(model),
        parameters=sum(params_by_dtype.values()),
        bytes_by_dtype=dict(sorted(bytes_by_dtype.items(), key=lambda kv: -kv[1])),
        params_by_dtype=params_by_dtype,
        external_tensors=external,
        largest=largest,
        functions=len(model.functions),
    )
