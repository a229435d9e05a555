"""The edge deployment bundle: the model in ONNX Runtime's ORT format and the operator list
a reduced-size ONNX Runtime build needs.

ONNX Runtime's mobile and minimal builds load only ORT-format models and can be compiled with
just the kernels a model uses (``--include_ops_by_config required_operators.config``). The
bundle holds ``model.ort`` (saved by ONNX Runtime itself after graph optimisation at the
target's level), ``required_operators.config`` listing the operators of that optimised graph
per domain and opset, and ``bundle.json`` describing both. The ORT-format model is loaded back
and its outputs compared with the model's before the bundle is declared good.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress import runtime
from onnxpress.errors import OnnxpressError
from onnxpress.metrics import compare

BUNDLE_FILES = ("model.ort", "required_operators.config", "bundle.json")


@dataclass
class EdgeBundle:
    folder: Path
    model_bytes: int
    operators: dict[str, list[str]]  # "domain;opset" -> sorted op types
    min_cosine: float | None  # the worst ErrorStats.score (1 - relative error for one-value outputs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data


def _operators(model: ir.Model) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {}
    for node in model.graph.all_nodes():
        domain = node.domain or "ai.onnx"
        opset = model.opset_imports.get(node.domain, model.opset_imports.get(domain))
        found.setdefault(f"{domain};{opset}", set()).add(node.op_type)
    return {key: sorted(ops) for key, ops in sorted(found.items())}


def write_edge_bundle(model: ir.Model, folder: str | os.PathLike, *, runner: runtime.Runner | None = None,
                      optimization: str | None = None,
                      feeds: Sequence[Mapping[str, np.ndarray]] = ()) -> EdgeBundle:
    """Write ``model.ort``, ``required_operators.config`` and ``bundle.json`` into ``folder``.

    ``runner`` (default: the ``edge`` target's) gives the optimisation level unless
    ``optimization`` names one.
    """
    from onnxpress.io import load

    runner = runner or runtime.Runner("edge")
    optimization = optimization or runner.settings.optimization
    destination = Path(folder)
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=destination))
    try:
        for target, fmt in ((staging / "model.ort", "ORT"), (staging / "optimized.onnx", "ONNX")):
            try:
                runner.save_optimized(model, target, save_format=fmt, optimization=optimization)
            except runtime.ort_errors() as err:
                raise OnnxpressError(f"edge bundle: ONNX Runtime cannot convert the model: "
                                     f"{str(err).strip().splitlines()[0]}") from err
        operators = _operators(load(staging / "optimized.onnx"))
        lines = ["# Operators the model needs: build ONNX Runtime with",
                 "#   --minimal_build --include_ops_by_config required_operators.config"]
        lines += [f"{key};{','.join(ops)}" for key, ops in operators.items()]
        (staging / "required_operators.config").write_text("\n".join(lines) + "\n")
        min_cosine = None
        if feeds:
            got = runner.run_file(staging / "model.ort", feeds)
            expected = runner.outputs(model, feeds)
            min_cosine = min(s.score for s in compare(expected, got).values())
        bundle = EdgeBundle(destination.resolve(), (staging / "model.ort").stat().st_size, operators, min_cosine)
        (staging / "bundle.json").write_text(json.dumps(
            {**bundle.to_dict(), "optimization": optimization, "files": list(BUNDLE_FILES)}, indent=2))
        for name in BUNDLE_FILES:
            os.replace(staging / name, destination / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle
