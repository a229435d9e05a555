"""Errors onnxpress raises.

Every error a user can cause (a missing file, a model that is not ONNX, an unknown pass or
option, bad data) is an :class:`OnnxpressError`: the CLI prints its message as one line and
exits with code 2.
"""
from __future__ import annotations

from typing import Any


class OnnxpressError(Exception):
    """An error the user can fix; its message is one line naming the culprit.

    Names quoted in messages come from untrusted files: control characters in them (a newline
    in a tensor name) are escaped, so the message stays one line.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__("".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                                 for c in str(message)))


class ModelError(OnnxpressError):
    """The model file or object cannot be admitted (unreadable, not ONNX, unsafe)."""


class RecipeError(OnnxpressError):
    """A recipe is unreadable or names an unknown pass, option or value."""


class DataError(OnnxpressError):
    """Calibration or evaluation data does not fit the model."""


class ExportError(OnnxpressError):
    """A torch module could not be exported, or its export does not match torch."""


class PipelineError(OnnxpressError):
    """A pass broke the model (checker, session, or a lossless pass changed outputs)."""


class AccuracyFloorError(PipelineError):
    """A lossy pass left the outputs below the pipeline's accuracy floor, even after its remedy.

    ``result`` is the pipeline's result up to and including that pass (its best attempt), for
    callers that keep failed models on request (``onnxpress run --keep-failed``).
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class ProviderError(OnnxpressError):
    """An execution provider a target asks for is not available."""


def _pass_error() -> type:
    import onnx_ir as ir

    class PassError(ir.passes.PassError, OnnxpressError):
        """A pass cannot do its job on a node; the message names the pass and the node."""

    PassError.__module__, PassError.__qualname__ = __name__, "PassError"
    return PassError


def __getattr__(name: str) -> Any:
    # PassError derives from onnx_ir's, and importing onnx_ir takes most of a second: it is
    # made on first use, so that the CLI can start its sandbox worker before paying for it.
    if name == "PassError":
        globals()["PassError"] = value = _pass_error()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
