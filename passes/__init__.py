"""Graph transforms, one module per pass (imported as ``onnxpress.passes``)."""
from onnxpress.passes.distill import Distill
from onnxpress.passes.fp16 import FP16
from onnxpress.passes.lowrank import LowRank
from onnxpress.passes.prune import Prune
from onnxpress.passes.quantize import Quantize
from onnxpress.passes.simplify import Simplify
from onnxpress.passes.weightonly import WeightOnly

__all__ = ["Distill", "FP16", "LowRank", "Prune", "Quantize", "Simplify", "WeightOnly"]
