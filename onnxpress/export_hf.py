"""``export_hf``: a Hugging Face ``transformers`` model to an ``onnx_ir.Model``, checked against torch.

The model is wrapped in a module with plain tensor inputs and outputs (no ``ModelOutput``, no
cache object) and exported with :func:`onnxpress.export.export`, which checks ONNX Runtime
against torch. Only a local folder or a model in memory is accepted: nothing is downloaded.

Why not Optimum: Hugging Face's exporter lives in ``optimum-onnx`` since optimum 2.0
(``optimum[exporters]`` 2.3.0 no longer ships an ONNX exporter), and every ``optimum-onnx``
release caps transformers below our pin. ``pip install --dry-run -c constraints.txt optimum-onnx
"transformers==5.24.0"`` says: "optimum-onnx 0.1.0 depends on transformers<4.58.0 and >=4.36"
(0.0.1-0.0.3: "<4.56.0"), "ResolutionImpossible"; without the pin it would downgrade
transformers 5.24.0 to 4.57.6, tokenizers 0.23.3 to 0.22.2 and huggingface_hub 2.4.0 to 0.36.2.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import onnx_ir as ir

from onnxpress.errors import ExportError

logger = logging.getLogger(__name__)

EXPORT_HF_METADATA_KEY = "onnxpress.export_hf"

TASKS = ("feature-extraction", "sequence-classification", "token-classification", "image-classification",
         "causal-lm", "seq2seq")

# Architecture name endings -> task, most specific first ("GPT2LMHeadModel" ends in "Model" too).
_ARCHITECTURE_TASKS = (("ForSequenceClassification", "sequence-classification"),
                       ("ForTokenClassification", "token-classification"),
                       ("ForImageClassification", "image-classification"),
                       ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"),
                       ("ForConditionalGeneration", "seq2seq"), ("ForSeq2SeqLM", "seq2seq"),
                       ("Model", "feature-extraction"))

_AUTO_CLASSES = {"feature-extraction": "AutoModel",
                 "sequence-classification": "AutoModelForSequenceClassification",
                 "token-classification": "AutoModelForTokenClassification",
                 "image-classification": "AutoModelForImageClassification",
                 "causal-lm": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}

NO_CACHE = "none: use_cache=False, each call runs the whole sequence"
WITH_PAST = "explicit: past_key_values.{i}.key/value inputs, present.{i}.key/value outputs"


@dataclass
class _Plan:
    """What the wrapper takes and returns, decided from the model before export."""

    task: str
    architecture: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)
    cache_arg: str | None = None  # the forward's cache keyword: "cache" (transformers 5) or "past_key_values"
    takes_use_cache: bool = False  # the forward has a use_cache keyword
    wants_past: bool = False  # with_past: past key/values as inputs and outputs
    layers: int = 0  # decoder layers with past key/values (with_past only)
    encoder_only: bool = False

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]


def export_hf(model_or_folder: Any, *, task: str | None = None, with_past: bool = False, opset: int = 18,
              sequence_length: int = 8, batch: int = 2, dynamic: bool = True, exporter: str = "auto",
              rtol: float = 1e-3, atol: float = 1e-4) -> ir.Model:
    """Export a Hugging Face model, from a local folder or from memory, checked against torch.

    Inputs are the model's own: ``input_ids``, ``attention_mask`` and ``token_type_ids`` where
    it takes them, ``position_ids`` for a causal LM, ``pixel_values`` sized from the config
    (``num_channels``, ``image_size``), ``decoder_input_ids`` for seq2seq. Outputs are named
    like the model's: ``last_hidden_state`` (and ``pooler_output``) for feature extraction,
    ``logits`` otherwise. Batch and sequence axes are dynamic. Attention runs in its eager form
    during the export (torch's ONNX decomposition fails on T5's SDPA path); an in-memory
    model gets its own setting back afterwards.

    Caches: a causal LM exports without one by default (``use_cache=False``: every call runs
    the whole sequence). ``with_past=True`` adds ``past_key_values.{i}.key/value`` inputs
    (batch, heads, past_sequence, head_dim) and ``present.{i}.key/value`` outputs; the wrapper
    builds a ``DynamicCache`` from the inputs, so the graph holds no cache object. Seq2seq
    exports one graph ``input_ids, attention_mask, decoder_input_ids -> logits`` without a
    cache. Feature extraction on an encoder-decoder model exports its encoder.

    The export is checked against torch on the example inputs (``batch`` x
    ``sequence_length``, ids in the vocabulary) and, when ``dynamic``, on a larger batch with
    another sequence (and past) length, one row right-padded. The task, the cache choice and the
    source folder's name are stored in ``metadata_props["onnxpress.export_hf"]`` (JSON).

    Args:
        model_or_folder: a ``transformers.PreTrainedModel``, or the path of a folder written by
            ``save_pretrained`` (loaded with ``local_files_only=True``, remote code refused).
        task: one of ``TASKS``; by default read from the architecture name.
        with_past: causal LM only: past key/values as explicit inputs and outputs.
        opset: the default-domain opset version to target.
        sequence_length: tokens in the example inputs (and past tokens with ``with_past``).
        batch: rows in the example inputs.
        dynamic: dynamic batch, sequence and past axes; ``False`` fixes every size.
        exporter: ``auto``, ``dynamo`` or ``torchscript`` (see ``export``).
        rtol, atol: tolerance of the check against torch (see ``export``).

    Raises:
        ExportError: the folder is not a model folder or cannot be loaded, the task is unknown
            or does not fit the model, or the export fails or differs from torch.
        ValueError: an option is out of range.
    """
    if task is not None and task not in TASKS:
        raise ExportError(f"export_hf: unknown task '{task}'; tasks are {', '.join(TASKS)}")
    if sequence_length < 2:
        raise ValueError(f"export_hf: sequence_length must be at least 2, got {sequence_length}")
    if batch < 1:
        raise ValueError(f"export_hf: batch must be at least 1, got {batch}")
    if isinstance(model_or_folder, (str, os.PathLike)):
        model, task, source = _load(Path(model_or_folder), task)
        return _export(model, task, source, with_past=with_past, opset=opset, sequence_length=sequence_length,
                       batch=batch, dynamic=dynamic, exporter=exporter, rtol=rtol, atol=atol)
    model = model_or_folder
    _require_pretrained(model)
    task = task or _task_of(type(model).__name__, model.config)
    with _eager_attention(model):
        return _export(model, task, None, with_past=with_past, opset=opset, sequence_length=sequence_length,
                       batch=batch, dynamic=dynamic, exporter=exporter, rtol=rtol, atol=atol)


def export_hf_info(model: ir.Model) -> dict | None:
    """What ``export_hf`` recorded about ``model`` (task, cache, source, inputs, outputs), or None."""
    text = model.metadata_props.get(EXPORT_HF_METADATA_KEY)
    return json.loads(text) if text else None


def detect_task(folder: str | os.PathLike) -> str:
    """The task of the model saved in ``folder``, read from ``config.json``'s architectures.

    Raises:
        ExportError: the folder has no readable config, or its architecture names no known task.
    """
    config = _load_config(_checked_folder(Path(folder)))
    return _task_of(_architecture(config), config)


# ---------------------------------------------------------------------------------- loading

def _checked_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a folder (give a Hugging Face model folder written by save_pretrained)")
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder}: no config.json in the folder (give a Hugging Face model folder written "
                          "by save_pretrained)")
    return folder


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face libraries never reach the network inside this block (restored after)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _transformers() -> Any:
    """The transformers package.

    Raises:
        ExportError: it is not installed.
    """
    try:
        import transformers
    except ImportError as err:
        raise ExportError("export_hf needs transformers, which is not installed (pip install onnxpress[hf])") from err
    return transformers


def _load_config(folder: Path) -> Any:
    transformers = _transformers()
    with _offline():
        try:
            return transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as err:
            raise ExportError(f"{folder}: cannot read the model config: {_first_line(err)}") from err


def _load(folder: Path, task: str | None) -> tuple[Any, str, str]:
    """The model in ``folder`` with the head of ``task`` (read from the config when None)."""
    transformers = _transformers()
    config = _load_config(_checked_folder(folder))
    task = task or _task_of(_architecture(config), config)
    auto = getattr(transformers, _AUTO_CLASSES[task])
    with _offline():
        try:
            model = auto.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                         attn_implementation="eager")
        except (OSError, ValueError, KeyError) as err:
            raise ExportError(f"{folder}: cannot load the model for {task}: {_first_line(err)}") from err
    logger.info("export_hf: loaded %s from %s for %s", type(model).__name__, folder, task)
    return model.eval(), task, folder.resolve().name


def _require_pretrained(model: Any) -> None:
    if not isinstance(model, _transformers().PreTrainedModel):
        raise ExportError(f"export_hf: expected a folder or a transformers PreTrainedModel, got "
                          f"{type(model).__name__}")


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Eager attention inside the block, the model's own setting after it."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def _architecture(config: Any) -> str:
    names = getattr(config, "architectures", None) or []
    return names[0] if names else type(config).__name__


def _task_of(architecture: str, config: Any) -> str:
    """The task an architecture name implies.

    Raises:
        ExportError: the name implies no task this module exports.
    """
    for ending, task in _ARCHITECTURE_TASKS:
        if architecture.endswith(ending):
            if task == "seq2seq" and not getattr(config, "is_encoder_decoder", False):
                break  # a vision-language "...ForConditionalGeneration": not an encoder-decoder
            return task
    raise ExportError(f"export_hf: cannot tell the task of {architecture}; give one of: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------- export

def _export(model: Any, task: str, source: str | None, *, with_past: bool, opset: int, sequence_length: int,
            batch: int, dynamic: bool, exporter: str, rtol: float, atol: float) -> ir.Model:
    from onnxpress.export import export

    if with_past and task != "causal-lm":
        raise ExportError(f"export_hf: with_past is for causal-lm; {task} exports without a cache")
    model = model.eval()
    plan = _plan(model, task, with_past)
    inner = model.get_encoder() if plan.encoder_only else model
    example, checks = _examples(inner, plan, batch, sequence_length, dynamic=dynamic)
    out_names = plan.outputs + plan.present_names
    exported = export(_wrapper(inner, plan), example, dynamic_batch=dynamic, opset=opset, input_names=plan.inputs,
                      output_names=out_names, dynamic_dims=_dims(plan) if dynamic else None, rtol=rtol,
                      atol=atol, exporter=exporter, check_args=checks)
    cache = WITH_PAST if with_past else (NO_CACHE if task in ("causal-lm", "seq2seq") else None)
    if cache == NO_CACHE:
        logger.info("export_hf: %s exported without a cache (use_cache=False); with_past=True exports "
                    "past key/values as inputs and outputs", task)
    info = {"task": task, "architecture": plan.architecture, "source": source or "in-memory model",
            "cache": cache, "encoder_only": plan.encoder_only, "inputs": plan.inputs, "outputs": out_names,
            "example": {"batch": batch, "sequence_length": sequence_length,
                        "past_sequence_length": sequence_length if with_past else 0}}
    exported.metadata_props[EXPORT_HF_METADATA_KEY] = json.dumps(info)
    return exported


def _examples(model: Any, plan: _Plan, batch: int, length: int, *, dynamic: bool) -> tuple[tuple, list[tuple]]:
    """The example inputs, and those of the check on other sizes: a decoding step (one token
    over a longer past) with ``with_past``, else a longer sequence, in a larger batch. With a
    past, the plan gets its layer count and past inputs.

    Raises:
        ExportError: the model lacks the outputs of its task, or has too few positions.
    """
    import torch

    generator = torch.Generator().manual_seed(0)  # reproducible inputs; the global seed is left alone
    with_past = plan.wants_past  # _plan made sure the model takes a cache
    past_length = length if with_past else 0
    check_length, check_past = (1, past_length + 3) if with_past else (length + 3, 0)
    longest = max(past_length + length, check_past + check_length) if dynamic else past_length + length
    _check_positions(model, plan, longest)
    _check_outputs(model, plan, _inputs(model, plan, generator, batch, length, 0, pad=False))
    example = _inputs(model, plan, generator, batch, length, past_length, pad=False)
    if with_past:
        plan.layers = (len(example) - len(plan.inputs)) // 2
        plan.inputs = plan.inputs + plan.past_names
    checks = [_inputs(model, plan, generator, batch + 1, check_length, check_past, pad=True)] if dynamic else []
    return example, checks


def _plan(model: Any, task: str, with_past: bool) -> _Plan:
    """The wrapper's inputs and outputs for ``task``, from the model's forward signature."""
    encoder_only = task == "feature-extraction" and "decoder_input_ids" in _parameters(model)
    inner = model.get_encoder() if encoder_only else model
    params = _parameters(inner)
    architecture = type(model).__name__
    if task == "image-classification" or (task == "feature-extraction" and "pixel_values" in params
                                          and "input_ids" not in params):
        inputs = ["pixel_values"]
    else:
        inputs = ["input_ids"] + [n for n in ("attention_mask",) if n in params]
        if "token_type_ids" in params and getattr(inner.config, "type_vocab_size", 0):
            inputs.append("token_type_ids")
        if task == "causal-lm" and "position_ids" in params:
            inputs.append("position_ids")
        if task == "seq2seq":
            inputs.append("decoder_input_ids")
    missing = [n for n in inputs if n not in params]
    if missing:
        raise ExportError(f"export_hf: {architecture} takes no {', '.join(missing)}, which {task} needs")
    outputs = ["last_hidden_state", "pooler_output"] if task == "feature-extraction" else ["logits"]
    cache_arg = next((n for n in ("cache", "past_key_values") if n in params), None)
    if with_past and cache_arg is None:
        raise ExportError(f"export_hf: {architecture} takes no cache argument; export it without with_past")
    return _Plan(task, architecture, inputs, outputs, cache_arg, takes_use_cache="use_cache" in params,
                 wants_past=with_past, encoder_only=encoder_only)


def _parameters(model: Any) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _check_outputs(model: Any, plan: _Plan, example: tuple) -> None:
    """Keep the outputs the model returns as tensors (``pooler_output`` is optional).

    Raises:
        ExportError: the model does not return ``logits`` / ``last_hidden_state`` for the task.
    """
    import torch

    with torch.no_grad():
        out = model(**_call_kwargs(plan, example, use_cache=False))
    returned = [n for n in plan.outputs if isinstance(out.get(n), torch.Tensor)]
    if plan.outputs[0] not in returned:
        raise ExportError(f"export_hf: {plan.architecture} returns no '{plan.outputs[0]}' tensor, which "
                          f"{plan.task} exports; give the task that fits its head")
    plan.outputs = returned


def _call_kwargs(plan: _Plan, tensors: tuple, *, use_cache: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(zip(plan.inputs, tensors))
    kwargs["return_dict"] = True
    if plan.takes_use_cache:
        kwargs["use_cache"] = use_cache
    return kwargs


def _inputs(model: Any, plan: _Plan, generator: Any, batch: int, length: int, past_length: int, *,
            pad: bool) -> tuple:
    """Inputs for the plan: ids drawn in the vocabulary, images standard normal, attention masks
    of ones (with ``pad``, the last row's last token masked: right padding never masks a whole
    row, whose output would be arbitrary), and with ``past_length`` the past key/values of a
    random prefix, from torch."""
    import torch

    vocab = _vocabulary(model) if "input_ids" in plan.inputs else 0
    total = past_length + length
    values: dict[str, Any] = {}
    for name in plan.inputs:
        if name in ("input_ids", "decoder_input_ids"):
            values[name] = torch.randint(0, vocab, (batch, length), generator=generator)
        elif name == "attention_mask":
            mask = torch.ones(batch, total, dtype=torch.int64)
            if pad and batch > 1:
                mask[-1, -1] = 0
            values[name] = mask
        elif name == "token_type_ids":
            values[name] = torch.randint(0, int(model.config.type_vocab_size), (batch, length), generator=generator)
        elif name == "position_ids":
            values[name] = torch.arange(past_length, total).repeat(batch, 1)
        elif name == "pixel_values":
            values[name] = torch.randn(batch, *_image_shape(model.config), generator=generator).to(model.dtype)
    tensors = tuple(values[n] for n in plan.inputs if n in values)
    if past_length:
        tensors += _past(model, plan, generator, batch, past_length, vocab)
    return tensors


def _vocabulary(model: Any) -> int:
    embeddings = model.get_input_embeddings()
    return int(embeddings.num_embeddings)


def _image_shape(config: Any) -> tuple[int, int, int]:
    size = getattr(config, "image_size", None)
    channels = getattr(config, "num_channels", 3)
    if size is None:
        raise ExportError(f"export_hf: {type(config).__name__} has no image_size to size pixel_values by")
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return int(channels), int(height), int(width)


def _check_positions(model: Any, plan: _Plan, longest: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if "input_ids" in plan.inputs and isinstance(limit, int) and longest > limit:
        raise ExportError(f"export_hf: the check needs {longest} positions but {plan.architecture} has "
                          f"max_position_embeddings={limit}; lower sequence_length")


def _past(model: Any, plan: _Plan, generator: Any, batch: int, past_length: int, vocab: int) -> tuple:
    """Past key/values of a random prefix of ``past_length`` tokens, as torch computes them.

    Raises:
        ExportError: the model's cache is not one key and one value tensor per layer.
    """
    import torch

    kwargs: dict[str, Any] = {"input_ids": torch.randint(0, vocab, (batch, past_length), generator=generator),
                              "return_dict": True, "use_cache": True}
    if "attention_mask" in plan.inputs:
        kwargs["attention_mask"] = torch.ones(batch, past_length, dtype=torch.int64)
    with torch.no_grad():
        cache = getattr(model(**kwargs), plan.cache_arg)
    tensors = []
    for index, layer in enumerate(getattr(cache, "layers", None) or []):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise ExportError(f"export_hf: layer {index} of {plan.architecture}'s cache holds no key/value "
                              "tensors; export it without with_past")
        tensors += [keys.clone(), values.clone()]
    if not tensors:
        raise ExportError(f"export_hf: {plan.architecture} returned no per-layer cache; export it without with_past")
    return tuple(tensors)


def _dims(plan: _Plan) -> dict[str, dict[int, str]]:
    """Dynamic axes past the batch (``export`` makes axis 0 dynamic)."""
    dims: dict[str, dict[int, str]] = {}
    for name in plan.inputs:
        if name in ("input_ids", "token_type_ids", "position_ids"):
            dims[name] = {1: "sequence"}
        elif name == "attention_mask":
            dims[name] = {1: "total_sequence" if plan.layers else "sequence"}
        elif name == "decoder_input_ids":
            dims[name] = {1: "decoder_sequence"}
        elif name.startswith("past_key_values."):
            dims[name] = {2: "past_sequence"}
    return dims


def _wrapper(model: Any, plan: _Plan) -> Any:
    """A module taking the plan's inputs positionally and returning a tuple of tensors.

    torch.export binds dynamic shapes to the forward's named parameters, so the forward gets a
    signature naming every input (``past_key_values.0.key`` as ``past_key_values_0_key``).
    """
    import torch

    class HFExport(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            count = len(tensors) - 2 * plan.layers
            kwargs = _call_kwargs(plan, tensors[:count], use_cache=bool(plan.layers))
            if plan.layers:
                from transformers import DynamicCache

                past = tensors[count:]
                kwargs[plan.cache_arg] = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.model.config)
            out = self.model(**kwargs)
            result = [out[name] for name in plan.outputs]
            if plan.layers:
                for layer in getattr(out, plan.cache_arg).layers:
                    result += [layer.keys, layer.values]
            return tuple(result)

    parameter = inspect.Parameter
    HFExport.forward.__signature__ = inspect.Signature(
        [parameter("self", parameter.POSITIONAL_OR_KEYWORD)]
        + [parameter(name.replace(".", "_"), parameter.POSITIONAL_OR_KEYWORD) for name in plan.inputs])
    return HFExport().eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
