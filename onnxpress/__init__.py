"""onnxpress: make an ONNX model smaller and faster, and prove it still works on its target.

```python
import onnxpress as ox
model = ox.load("model.onnx")
res = ox.Pipeline([ox.passes.Simplify()]).run(model)
ox.save(res.model, "out.onnx")
```
"""
from __future__ import annotations

from onnxpress import calibration
from onnxpress.errors import (DataError, ExportError, ModelError, OnnxpressError, PassError,
                              PipelineError, ProviderError, RecipeError)
from onnxpress.export import export
from onnxpress.io import load, save
from onnxpress.pipeline import PassRecord, Pipeline, PipelineResult
from onnxpress.summary import inspect
from onnxpress import passes  # noqa: E402  (after the core: passes import it)

__version__ = "0.1.0"

__all__ = [
    "DataError", "ExportError", "ModelError", "OnnxpressError", "PassError", "PassRecord",
    "Pipeline", "PipelineError", "PipelineResult", "ProviderError", "RecipeError", "calibration",
    "export", "inspect", "load", "passes", "save",
]
