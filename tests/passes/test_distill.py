"""Distill: the torch executor against ONNX Runtime, the write-back, masks and ranks kept, the
held-out guarantee, recovery after lowrank, and the pass in a recipe."""
import sys

import numpy as np
import onnx_ir as ir
import pytest

import onnxpress as ox
from onnxpress.calibration import from_feeds
from onnxpress.context import PassContext
from onnxpress.errors import PassError
from onnxpress.runtime import Runner

from conftest import onnx_check, ort_run

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models gain nothing from more, and on a busy machine spinning
    threads slow them tenfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

from onnxpress.passes._torchgraph import TorchGraph  # noqa: E402  (needs torch)
from onnxpress.passes.distill import write_back  # noqa: E402


def _fmt(array) -> str:
    return ", ".join(f"{v:.7g}" for v in np.ravel(array))


def _named(model: ir.Model) -> ir.Model:
    for index, node in enumerate(model.graph):
        node.name = node.name or f"{node.op_type.lower()}_{index}"
    return model


def _mlp(k: int = 16, hidden: int = 48, n: int = 8, seed: int = 0, gemm: bool = False) -> ir.Model:
    """y = (relu(relu(x W1 + b1) W2 + b2)) W3 + b3, as exporters write Linear (MatMul + Add), or
    as Gemm with a bias input."""
    rng = np.random.default_rng(seed)
    w1, w2, w3 = (rng.standard_normal(shape) / np.sqrt(shape[0])
                  for shape in ((k, hidden), (hidden, hidden), (hidden, n)))
    b1, b2, b3 = (0.1 * rng.standard_normal(size) for size in (hidden, hidden, n))
    return _named(ir.from_onnx_text(f"""
    <ir_version: 10, opset_import: ["" : 18]>
    mlp (float[B, {k}] x) => (float[B, {n}] y)
    <float[{k}, {hidden}] w1 = {{{_fmt(w1)}}}, float[{hidden}] b1 = {{{_fmt(b1)}}},
     float[{hidden}, {hidden}] w2 = {{{_fmt(w2)}}}, float[{hidden}] b2 = {{{_fmt(b2)}}},
     float[{hidden}, {n}] w3 = {{{_fmt(w3)}}}, float[{n}] b3 = {{{_fmt(b3)}}}>
    {{{_GEMM_BODY if gemm else _MATMUL_BODY}}}
    """))


_MATMUL_BODY = """
    h1 = MatMul(x, w1)
    a1 = Add(h1, b1)
    r1 = Relu(a1)
    h2 = MatMul(r1, w2)
    a2 = Add(h2, b2)
    r2 = Relu(a2)
    h3 = MatMul(r2, w3)
    y = Add(h3, b3)
"""

_GEMM_BODY = """
    a1 = Gemm(x, w1, b1)
    r1 = Relu(a1)
    a2 = Gemm(r1, w2, b2)
    r2 = Relu(a2)
    y = Gemm(r2, w3, b3)
"""


def _inputs(count: int, seed: int, k: int = 16, rows: int = 8) -> list[dict]:
    """Correlated inputs (a few strong directions): what data-free SVD does not know about."""
    rng = np.random.default_rng(100)  # one mixing for every set
    mixing = (np.diag(np.geomspace(3.0, 0.05, k)) @ np.linalg.qr(rng.standard_normal((k, k)))[0]).astype(np.float32)
    draw = np.random.default_rng(seed)
    return [{"x": (draw.standard_normal((rows, k)).astype(np.float32) @ mixing)} for _ in range(count)]


def _context(train: list[dict], held: list[dict]) -> PassContext:
    return PassContext(runner=Runner("cpu"), calibration=from_feeds(train, name="train"),
                       evaluation=from_feeds(held, name="held"))


def _relative_error(teacher: ir.Model, student: ir.Model, feeds: list[dict]) -> float:
    """Squared output error relative to the teacher's output energy, on ONNX Runtime."""
    error = energy = 0.0
    for feed in feeds:
        reference, candidate = ort_run(teacher, feed)[0], ort_run(student, feed)[0]
        error += float(np.sum((candidate - reference) ** 2))
        energy += float(np.sum(reference ** 2))
    return error / energy


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()}


# ------------------------------------------------------------------------- the executor

# Attention-like ops: embedding Gather, LayerNormalization, a dynamic Reshape from Shape/Gather/
# Concat, Softmax with a Where mask, Erf-GELU, Constant, Slice, ReduceMean, Sqrt, Pow.
_ATTENTION = """
<ir_version: 10, opset_import: ["" : 18]>
attention (int64[B, S] ids, int64[B, S] mask) => (float[B, 8] y)
<float[20, 8] emb = {{{emb}}}, float[8] gamma = {{{gamma}}}, float[8] beta = {{{beta}}},
 float[8, 8] wq = {{{wq}}}, float[8, 8] wk = {{{wk}}}, float[8, 16] w1 = {{{w1}}}, float[16] b1 = {{{b1}}},
 float[16, 8] w2 = {{{w2}}}, int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] heads = {{2}},
 int64[1] width = {{4}}, float neg = {{-10000.0}}, float half = {{0.5}}, float two = {{2.0}}>
{{
    h = Gather(emb, ids)
    n = LayerNormalization <axis = -1, epsilon = 1e-5> (h, gamma, beta)
    q = MatMul(n, wq)
    k = MatMul(n, wk)
    shape = Shape(q)
    batch = Gather <axis = 0> (shape, zero)
    seq = Gather <axis = 0> (shape, one)
    split = Concat <axis = 0> (batch, seq, heads, width)
    qh = Reshape(q, split)
    kh = Reshape(k, split)
    qt = Transpose <perm = [0, 2, 1, 3]> (qh)
    kt = Transpose <perm = [0, 2, 3, 1]> (kh)
    scores = MatMul(qt, kt)
    m1 = Unsqueeze(mask, one)
    m2 = Unsqueeze(m1, one)
    keep = Cast <to = 9> (m2)
    masked = Where(keep, scores, neg)
    probs = Softmax <axis = -1> (masked)
    v = Transpose <perm = [0, 2, 1, 3]> (qh)
    mixed = MatMul(probs, v)
    back = Transpose <perm = [0, 2, 1, 3]> (mixed)
    c8 = Constant <value = int64[1] {{8}}> ()
    merged_shape = Concat <axis = 0> (batch, seq, c8)
    merged = Reshape(back, merged_shape)
    f1 = MatMul(merged, w1)
    f2 = Add(f1, b1)
    root2 = Sqrt(two)
    scaled = Div(f2, root2)
    erf = Erf(scaled)
    c1 = Constant <value_float = 1.0> ()
    erf1 = Add(erf, c1)
    halfx = Mul(f2, half)
    gelu = Mul(halfx, erf1)
    f3 = MatMul(gelu, w2)
    r = Add(f3, n)
    first = Slice(r, zero, one, one)
    token = Squeeze(first, one)
    pooled = ReduceMean <keepdims = 0> (r, one)
    sq = Pow(pooled, two)
    y = Add(sq, token)
}}
"""

_CNN = """
<ir_version: 10, opset_import: ["" : 18]>
cnn (float[N, 3, 9, 9] x) => (float[N, 5] y)
<float[6, 3, 3, 3] c1 = {{{c1}}}, float[6] c1b = {{{c1b}}}, float[6] s = {{{s}}}, float[6] o = {{{o}}},
 float[6] mu = {{{mu}}}, float[6] var = {{{var}}}, float[6, 1, 3, 3] dw = {{{dw}}},
 float[5, 24] g = {{{g}}}, float[5] gb = {{{gb}}}>
{{
    a = Conv <pads = [1, 0, 2, 1], strides = [2, 1]> (x, c1, c1b)
    b = BatchNormalization <epsilon = 1e-3> (a, s, o, mu, var)
    c = Relu(b)
    d = Conv <group = 6, auto_pad = "SAME_UPPER"> (c, dw)
    e = MaxPool <kernel_shape = [2, 2], strides = [2, 2], pads = [0, 0, 1, 1]> (d)
    f = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]> (e)
    p = Sigmoid(f)
    gp = GlobalAveragePool(e)
    pg = Mul(p, gp)
    t = Tanh(pg)
    flat = Flatten(t)
    y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (flat, g, gb)
}}
"""


def _filled(text: str, shapes: dict[str, tuple], seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    values = {name: (np.abs(rng.standard_normal(shape)) + 0.5 if name == "var" else rng.standard_normal(shape) * 0.5)
              for name, shape in shapes.items()}
    return _named(ir.from_onnx_text(text.format(**{name: _fmt(v) for name, v in values.items()})))


def _attention() -> ir.Model:
    return _filled(_ATTENTION, {"emb": (20, 8), "gamma": (8,), "beta": (8,), "wq": (8, 8), "wk": (8, 8),
                                "w1": (8, 16), "b1": (16,), "w2": (16, 8)})


def _cnn() -> ir.Model:
    return _filled(_CNN, {"c1": (6, 3, 3, 3), "c1b": (6,), "s": (6,), "o": (6,), "mu": (6,), "var": (6,),
                          "dw": (6, 1, 3, 3), "g": (5, 24), "gb": (5,)})


@pytest.mark.parametrize("build, feeds", [
    (_attention, [{"ids": np.array([[1, 4, 7, 19, 0]]), "mask": np.array([[1, 1, 1, 1, 0]])},
                  {"ids": np.array([[3, 2, 8], [5, 5, 11]]), "mask": np.ones((2, 3), np.int64)}]),
    (_cnn, [{"x": np.random.default_rng(3).standard_normal((2, 3, 9, 9)).astype(np.float32)}]),
])
def test_the_executor_matches_onnxruntime(build, feeds):
    model = build()
    graph = TorchGraph(model.graph)
    for feed in feeds:
        expected = ort_run(model, feed)[0]
        produced = graph.run(feed)["y"].numpy()
        np.testing.assert_allclose(produced, expected, rtol=1e-5, atol=1e-5)


# (inputs, outputs, body, feeds not drawn at random): ops with defaults, opset-moved attributes,
# negative indices and steps, padding modes, ceil mode.
_SINGLE_OPS = [
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = Identity(x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "s = Constant <value = int64[3] {2, 3, 4}> ()\n "
     "z = ConstantOfShape <value = float[1] {1.5}> (s)\n "
     "y = Add(x, z)", {}),
    ("float[2,6,4] x", "float[A,B,C] y, float[D,E,F] w",
     "y, w = Split <axis = 1, num_outputs = 2> (x)", {}),
    ("float[2,6,4] x", "float[A,B,C] y, float[D,E,F] w",
     "sp = Constant <value = int64[2] {2, 4}> ()\n "
     "y, w = Split <axis = 1> (x, sp)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "p = Constant <value = int64[6] {0, 1, 2, 0, 2, 1}> ()\n "
     "v = Constant <value_float = 0.5> ()\n "
     "y = Pad(x, p, v)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "p = Constant <value = int64[6] {0, 1, 2, 0, 2, 1}> ()\n "
     "y = Pad <mode = \"reflect\"> (x, p)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "p = Constant <value = int64[6] {0, 1, 2, 0, 2, 1}> ()\n "
     "y = Pad <mode = \"edge\"> (x, p)", {}),
    ("float[5,6] x", "float[A,B] y",
     "st = Constant <value = int64[2] {-1, 4}> ()\n "
     "en = Constant <value = int64[2] {-100, 0}> ()\n "
     "ax = Constant <value = int64[2] {0, 1}> ()\n "
     "sp = Constant <value = int64[2] {-2, -1}> ()\n "
     "y = Slice(x, st, en, ax, sp)", {}),
    ("float[2,3,4] x, int64[2,3,1] i", "float[A,B,C] y",
     "y = GatherND <batch_dims = 1> (x, i)", {"i": np.array([[[0],[2],[-1]],[[1],[1],[0]]])}),
    ("float[3,4] x, int64[2,2] i", "float[A] y",
     "y = GatherND(x, i)", {"i": np.array([[0, 1], [2, -1]])}),
    ("float[3,4] x", "float[A,B] y",
     "a = Constant <value = int64 {1}> ()\n "
     "y = CumSum <exclusive = 1, reverse = 1> (x, a)", {}),
    ("float[4,4] x", "float[A,B] y",
     "k = Constant <value = int64 {-1}> ()\n "
     "y = Trilu <upper = 0> (x, k)", {}),
    ("float[3,4] x", "int64[A,B] y",
     "y = ArgMax <axis = 1, keepdims = 1, select_last_index = 1> (x)",
     {"x": np.array([[1, 3, 3, 0], [2, 2, 1, 0], [0, 0, 0, 0]], np.float32)}),
    ("float[2,3] x", "float[A,B] y",
     "r = Constant <value = int64[2] {2, 3}> ()\n "
     "y = Tile(x, r)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = ReduceMax <keepdims = 1> (x)", {}),
    ("float[2,3,4] x", "float[A,B] y",
     "a = Constant <value = int64[1] {-1}> ()\n "
     "y = ReduceL2 <keepdims = 0> (x, a)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = LogSoftmax <axis = 1> (x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = Gelu <approximate = \"tanh\"> (x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = Clip(x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "lo = Constant <value_float = -0.2> ()\n "
     "y = Clip(x, lo)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = HardSigmoid(x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = LeakyRelu(x)", {}),
    ("int64[2,3] x", "int64[A,B] y",
     "d = Constant <value = int64 {-2}> ()\n "
     "y = Div(x, d)", {"x": np.array([[7, -7, 3], [1, 0, -5]])}),
    ("float[2,3,4] x", "int64[A] y",
     "y = Shape <start = 1, end = -1> (x)", {}),
    ("float[2,1,4] x", "float[A,B] y",
     "y = Squeeze(x)", {}),
    ("float[2,3,4] x", "float[A,B] y",
     "y = Flatten <axis = 2> (x)", {}),
    ("float[2,3,4] x", "float[A,B,C] y",
     "y = Einsum <equation = \"abc,abd->acd\"> (x, x)", {}),
    ("float[1,2,5,5] x", "float[A,B,C,D] y",
     "y = AveragePool <kernel_shape = [3, 3], auto_pad = \"SAME_LOWER\", strides = [2, 2]> (x)", {}),
    ("float[1,2,5,5] x", "float[A,B,C,D] y",
     "y = MaxPool <kernel_shape = [2, 2], ceil_mode = 1, strides = [2, 2]> (x)", {}),
    ("float[1,2,5,5] x", "float[A,B,C,D] y",
     "y = AveragePool <kernel_shape = [2, 2], ceil_mode = 1, strides = [2, 2]> (x)", {}),
    ("float[2,3] x", "float[A,B] y",
     "y = Softmax <axis = 0> (x)", {}),
    ("float[2,3] x", "bool[A,B] y",
     "z = Constant <value_float = 0.0> ()\n "
     "g = Greater(x, z)\n "
     "n = IsNaN(x)\n "
     "y = Xor(g, n)", {}),
    ("float[2,3] x", "float[A,B] y",
     "y = Mean(x, x, x)", {}),
    ("float[3] x", "int64[A,B] y",
     "y = NonZero(x)", {"x": np.array([0, 1.5, 2], np.float32)}),
]


def _op_id(case: tuple) -> str:
    """The op of a case's last line: ``y = Slice(x, ...)`` -> ``Slice``."""
    return case[2].split("\n")[-1].split("=")[1].split("(")[0].split("<")[0].strip()


@pytest.mark.parametrize("inputs, outputs, body, given", _SINGLE_OPS,
                         ids=[f"{_op_id(c)}-{i}" for i, c in enumerate(_SINGLE_OPS)])
def test_single_ops_match_onnxruntime(inputs, outputs, body, given):
    model = ir.from_onnx_text(f'<ir_version: 10, opset_import: ["" : 20]>\n'
                              f'g ({inputs}) => ({outputs})\n{{\n {body}\n}}')
    rng = np.random.default_rng(0)
    feed = {v.name: given.get(v.name, rng.standard_normal(list(v.shape)).astype(np.float32))
            for v in model.graph.inputs}
    produced = TorchGraph(model.graph).run(feed)
    for value, expected in zip(model.graph.outputs, ort_run(model, feed)):
        assert produced[value.name].shape == expected.shape
        np.testing.assert_allclose(produced[value.name].numpy(), expected, atol=1e-5)


def test_the_digits_cnn_runs_on_the_executor():
    from onnxpress import samples

    model = ox.load(samples.DIGITS_MODEL)
    feed = samples.digits_calibration(batch_size=4).take(1)[0]
    produced = next(iter(TorchGraph(model.graph).run(feed).values())).numpy()
    np.testing.assert_allclose(produced, ort_run(model, feed)[0], rtol=1e-4, atol=1e-4)


def test_the_write_back_reproduces_the_torch_model_on_onnxruntime():
    model = _attention()
    trainable = [name for name, value in model.graph.initializers.items()
                 if value.const_value.dtype == ir.DataType.FLOAT and value.const_value.size > 1]
    graph = TorchGraph(model.graph, trainable)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in graph.parameters.values():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    feed = {"ids": np.array([[1, 4, 7, 19, 0]]), "mask": np.array([[1, 1, 1, 0, 0]])}
    with torch.no_grad():
        trained = graph.run(feed)["y"].numpy()
    before = ort_run(model, feed)[0]
    written = model.clone()
    write_back(written.graph, graph.parameters)
    after = ort_run(written, feed)[0]
    assert np.abs(after - before).max() > 1e-2  # the weights did move
    np.testing.assert_allclose(after, trained, rtol=1e-5, atol=1e-5)
    assert set(written.graph.initializers) == set(model.graph.initializers)
    assert all(written.graph.initializers[n].const_value.dtype == ir.DataType.FLOAT for n in trainable)
    onnx_check(written)


def test_an_op_the_executor_does_not_run_is_named():
    model = _named(ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 4] y)
    { y = Hardmax(x) }
    """))
    with pytest.raises(PassError, match="node 'hardmax_0' is a Hardmax"):
        TorchGraph(model.graph)


# ------------------------------------------------------------------------------ the pass

def test_lowrank_then_distill_recovers_most_of_the_error():
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model  # data-free SVD
    assert sum(n.op_type == "MatMul" for n in student.graph) == 6
    train, held, unseen = _inputs(48, seed=1), _inputs(12, seed=2), _inputs(12, seed=3)
    result = ox.passes.Distill(teacher=teacher, steps=300, learning_rate=3e-3).run_in(_context(train, held), student)
    stats = result.statistics
    assert result.modified and stats["improved"]
    assert stats["held_out_loss_after"] < 0.5 * stats["held_out_loss_before"]
    assert stats["steps"] == stats["steps_blocks"] + stats["steps_end_to_end"] and stats["steps"] >= 290
    assert stats["converter"].startswith("onnxpress torch executor") and stats["tensors_trained"] == 9
    before, after = _relative_error(teacher, student, unseen), _relative_error(teacher, result.model, unseen)
    assert after < 0.5 * before  # on data distill never saw
    assert [n.op_type for n in result.model.graph] == [n.op_type for n in student.graph]
    onnx_check(result.model)


@pytest.mark.parametrize("prune", [ox.passes.Prune(sparsity=0.5),
                                   ox.passes.Prune(granularity="n:m", n=2, m=4)], ids=["unstructured", "2:4"])
def test_pruned_zeros_stay_zero(prune):
    teacher = _mlp()
    student = prune(teacher).model
    before = _weights(student)
    result = ox.passes.Distill(teacher=teacher, steps=60, learning_rate=3e-3).run_in(
        _context(_inputs(24, seed=1), _inputs(8, seed=2)), student)
    assert result.modified
    after = _weights(result.model)
    masked = 0
    for node in result.model.graph:
        if node.op_type != "MatMul":
            continue
        name = node.inputs[1].name
        zeros = before[name] == 0
        assert zeros.any()
        np.testing.assert_array_equal(after[name] == 0, zeros)  # the same zeros, no more, no fewer
        assert not np.array_equal(after[name], before[name])  # the kept weights trained
        masked += int(zeros.sum())
        if prune.granularity == "n:m":  # groups of 4 along the input axis keep 2
            groups = (after[name] != 0).reshape(-1, 4, after[name].shape[1])
            assert (groups.sum(axis=1) <= 2).all()
    assert result.statistics["zeros_kept"] == masked


def test_structured_pruning_trains_with_the_boundaries_that_kept_their_shape():
    teacher = _mlp(gemm=True)
    student = ox.passes.Prune(granularity="structured", sparsity=0.5, channel_multiple=1)(teacher).model
    assert student.graph.initializers["w2_pruned"].const_value.shape == (48, 24)  # the middle layer lost half
    shapes = {name: v.const_value.shape for name, v in student.graph.initializers.items()}
    result = ox.passes.Distill(teacher=teacher, steps=60, learning_rate=3e-3).run_in(
        _context(_inputs(24, seed=1), _inputs(8, seed=2)), student)
    assert result.modified and result.statistics["held_out_loss_after"] < result.statistics["held_out_loss_before"]
    assert result.statistics["boundaries"] == 1  # a1; a2 lost half its channels
    assert {name: v.const_value.shape for name, v in result.model.graph.initializers.items()} == shapes


def test_factor_ranks_are_kept():
    teacher = _mlp()
    student = ox.passes.LowRank(rank=4, min_elements=0)(teacher).model
    shapes = {name: v.const_value.shape for name, v in student.graph.initializers.items()}
    result = ox.passes.Distill(teacher=teacher, steps=40, learning_rate=3e-3).run_in(
        _context(_inputs(16, seed=1), _inputs(8, seed=2)), student)
    assert result.modified
    assert {name: v.const_value.shape for name, v in result.model.graph.initializers.items()} == shapes
    assert all(v.const_value.shape[-1] == 4 for n, v in result.model.graph.initializers.items()
               if n.endswith("lowrank_a"))


def test_distill_never_returns_weights_worse_on_held_out_data():
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model
    train, held = _inputs(16, seed=1), _inputs(8, seed=2)
    # A learning rate that can only wreck the weights: the input comes back, untouched.
    wrecked = ox.passes.Distill(teacher=teacher, steps=20, learning_rate=10.0).run_in(_context(train, held), student)
    assert wrecked.modified is False and wrecked.statistics["improved"] is False
    assert "returned unchanged" in wrecked.statistics["reason"]
    assert wrecked.model is not student
    for name, array in _weights(student).items():
        np.testing.assert_array_equal(wrecked.model.graph.initializers[name].const_value.numpy(), array)
    # Whatever training does, the held-out error (measured on ONNX Runtime) does not grow.
    for rate in (1e-3, 3e-2):
        result = ox.passes.Distill(teacher=teacher, steps=30, learning_rate=rate).run_in(_context(train, held), student)
        assert _relative_error(teacher, result.model, held) <= _relative_error(teacher, student, held) * (1 + 1e-5)


@pytest.mark.parametrize("loss", ["mse", "cosine", "kl", "features"])
def test_each_loss_trains(loss):
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model
    result = ox.passes.Distill(teacher=teacher, steps=80, learning_rate=3e-3, loss=loss, block_share=0.0).run_in(
        _context(_inputs(24, seed=1), _inputs(8, seed=2)), student)
    assert result.modified and result.statistics["held_out_loss_after"] < result.statistics["held_out_loss_before"]
    assert result.statistics["steps_blocks"] == 0


def test_train_chooses_the_tensors_and_a_time_budget_ends_training():
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model
    result = ox.passes.Distill(teacher=teacher, time_budget=0.5, train=["bias"], learning_rate=1e-2).run_in(
        _context(_inputs(16, seed=1), _inputs(8, seed=2)), student)
    before, after = _weights(student), _weights(result.model)
    changed = sorted(name for name in before if not np.array_equal(before[name], after[name]))
    assert changed == ["b1", "b2", "b3"]
    assert result.statistics["tensors_trained"] == 3 and result.statistics["seconds"] < 5.0
    nothing = ox.passes.Distill(teacher=teacher, train=["Conv"], steps=5).run_in(
        _context(_inputs(4, seed=1), _inputs(2, seed=2)), student)
    assert nothing.modified is False and nothing.statistics["reason"] == "nothing to train"
    assert nothing.statistics["train_unmatched"] == ["Conv"]


def test_the_pipeline_gives_its_input_model_as_teacher():
    seen = []

    class Probe(ox.Pass, ir.passes.InPlacePass):
        def call(self, model):
            seen.append((self.context.teacher, model))
            return ox.PassResult(model, modified=False)

    model = _mlp()
    ox.Pipeline([Probe()], golden_samples=0, check=False).run(model, calibration=_inputs(2, seed=1))
    teacher, worked_on = seen[0]
    assert isinstance(teacher, ir.Model) and teacher.graph is not worked_on.graph
    assert [n.op_type for n in teacher.graph] == [n.op_type for n in model.graph]


def test_without_a_teacher_the_error_says_how_to_give_one():
    with pytest.raises(PassError, match=r"distill: no teacher model.*teacher=<onnx_ir.Model>"):
        ox.passes.Distill()(_mlp())


def test_without_torch_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    teacher = _mlp()
    with pytest.raises(PassError, match=r"pip install 'onnxpress\[torch\]'"):
        ox.passes.Distill(teacher=teacher).run_in(_context(_inputs(4, seed=1), _inputs(2, seed=2)), teacher.clone())


@pytest.mark.parametrize("options, message", [
    ({"loss": "l1"}, "distill: loss must be 'mse', 'cosine', 'kl' or 'features', got 'l1'"),
    ({"steps": 0}, "distill: steps must be >= 1, got 0"),
    ({"time_budget": -1.0}, "distill: time_budget must be > 0 seconds"),
    ({"block_share": 1.0}, "distill: block_share must be in [0, 1)"),
    ({"train": []}, "distill: train must be a non-empty list"),
    ({"teacher": "model.onnx"}, "distill: teacher must be an onnx_ir.Model, got 'str'"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        ox.passes.Distill(**options)


def test_lowrank_distill_quantize_recipe(tmp_path):
    from onnxpress import registry

    assert registry.get("distill") is ox.passes.Distill
    np.savez(tmp_path / "calib.npz", x=np.concatenate([f["x"] for f in _inputs(40, seed=1)]))
    (tmp_path / "r.toml").write_text("""
target = "cpu"

[pipeline]
golden_samples = 4
accuracy_floor = 0.0

[calibration]
source = "calib.npz"
batch_size = 8

[[passes]]
name = "lowrank"
rank_ratio = 0.25
min_elements = 0

[[passes]]
name = "distill"
steps = 150
threads = 1
learning_rate = 3e-3

[[passes]]
name = "quantize"
""")
    model = _mlp()
    result = ox.Pipeline.from_recipe(tmp_path / "r.toml").run(model)
    lowrank, distill, quantize = result.records
    assert (lowrank.name, distill.name, quantize.name) == ("lowrank", "distill", "quantize")
    assert distill.modified and distill.statistics["improved"]
    assert distill.statistics["held_out"].endswith("[32:]")  # the context's split: a fifth held out
    assert distill.cosine > lowrank.cosine  # closer to the input model on the golden inputs
    assert quantize.modified and any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger")
                                     for n in result.model.graph)
    onnx_check(result.model)


@pytest.mark.slow
def test_minilm_after_lowrank_gets_closer_to_the_teacher():
    from onnxpress import runtime
    from onnxpress.metrics import compare
    from onnxpress.samples import minilm

    teacher = minilm.export()
    student = ox.passes.LowRank(rank_ratio=0.25)(teacher).model
    held_out = minilm.feeds(minilm.EVAL_SENTENCES)
    reference = runtime.run_model(teacher, held_out)

    def cosine(model):
        return compare(reference, runtime.run_model(model, held_out))["sentence_embedding"].cosine

    result = ox.passes.Distill(teacher=teacher, time_budget=15.0, loss="features").run_in(
        _context(minilm.feeds(minilm.CALIBRATION_SENTENCES[:80]), minilm.feeds(minilm.CALIBRATION_SENTENCES[80:])),
        student)
    assert result.modified and result.statistics["boundaries"] == 13  # the LayerNorm outputs
    assert cosine(result.model) > cosine(student) + 0.005


def test_a_time_budget_holds_for_the_whole_pass_measurements_included():
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model
    # Many held-out feeds: each held-out check is expensive, and counts against the budget.
    context = _context(_inputs(32, seed=1), _inputs(1500, seed=2))
    result = ox.passes.Distill(teacher=teacher, time_budget=2.0, learning_rate=3e-3, threads=1,
                               calibration_samples=1500).run_in(context, student)
    stats = result.statistics
    assert stats["held_out_samples"] == 1500 and stats["steps"] > 0
    assert stats["seconds"] < 2.0 * 1.25


def _digits_task(pruned_sparsity: float = 0.8):
    from onnxpress import samples
    from onnxpress.metrics import accuracy

    model = ox.load(samples.DIGITS_MODEL)
    data, labels = samples.digits_eval(batch_size=1)
    feeds = list(data)
    pruned = ox.passes.Prune(sparsity=pruned_sparsity, compensate=False)(model).model
    context = PassContext(runner=Runner("cpu"), calibration=from_feeds(feeds[:300], name="labelled"),
                          evaluation=from_feeds(feeds[300:], name="held"),
                          metric=lambda outputs: accuracy(outputs, labels[300:]))
    return model, pruned, context, feeds[300:], labels


def test_a_task_loss_trains_on_labels_and_the_metric_chooses_the_checkpoint():
    from onnxpress import runtime
    from onnxpress.metrics import accuracy

    teacher, pruned, context, held, labels = _digits_task()
    result = ox.passes.Distill(teacher=teacher, labels=labels[:300], steps=120, batch_size=16, learning_rate=2e-3,
                               block_share=0.0, threads=1).run_in(context, pruned)
    stats = result.statistics
    assert stats["task"] == {"loss": "cross_entropy", "output": "logits", "weight": 1.0, "labelled_samples": 300}
    before = accuracy(runtime.run_model(pruned, held), labels[300:])
    assert stats["metric_before"] == pytest.approx(before, abs=1e-6)
    assert result.modified and stats["metric_after"] > stats["metric_before"]
    # The metric measured in torch during training is the one ONNX Runtime gives the written model.
    assert accuracy(runtime.run_model(result.model, held), labels[300:]) == pytest.approx(stats["metric_after"],
                                                                                        abs=1.5 / len(held))


def test_labels_that_do_not_cover_the_calibration_rows_are_named():
    teacher, pruned, context, _, labels = _digits_task()
    with pytest.raises(PassError, match=r"distill: labels: 100 labels for 300 calibration rows"):
        ox.passes.Distill(teacher=teacher, labels=labels[:100], steps=2).run_in(context, pruned)


def test_the_augmenter_swaps_inner_tokens_and_mixes_float_rows():
    from onnxpress.passes._trainer import Augmenter, Batch

    rng = np.random.default_rng(0)
    ids = rng.integers(100, 1000, (4, 50))
    ids[:, 0], ids[:, -1] = 101, 102  # special tokens at both ends
    mask = np.ones_like(ids)
    tokens = Batch({"input_ids": ids, "attention_mask": mask}, 4)
    augment = Augmenter([tokens], np.random.default_rng(1))
    assert set(augment.pools) == {"input_ids"}  # the mask has two values: not token ids
    out = augment(tokens)
    assert out.transient and out.count == 4 and out.targets is None
    np.testing.assert_array_equal(out.feeds["attention_mask"], mask)
    np.testing.assert_array_equal(out.feeds["input_ids"][:, [0, -1]], ids[:, [0, -1]])
    changed = out.feeds["input_ids"] != ids
    assert 0.05 < changed.mean() < 0.25 and np.isin(out.feeds["input_ids"], ids).all()
    images = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    mixed = Augmenter([], np.random.default_rng(2))(Batch({"x": images}, 6)).feeds["x"]
    assert mixed.dtype == np.float32 and not np.allclose(mixed, images)
    # Each row is a convex mix with another row, its own share at least 0.6.
    assert (np.abs(mixed).max(axis=(1, 2, 3)) <= np.abs(images).max() + 1e-6).all()
    assert np.corrcoef(mixed.reshape(6, -1)[0], images.reshape(6, -1)[0])[0, 1] > 0.7


def test_augmented_distillation_trains_and_keeps_the_best_held_out_weights():
    teacher = _mlp()
    student = ox.passes.LowRank(rank_ratio=0.25, min_elements=0)(teacher).model
    held = _inputs(8, seed=2)
    result = ox.passes.Distill(teacher=teacher, steps=80, learning_rate=3e-3, augment=True, batch_size=8).run_in(
        _context(_inputs(24, seed=1), held), student)
    assert result.statistics["augment"] is True and result.modified
    assert _relative_error(teacher, result.model, held) < _relative_error(teacher, student, held)
