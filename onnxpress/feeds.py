"""Feeds: the inputs a model takes, feeds generated from its signature, and feeds checked
against it (names, ranks, fixed dims, dtypes) with one clear line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx_ir as ir

from onnxpress.errors import DataError

Feed = Mapping[str, np.ndarray]

# Value used for symbolic dimensions other than the leading (batch) one when inputs are made up.
DEFAULT_SYMBOLIC_DIM = 8


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and shape (``None`` or a name for unknown dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join(str(d) if d is not None else "?" for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The graph inputs that need a feed (initializers listed as inputs are skipped)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value if d.value else None) for d in value.shape)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def random_feeds(model: ir.Model, count: int, *, seed: int = 0, batch: int = 1,
                 symbolic_dim: int = DEFAULT_SYMBOLIC_DIM) -> list[dict[str, np.ndarray]]:
    """Generate ``count`` feeds from the input signature.

    Floats are standard normal; integers are 0 or 1 (valid token ids, masks and indices for
    almost every model); booleans are random. The first symbolic dimension is ``batch``; any
    other symbolic dimension is ``symbolic_dim``.
    """
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in input_specs(model):
            shape = _concrete_shape(spec, batch, symbolic_dim)
            if np.issubdtype(spec.dtype, np.floating):
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif np.issubdtype(spec.dtype, np.integer):
                feed[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
            elif spec.dtype == np.bool_:
                feed[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
            else:
                raise DataError(f"input '{spec.name}' has dtype {spec.dtype}; inputs of that type "
                                "cannot be generated, give data")
        feeds.append(feed)
    return feeds


def _concrete_shape(spec: InputSpec, batch: int, symbolic_dim: int) -> tuple[int, ...]:
    if spec.shape is None:
        raise DataError(f"input '{spec.name}' has no declared shape; inputs cannot be generated, "
                        "give data")
    return tuple(d if isinstance(d, int) else (batch if i == 0 else symbolic_dim)
                 for i, d in enumerate(spec.shape))


def check_feed(model: ir.Model, feed: Feed, where: str = "data") -> None:
    """Raise ``DataError`` unless ``feed`` has every input with the right rank and dtype."""
    specs = {spec.name: spec for spec in input_specs(model)}
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise DataError(f"{where}: missing input(s) {missing}; the model takes {sorted(specs)}")
    unknown = sorted(set(feed) - set(specs))
    if unknown:
        raise DataError(f"{where}: unknown input(s) {unknown}; the model takes {sorted(specs)}")
    for name, spec in specs.items():
        array = np.asarray(feed[name])
        if array.dtype != spec.dtype:
            raise DataError(f"{where}: input '{name}' is {array.dtype}, the model wants {spec.dtype}")
        if spec.shape is not None:
            if array.ndim != len(spec.shape):
                raise DataError(f"{where}: input '{name}' has rank {array.ndim}, the model wants "
                                f"{len(spec.shape)} ({spec.describe()})")
            for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
                if isinstance(want, int) and got != want:
                    raise DataError(f"{where}: input '{name}' has size {got} on axis {axis}, the "
                                    f"model wants {want} ({spec.describe()})")
