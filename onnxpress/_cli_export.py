"""``onnxpress export``: a torch module from ``MODULE:FACTORY`` or a Hugging Face folder to ONNX."""
from __future__ import annotations

import argparse
from pathlib import Path

from onnxpress.errors import OnnxpressError


def export_input(text: str) -> tuple[str, tuple[int, ...], str]:
    """argparse type of ``--input NAME=2x3:float32``: a bad one is a usage error (exit 2)."""
    from onnxpress.export import parse_input_spec

    try:
        return parse_input_spec(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_export(args) -> int:
    """Export, check against torch, save atomically and print what was done."""
    from onnxpress.errors import ModelError
    from onnxpress.io import save

    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise ModelError(f"{output}: give a file name in an existing folder for the model")
    if (args.hf is None) == (args.module is None):
        raise OnnxpressError("export: give MODULE:FACTORY or --hf FOLDER (one of them)")
    if args.hf is not None:
        if args.input or args.example_inputs:
            raise OnnxpressError("export: --input and --example-inputs are for MODULE:FACTORY; --hf makes its "
                                 "own inputs")
        model = _export_hf(args)
    else:
        if args.task or args.with_past:
            raise OnnxpressError("export: --task and --with-past are for --hf FOLDER")
        model = _export_module(args)
    save(model, output)
    _print_export(model, output, args.module)
    return 0


def _export_hf(args):
    from onnxpress.export_hf import export_hf

    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # export_hf says so in one line
        hf_logging = None
    if hf_logging is not None:
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise on a one-shot command
    return export_hf(args.hf, task=args.task, with_past=args.with_past, opset=args.opset, dynamic=args.dynamic,
                     exporter=args.exporter)


def _export_module(args):
    import inspect

    import torch

    from onnxpress.errors import DataError
    from onnxpress.export import example_tensor, export, load_factory

    module, example = load_factory(args.module)
    names = None
    if args.input:
        generator = torch.Generator().manual_seed(0)
        names = [name for name, _, _ in args.input]
        if len(set(names)) != len(names):
            raise DataError(f"--input: '{next(n for n in names if names.count(n) > 1)}' is given twice")
        example = tuple(example_tensor(shape, dtype, generator) for _, shape, dtype in args.input)
    elif args.example_inputs:
        names, example = _example_file(args.example_inputs)
    elif example is None:
        raise OnnxpressError(f"export: {args.module}() returned no example inputs; give --input NAME=SHAPE:DTYPE "
                             "or --example-inputs FILE.npz")
    else:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = params[:len(example)] if len(params) >= len(example) else None
    return export(module, example, dynamic_batch=args.dynamic, opset=args.opset, input_names=names,
                  exporter=args.exporter)


def _example_file(path: str) -> tuple[list[str], tuple]:
    """The arrays of an ``.npz`` file as tensors, named and ordered as stored."""
    import zipfile

    import numpy as np
    import torch

    from onnxpress.errors import DataError

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz file of arrays named by input")
        with data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read the example inputs: {err}") from err
    if not arrays:
        raise DataError(f"{path}: holds no arrays")
    return list(arrays), tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays.values())


def _print_export(model, output: Path, source: str | None) -> None:
    from onnxpress.export import export_info
    from onnxpress.export_hf import export_hf_info

    info, hf = export_info(model) or {}, export_hf_info(model)
    if source is not None:
        print(f"model: {source}()")
    if hf is not None:
        print(f"model: {hf['architecture']} from {hf['source']}, task {hf['task']}"
              + (" (encoder only)" if hf["encoder_only"] else ""))
        if hf["cache"]:
            print(f"cache: {hf['cache']}")
    print(f"exporter: {info.get('exporter')}" + (f" (after {info['fallback_reason']})" if info.get("fallback_reason")
                                                  else ""))
    batches = ", ".join(str(b) for b in info.get("batch_sizes_checked", []))
    print(f"checked against torch on batch sizes {batches}: max |onnx - torch| = {info.get('max_abs_error', 0):.3g}")
    for label, values in (("inputs", model.graph.inputs), ("outputs", model.graph.outputs)):
        print(f"{label}:")
        for value in values:
            dims = "?" if value.shape is None else " x ".join(str(d) for d in value.shape)
            dtype = value.dtype.numpy().name if value.dtype is not None else "?"
            print(f"  {value.name}: {dtype}[{dims}]")
    print(f"saved {output}")
