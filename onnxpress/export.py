"""``export``: a torch module to an ``onnx_ir.Model``, checked against torch on ONNX Runtime."""
from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxpress.errors import ExportError
from onnxpress.metrics import error_stats

logger = logging.getLogger(__name__)

EXPORT_METADATA_KEY = "onnxpress.export"


def export(module: Any, example_args: Any, *, dynamic_batch: bool = True, opset: int = 18,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           dynamic_dims: Mapping[str, Mapping[int, str]] | None = None,
           rtol: float = 1e-3, atol: float = 1e-4, exporter: str = "auto",
           check_args: Sequence[Any] = ()) -> ir.Model:
    """Export ``module`` to ONNX and check the export against torch.

    The dynamo-based exporter is tried first; when it fails the TorchScript exporter is used
    (``exporter`` forces one: ``dynamo`` or ``torchscript``). The ONNX Runtime outputs are
    compared with torch's on the example inputs, on each of ``check_args`` and, with
    ``dynamic_batch``, on a second batch size. Which exporter ran, and the largest error
    seen, are logged and stored in the model's ``metadata_props["onnxpress.export"]`` (JSON).

    Args:
        module: a ``torch.nn.Module``.
        example_args: a tensor or a tuple of tensors (the module's positional arguments).
        dynamic_batch: make the first axis of every input and output dynamic.
        opset: the default-domain opset version to target.
        input_names, output_names: names for the graph's inputs and outputs.
        dynamic_dims: more dynamic axes by input name, e.g. ``{"input_ids": {1: "sequence"}}``
            (inputs sharing a dimension name share the dimension).
        rtol, atol: the export fails when ``max|onnx - torch| > atol + rtol * max|torch|``.
        exporter: ``auto``, ``dynamo`` or ``torchscript``.
        check_args: more inputs, each like ``example_args`` (other sizes along the dynamic
            axes), on which ONNX Runtime must match torch too.

    Raises:
        ExportError: neither exporter could export the module, or outputs differ from torch.
    """
    import torch

    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"export: exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    args = tuple(example_args) if isinstance(example_args, (tuple, list)) else (example_args,)
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise ExportError("export: example_args must be tensors (a tensor or a tuple of tensors)")
    module = module.eval()
    names = list(input_names) if input_names else [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    if len(names) != len(args):
        raise ExportError(f"export: {len(names)} input names for {len(args)} example inputs")
    extra = [tuple(c) if isinstance(c, (tuple, list)) else (c,) for c in check_args]
    if any(len(c) != len(args) or not all(isinstance(a, torch.Tensor) for a in c) for c in extra):
        raise ExportError(f"export: each of check_args must be {len(args)} tensor(s), like example_args")
    with torch.no_grad():
        reference = _as_list(module(*args))
    out_names = list(output_names) if output_names else (
        ["output"] if len(reference) == 1 else [f"output_{i}" for i in range(len(reference))])

    failures = []
    model = None
    used = None
    if exporter in ("auto", "dynamo"):
        try:
            model = _dynamo(module, args, names, out_names, _axes(names, args, dynamic_batch, dynamic_dims), opset)
            used = "dynamo"
        except Exception as err:  # the exporter raises many types; any failure means "fall back"
            failures.append(f"dynamo exporter: {type(err).__name__}: {_first_line(err)}")
            logger.warning("export: dynamo exporter failed (%s); trying the TorchScript exporter",
                           _first_line(err))
    if model is None and exporter in ("auto", "torchscript"):
        try:
            model = _torchscript(module, args, names, out_names, _axes(names, args, dynamic_batch, dynamic_dims),
                                 opset)
            used = "torchscript"
        except Exception as err:  # as above: report both exporters' failures together
            failures.append(f"TorchScript exporter: {type(err).__name__}: {_first_line(err)}")
    if model is None:
        raise ExportError("export failed: " + "; ".join(failures))

    checks = [(args, reference)]
    for inputs in extra:
        with torch.no_grad():
            checks.append((inputs, _as_list(module(*inputs))))
    if dynamic_batch:
        batch = args[0].shape[0] if args[0].dim() else 1
        second = tuple(_resize_batch(a, batch + 2) for a in args)
        with torch.no_grad():
            checks.append((second, _as_list(module(*second))))
    worst = 0.0
    checked_batches = []
    from onnxpress.runtime import Runner, ort_errors

    try:
        session = Runner("cpu").session(model)
    except ort_errors() as err:
        raise ExportError(f"export ({used}): ONNX Runtime cannot load the exported model: {_first_line(err)}") from err
    with session:
        for inputs, expected in checks:
            feed = {n: a.detach().cpu().numpy() for n, a in zip(session.input_names, inputs)}
            outputs = session.run(feed)
            got = [outputs[n] for n in session.output_names]
            if len(got) != len(expected):
                raise ExportError(f"export ({used}): ONNX model has {len(got)} outputs, torch {len(expected)}")
            for name, onnx_out, torch_out in zip(session.output_names, got, expected):
                if onnx_out.shape != tuple(torch_out.shape):
                    raise ExportError(f"export ({used}): output '{name}' has shape {onnx_out.shape} on "
                                      f"ONNX Runtime but {tuple(torch_out.shape)} in torch")
                stats = error_stats([torch_out], [onnx_out])
                worst = max(worst, stats.max_abs)
                if not stats.within(atol=atol, rtol=rtol):
                    raise ExportError(
                        f"export ({used}): output '{name}' differs from torch by {stats.max_abs:.3g} "
                        f"(batch {inputs[0].shape[0] if inputs[0].dim() else 1}; tolerance "
                        f"{atol + rtol * stats.ref_max_abs:.3g})")
            checked_batches.append(int(inputs[0].shape[0]) if inputs[0].dim() else 1)
    info = {"exporter": used, "max_abs_error": worst, "batch_sizes_checked": checked_batches,
            "fallback_reason": failures[0] if failures else None}
    model.metadata_props[EXPORT_METADATA_KEY] = json.dumps(info)
    logger.info("export: %s exporter, max |onnx - torch| = %.3g on batch sizes %s", used, worst, checked_batches)
    return model


def export_info(model: ir.Model) -> dict | None:
    """What ``export`` recorded about how ``model`` was made (None for other models)."""
    text = model.metadata_props.get(EXPORT_METADATA_KEY)
    return json.loads(text) if text else None


def _as_list(outputs: Any) -> list[np.ndarray]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().numpy()]
    if isinstance(outputs, (tuple, list)):
        return [o for item in outputs for o in _as_list(item)]
    if isinstance(outputs, dict):
        return [o for item in outputs.values() for o in _as_list(item)]
    raise ExportError(f"export: the module returned {type(outputs).__name__}; tensors, tuples, lists "
                      "or dicts of tensors are supported (a Hugging Face model: use export_hf)")


def _resize_batch(tensor: Any, size: int) -> Any:
    import torch

    if tensor.dim() == 0:
        return tensor
    repeats = -(-size // tensor.shape[0])
    return torch.cat([tensor] * repeats)[:size].clone()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _axes(names, args, dynamic_batch, dynamic_dims) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name, arg in zip(names, args):
        if dynamic_batch and arg.dim():
            axes.setdefault(name, {})[0] = "batch"
        for axis, dim_name in (dynamic_dims or {}).get(name, {}).items():
            axes.setdefault(name, {})[int(axis)] = dim_name
    unknown = set(dynamic_dims or {}) - set(names)
    if unknown:
        raise ExportError(f"export: dynamic_dims names unknown input(s) {sorted(unknown)}; inputs are {names}")
    return axes


def _dynamo(module, args, names, out_names, axes, opset) -> ir.Model:
    import torch

    export_args = args
    dynamic_shapes = None
    if axes:
        dims = {dim: torch.export.Dim(dim) for spec in axes.values() for dim in spec.values()}
        dynamic_shapes = tuple({axis: dims[dim] for axis, dim in axes.get(n, {}).items()} for n in names)
        # torch.export specialises a size-1 dimension to the constant 1; export on size 2 there.
        if any(arg.shape[axis] == 1 for n, arg in zip(names, args) for axis in axes.get(n, {})):
            export_args = tuple(_resize_axes(arg, axes.get(n, {})) for n, arg in zip(names, args))
    # The exporter warns once per torchvision operator it cannot register when torchvision is
    # absent (always, beside the CPU torch): noise for every model that does not use them.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, export_args, dynamo=True, opset_version=opset,
                                        input_names=names, output_names=out_names,
                                        dynamic_shapes=dynamic_shapes, verbose=False, optimize=True)
    finally:
        registration.setLevel(level)
    return program.model


def _resize_axes(tensor: Any, axes: Mapping[int, str]) -> Any:
    for axis in axes:
        if tensor.shape[axis] == 1:
            tensor = tensor.repeat_interleave(2, dim=axis)
    return tensor


def _torchscript(module, args, names, out_names, axes, opset) -> ir.Model:
    import torch

    from onnxpress.io import load

    axes = dict(axes) or None
    if axes and any(0 in spec for spec in axes.values()):
        axes.update({n: {0: "batch"} for n in out_names})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=names,
                          output_names=out_names, dynamic_axes=axes)
    return load(buffer.getvalue())


# ------------------------------------------------------------------ modules named on the command line

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def parse_input_spec(text: str) -> tuple[str, tuple[int, ...], str]:
    """``"NAME=1x3x32x32:float32"`` as ``("NAME", (1, 3, 32, 32), "float32")``; the dtype
    defaults to float32.

    Raises:
        ValueError: the text is not ``NAME=SHAPE[:DTYPE]``, a dim is not a positive integer, or
            the dtype is not one of ``DTYPES``.
    """
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"'{text}': expected NAME=SHAPE[:DTYPE], e.g. images=1x3x32x32:float32")
    dims, _, dtype = rest.partition(":")
    dtype = dtype.strip() or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"'{text}': unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    parts = [p.strip() for p in dims.replace(",", "x").split("x")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}': the shape must be positive integers separated by 'x', e.g. 1x3x32x32")
    return name.strip(), tuple(int(p) for p in parts), dtype


def example_tensor(shape: Sequence[int], dtype: str, generator: Any = None) -> Any:
    """A tensor to export on: standard normal floats; integers and booleans 0 or 1 (valid as
    masks and as indices into any table)."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if torch_dtype.is_floating_point:
        return torch.randn(tuple(shape), generator=generator).to(torch_dtype)
    return torch.randint(0, 2, tuple(shape), generator=generator).to(torch_dtype)


def load_factory(reference: str) -> tuple[Any, tuple | None]:
    """Import ``package.module:factory`` or ``path/to/file.py:factory`` and call the factory.

    The factory takes no arguments and returns a ``torch.nn.Module`` or a ``(module,
    example_args)`` tuple. A dotted module is imported with the working folder on the path, as
    ``python -m`` does.

    Returns:
        The module and its example arguments as a tuple (None when the factory gave none).

    Raises:
        ExportError: the reference is malformed, the module cannot be imported, it has no such
            callable, or the factory fails or returns something else.
    """
    import torch

    where, sep, attribute = reference.rpartition(":")
    if not sep or not where or not attribute.isidentifier():
        raise ExportError(f"export: '{reference}' is not MODULE:FACTORY (e.g. mypkg.models:build or "
                          "path/to/model.py:build)")
    module = _import(where)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ExportError(f"export: {where} has no factory '{attribute}'")
    try:
        made = factory()
    except Exception as err:  # the user's code may raise anything: report it as one line
        raise ExportError(f"export: {reference}() failed: {type(err).__name__}: {_first_line(err)}") from err
    example = None
    if isinstance(made, tuple) and len(made) == 2:
        made, example = made
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(made, torch.nn.Module):
        raise ExportError(f"export: {reference}() returned {type(made).__name__}; expected a torch.nn.Module "
                          "or a (module, example_args) tuple")
    return made, example


def _import(where: str) -> Any:
    """The module at ``where``: a ``.py`` path, or a dotted name importable from the working folder.

    Raises:
        ExportError: the file is missing, or importing it fails.
    """
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise ExportError(f"export: {where}: no such file")
        name = f"onnxpress_factory_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ExportError(f"export: {where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's code may raise anything: report it as one line
            sys.modules.pop(name, None)
            raise ExportError(f"export: cannot import {where}: {type(err).__name__}: {_first_line(err)}") from err
        return module
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except Exception as err:  # as above; ModuleNotFoundError is the common case
        raise ExportError(f"export: cannot import {where}: {type(err).__name__}: {_first_line(err)}") from err
    finally:
        if added:
            sys.path.remove(os.getcwd())
