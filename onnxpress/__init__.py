"""onnxpress: make an ONNX model smaller and faster, and prove it still works on its target.

```python
import onnxpress as ox
model = ox.load("model.onnx")
res = ox.Pipeline([ox.passes.Simplify()]).run(model)
ox.save(res.model, "out.onnx")
rep = ox.validate(res.model, reference=model, target="cpu")
```

Names are imported when first used, so a process that needs one piece (the sandbox's worker,
a golden-file check) does not load every other.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "DataError": "onnxpress.errors", "ExportError": "onnxpress.errors", "ModelError": "onnxpress.errors",
    "OnnxpressError": "onnxpress.errors", "PassError": "onnxpress.errors", "PipelineError": "onnxpress.errors",
    "ProviderError": "onnxpress.errors", "RecipeError": "onnxpress.errors",
    "Pass": "onnxpress.context", "PassContext": "onnxpress.context", "PassResult": "onnxpress.context",
    "PassRecord": "onnxpress.pipeline", "Pipeline": "onnxpress.pipeline", "PipelineResult": "onnxpress.pipeline",
    "Runner": "onnxpress.runtime", "ValidationReport": "onnxpress.report",
    "inspect": "onnxpress.summary", "load": "onnxpress.io", "save": "onnxpress.io",
    "export": "onnxpress.export", "export_hf": "onnxpress.export_hf", "validate": "onnxpress.validate",
    "optimize": "onnxpress.optimize", "OptimizeResult": "onnxpress.optimize", "Cache": "onnxpress.cache",
    "replay": "onnxpress.lockfile", "sweep": "onnxpress.sweep",
}
_MODULES = ("calibration", "passes", "targets", "statistics", "runtime", "sandbox")

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"onnxpress.{name}")
    else:
        raise AttributeError(f"module 'onnxpress' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """``ox.export`` and ``ox.validate`` are functions named like their modules. Importing a
    submodule binds it on its package; here that binding is skipped for those two names, so
    they keep meaning the functions (``from onnxpress.validate import ...`` is unaffected)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("export", "export_hf", "validate", "optimize", "sweep") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from onnxpress import calibration, passes, runtime, sandbox, statistics, targets
    from onnxpress.context import Pass, PassContext, PassResult
    from onnxpress.errors import (DataError, ExportError, ModelError, OnnxpressError, PassError,
                                  PipelineError, ProviderError, RecipeError)
    from onnxpress.export import export
    from onnxpress.export_hf import export_hf
    from onnxpress.cache import Cache
    from onnxpress.io import load, save
    from onnxpress.lockfile import replay
    from onnxpress.optimize import OptimizeResult, optimize
    from onnxpress.pipeline import PassRecord, Pipeline, PipelineResult
    from onnxpress.report import ValidationReport
    from onnxpress.runtime import Runner
    from onnxpress.summary import inspect
    from onnxpress.sweep import sweep
    from onnxpress.validate import validate
