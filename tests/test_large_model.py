"""A model past protobuf's 2 GB limit goes through load, simplify, save and a session.

The model is built here (nine float32 MatMul weights, about 2.25 GiB) and written with
external data. The onnxpress side runs in a child process so that its peak resident memory
(``VmHWM``, which counts memory-mapped weight pages too) belongs to that work alone.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(),
                       reason="peak memory is read from /proc/self/status (Linux only)"),
]

HIDDEN = 4096
WIDE = 16384
LAYERS = 9  # alternating [HIDDEN, WIDE] and [WIDE, HIDDEN]: 9 * 256 MiB = 2.25 GiB
PROTOBUF_LIMIT_BYTES = 2**31
# The child's peak resident memory, in multiples of the weight bytes. One copy of the weights
# (memory-mapped pages count) plus headroom: a second full copy in memory fails the test.
PEAK_FACTOR = 2.0

# The child process: everything a user does with a big model, timed, and its peak memory.
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    import numpy as np
    import onnx_ir as ir

    import onnxpress
    from onnxpress import runtime

    source, out_path, feed_path, result_path = map(Path, sys.argv[1:5])
    report = {"seconds": {}}
    clock = time.perf_counter()

    def rss():
        lines = Path("/proc/self/status").read_text().splitlines()
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines
                if line.startswith(("VmHWM", "VmRSS"))}

    def lap(name):
        global clock
        now = time.perf_counter()
        report["seconds"][name] = round(now - clock, 2)
        clock = now

    model = onnxpress.load(source)
    report["initializer_types"] = sorted(
        {type(v.const_value).__name__ for v in model.graph.initializers.values()
         if v.const_value.nbytes > 2**20})
    report["rss_after_load"] = rss()["VmRSS"]
    lap("load")

    result = onnxpress.Pipeline([onnxpress.passes.Simplify()]).run(model)
    record = result.records[0]
    report["record"] = record.to_dict()
    report["lossless_checked"] = record.accuracy is not None
    lap("pipeline")

    onnxpress.save(result.model, out_path)
    lap("save")
    del model, result, record

    reloaded = onnxpress.load(out_path)
    report["reloaded_initializer_types"] = sorted(
        {type(v.const_value).__name__ for v in reloaded.graph.initializers.values()
         if v.const_value.nbytes > 2**20})
    feed = {"x": np.load(feed_path)}
    with runtime.Runner("cpu").session(reloaded) as session:
        outputs = session.run(feed)
    np.save(result_path, outputs["y"])
    lap("reload_and_run")

    report["peak_bytes"] = rss()["VmHWM"]
    print(json.dumps(report))
""")


def _weight(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Uniform weights with variance 1/rows, so activations keep a standard deviation near 1."""
    weight = rng.random((rows, cols), dtype=np.float32)
    weight -= np.float32(0.5)
    weight *= np.float32(np.sqrt(12.0 / rows))
    return weight


def _build_and_save(path: Path, x: np.ndarray) -> tuple[int, np.ndarray]:
    """Write the big model with external data; return its weight bytes and the reference output.

    y = (x @ W1 @ ... @ W9) + (b + one), with an Identity on the way and a dead branch, so
    simplify has something to fold and remove. The reference is computed in float64.
    """
    rng = np.random.default_rng(2024)
    x_value = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, HIDDEN]))
    nodes, initializers = [], []
    current = x_value
    reference = x.astype(np.float64)
    weight_bytes = 0
    for layer in range(LAYERS):
        rows, cols = (HIDDEN, WIDE) if layer % 2 == 0 else (WIDE, HIDDEN)
        array = _weight(rng, rows, cols)
        weight_bytes += array.nbytes
        reference = reference @ array
        weight = ir.Value(name=f"w{layer}", type=ir.TensorType(ir.DataType.FLOAT),
                          shape=ir.Shape([rows, cols]), const_value=ir.tensor(array, name=f"w{layer}"))
        initializers.append(weight)
        node = ir.node("MatMul", [current, weight], name=f"matmul{layer}")
        nodes.append(node)
        current = node.outputs[0]
        if layer == 0:
            identity = ir.node("Identity", [current], name="identity")
            nodes.append(identity)
            current = identity.outputs[0]
    width = WIDE if LAYERS % 2 else HIDDEN
    bias_array = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    bias = ir.Value(name="b", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([width]),
                    const_value=ir.tensor(bias_array, name="b"))
    one = ir.Value(name="one", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([width]),
                   const_value=ir.tensor(np.ones(width, np.float32), name="one"))
    initializers += [bias, one]
    folded = ir.node("Add", [bias, one], name="bias_plus_one")
    output = ir.node("Add", [current, folded.outputs[0]], name="add_bias")
    dead = ir.node("Sigmoid", [current], name="dead")
    nodes += [folded, output, dead]
    y = output.outputs[0]
    y.name = "y"
    y.type = ir.TensorType(ir.DataType.FLOAT)
    y.shape = ir.Shape([1, width])
    reference = reference + (bias_array.astype(np.float64) + 1.0)
    graph = ir.Graph([x_value], [y], nodes=nodes, initializers=initializers,
                     opset_imports={"": 18}, name="big")
    ir.save(ir.Model(graph, ir_version=10), path, external_data="big.data")
    return weight_bytes, reference


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    # pytest keeps the folders of its last three runs: don't leave gigabytes of weights there.
    for data in tmp_path.rglob("*.data"):
        data.unlink()


def test_model_over_2gb_loads_lazily_simplifies_saves_and_runs(workdir):
    source = workdir / "src" / "big.onnx"
    source.parent.mkdir()
    out_dir = workdir / "out"
    out_dir.mkdir()
    out_path = out_dir / "simplified.onnx"
    feed_path = workdir / "x.npy"
    result_path = workdir / "y.npy"

    x = np.random.default_rng(7).standard_normal((1, HIDDEN)).astype(np.float32)
    np.save(feed_path, x)
    start = time.perf_counter()
    weight_bytes, reference = _build_and_save(source, x)
    gc.collect()  # the weights must be gone from this process before the child starts
    build_seconds = time.perf_counter() - start
    assert weight_bytes > PROTOBUF_LIMIT_BYTES
    assert (source.parent / "big.data").stat().st_size >= weight_bytes

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out_path),
                            str(feed_path), str(result_path)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])

    peak = report["peak_bytes"]
    print(f"\nlarge model: weights {weight_bytes / 2**30:.2f} GiB; build+write {build_seconds:.1f}s; "
          f"child {report['seconds']}; child RSS after load {report['rss_after_load'] / 2**30:.2f} GiB, "
          f"peak memory (VmHWM) {peak / 2**30:.2f} GiB "
          f"= {peak / weight_bytes:.2f}x the weights")

    # Loading is lazy: the weights stay on disk as external tensors, before and after saving,
    # and loading reads none of them (the child then holds little more than its imports).
    assert report["initializer_types"] == ["ExternalTensor"]
    assert report["rss_after_load"] < 0.25 * weight_bytes, report["rss_after_load"]
    assert report["reloaded_initializer_types"] == ["ExternalTensor"]

    # onnxsim works within protobuf's limit, so simplify falls back to onnx-ir and says why.
    record = report["record"]
    stats = record["statistics"]
    assert stats["engine"] == "onnx-ir"
    assert "2 GB" in stats["fallback_reason"]
    assert record["modified"] is True
    assert stats["nodes_removed"] >= 3  # Identity, the folded bias Add, the dead Sigmoid
    assert record["nodes_after"] == LAYERS + 1
    assert record["checked"] and report["lossless_checked"]

    # Saving picks external data by itself: a small model file and <name>.<token>.data beside it.
    data_files = list(out_dir.glob("simplified.onnx.*.data"))
    assert len(data_files) == 1, sorted(p.name for p in out_dir.iterdir())
    assert data_files[0].stat().st_size >= weight_bytes
    assert out_path.stat().st_size < 2**20
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(["simplified.onnx", data_files[0].name])

    output = np.load(result_path)
    assert output.shape == reference.shape
    assert np.isfinite(output).all()
    scale = float(np.abs(reference).max())
    assert scale > 1.0  # not trivially zero
    np.testing.assert_allclose(output, reference, rtol=1e-3, atol=1e-3 * scale)

    assert peak < PEAK_FACTOR * weight_bytes, (
        f"peak memory {peak / 2**30:.2f} GiB is over {PEAK_FACTOR}x the "
        f"{weight_bytes / 2**30:.2f} GiB of weights")
