"""Graph transforms, one module per pass (imported as ``onnxpress.passes``)."""
from onnxpress.passes.distill import Distill
from onnxpress.passes.lowrank import LowRank
from onnxpress.passes.prune import Prune
from onnxpress.passes.quantize import Quantize
from onnxpress.passes.simplify import Simplify

__all__ = ["Distill", "LowRank", "Prune", "Quantize", "Simplify"]
