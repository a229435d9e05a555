"""Layer-wise comparison: every intermediate tensor two models share, by name, in graph order.

Both models are run with their intermediate float tensors exposed as outputs, one sample at a
time (memory stays bounded by one sample's activations). The comparison names the first layer
whose output falls below the cosine tolerance, or else where the error grows the most: that is
where a pass went wrong.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import modelinfo, runtime
from onnxpress.metrics import error_stats
from onnxpress.progress import Report, track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerError:
    """Error of one shared intermediate tensor (mean over samples)."""

    tensor: str
    op_type: str
    node: str
    cosine: float
    rel_max: float
    max_abs: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerwiseResult:
    layers: list[LayerError]
    first_jump: LayerError | None
    reason: str
    shared: int
    reference_only: int

    def to_dict(self) -> dict:
        return {"layers": [layer.to_dict() for layer in self.layers],
                "first_jump": self.first_jump.to_dict() if self.first_jump else None,
                "reason": self.reason, "shared": self.shared, "reference_only": self.reference_only}


def compare_layers(reference: ir.Model, candidate: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], *,
                   cosine_tolerance: float = 0.99, max_samples: int = 4, runner: Any = None,
                   progress: Report | None = None) -> LayerwiseResult:
    """Compare every intermediate tensor ``reference`` and ``candidate`` share by name;
    ``progress`` is told how many samples are compared (a ``layer-wise`` step)."""
    ref_model, ref_order = modelinfo.expose_intermediates(reference)
    cand_model, cand_order = modelinfo.expose_intermediates(candidate)
    alias = _dequantized_aliases(cand_model)
    cand_names = {name for name, _, _ in cand_order}
    shared = [(name, op, node) for name, op, node in ref_order if name in cand_names]
    samples = list(feeds)[:max_samples]
    if not shared or not samples:
        return LayerwiseResult([], None, "the models share no intermediate tensor names" if not shared
                               else "no samples", len(shared), len(ref_order) - len(shared))
    per_layer: dict[str, list] = {name: [] for name, _, _ in shared}
    # Basic optimisation only: fusions would swallow the tensors being compared.
    runner = runner if runner is not None else runtime.Runner("cpu")
    with runner.session(ref_model, optimization="basic") as ref_session, \
            runner.session(cand_model, optimization="basic") as cand_session:
        for feed in track(samples, progress, "layer-wise", unit="samples"):
            ref_out = ref_session.run(feed)
            cand_out = cand_session.run(feed)
            for name, _, _ in shared:
                seen = alias.get(name, name)
                if name in ref_out and seen in cand_out and ref_out[name].shape == cand_out[seen].shape:
                    per_layer[name].append(error_stats([ref_out[name]], [cand_out[seen]]))
    layers = []
    for name, op, node in shared:
        stats = per_layer[name]
        if stats:
            layers.append(LayerError(name, op, node, float(np.mean([s.cosine for s in stats])),
                                     float(np.mean([s.rel_max for s in stats])),
                                     float(np.max([s.max_abs for s in stats]))))
    first, reason = _first_jump(layers, cosine_tolerance)
    return LayerwiseResult(layers, first, reason, len(shared), len(ref_order) - len(shared))


def _dequantized_aliases(model: ir.Model) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output downstream nodes really read, in QDQ models.

    A quantizer may fold an activation (Relu, Clip) into a QuantizeLinear's range: the tensor
    keeping the activation's name then holds the values before it, and only the
    quantize-dequantize pair applies it. Comparing what the next layer sees is the fair test.
    """
    aliases = {}
    for node in model.graph:
        if node.op_type != "QuantizeLinear" or node.inputs[0] is None:
            continue
        source = node.inputs[0]
        consumers = [use.node for use in node.outputs[0].uses()]
        dequantize = [c for c in consumers if c.op_type == "DequantizeLinear"]
        if dequantize and len(source.uses()) == 1 and dequantize[0].outputs[0].name:
            aliases[source.name] = dequantize[0].outputs[0].name
    return aliases


def _first_jump(layers: list[LayerError], cosine_tolerance: float) -> tuple[LayerError | None, str]:
    for layer in layers:
        if layer.cosine < cosine_tolerance:
            return layer, f"first tensor with cosine below {cosine_tolerance:g}"
    worst, worst_growth, previous = None, 0.0, 0.0
    for layer in layers:
        error = 1.0 - layer.cosine
        growth = error - previous
        if growth > worst_growth:
            worst, worst_growth = layer, growth
        previous = max(previous, error)
    if worst is None or worst_growth <= 1e-9:
        return None, "no layer's error stands out"
    return worst, "largest increase of (1 - cosine) over the layers before it"
