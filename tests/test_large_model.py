"""A model past protobuf's 2 GB limit goes through the whole pipeline in less memory than its size.

The model is ``benchmarks/large.py``'s synthetic decoder (``benchmarks/_large_model.py``) just
past 2 GiB of float32 weights, written with external data once per test session. Two children:

- the Python API: ``load`` (lazy), a pipeline of ``simplify`` (checked lossless against the
  input, piecewise), ``save`` and a session over the saved model (piecewise);
- the command line: ``onnxpress run`` with simplify -> weightonly int4 -> validation on the
  ``cpu`` target, every process of its tree limited (``RLIMIT_DATA``) to less than the model's
  size, and the tree's summed resident memory (mapped weight pages included) polled.

Both must stay under the model's size (the issue's bound); the figures are printed.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import large_model_builder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(),
                       reason="peak memory is read from /proc (Linux only)"),
]

REPO = Path(__file__).resolve().parent.parent
PROTOBUF_LIMIT_BYTES = 2**31
# The bounds, in multiples of the model's weight bytes: the API child's own peak (VmHWM), and
# the command line's whole process tree (the CLI, its sandbox worker, the probes it starts).
API_PEAK_FACTOR = 0.6
CLI_PEAK_FACTOR = 1.0
# Each process of the command line's tree may map at most this share of the model as private
# writable memory (RLIMIT_DATA): a copy of the weights in memory fails at once.
DATA_LIMIT_FACTOR = 0.75

API_CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    import numpy as np
    import onnx_ir as ir

    import onnxpress
    from onnxpress import runtime

    source, out_path = map(Path, sys.argv[1:3])

    def rss(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    report = {}
    model = onnxpress.load(source)
    report["lazy"] = all(isinstance(v.const_value, ir.ExternalTensor)
                         for v in model.graph.initializers.values() if v.const_value.nbytes > 2**20)
    report["rss_after_load"] = rss("VmRSS")
    feeds = [{"input_ids": np.arange(12, dtype=np.int64).reshape(1, 12) * 7}]
    result = onnxpress.Pipeline([onnxpress.passes.Simplify()], golden_samples=1).run(model, feeds)
    report["record"] = result.records[0].to_dict()
    onnxpress.save(result.model, out_path)
    reloaded = onnxpress.load(out_path)
    with runtime.Runner("cpu").session(reloaded) as session:
        report["piecewise"] = type(session).__name__
        logits = session.run(feeds[0])["logits"]
    before = runtime.Runner("cpu").outputs(model, feeds)[0]["logits"]
    report["max_diff"] = float(np.abs(logits - before).max())
    report["logits_shape"] = list(logits.shape)
    report["peak"] = rss("VmHWM")
    print(json.dumps(report))
""")

RECIPE = """description = "test_large_model: simplify, weightonly int4"
target = "cpu"

[pipeline]
golden_samples = 1
accuracy_floor = 0.0   # random weights: the verdict is reported, not held to a floor

[[passes]]
name = "simplify"

[[passes]]
name = "weightonly"
bits = 4
block_size = 32
algorithm = "rtn"
measure_latency = false
"""




@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """The decoder just past 2 GiB (hidden 2048, vocabulary 32000), built in a child process so
    that this process never holds its weights; removed after the module's tests."""
    builder = large_model_builder()
    shape = builder.shape_for(2.01)
    folder = tmp_path_factory.mktemp("large")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _large_model as b; from pathlib import Path; "
            "b.build(Path(sys.argv[2]), b.Shape(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))")
    subprocess.run([sys.executable, "-c", code, str(REPO / "benchmarks"), str(folder), str(shape.hidden),
                    str(shape.layers), str(shape.vocab)], check=True, timeout=600)
    path = folder / "model.onnx"
    assert shape.weight_bytes > PROTOBUF_LIMIT_BYTES
    assert (folder / builder.DATA_NAME).stat().st_size >= shape.weight_bytes
    yield path, shape.weight_bytes
    for data in folder.parent.rglob("*.data"):  # pytest keeps recent temporary folders: not gigabytes
        data.unlink()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_api_loads_lazily_simplifies_saves_and_runs_piecewise(decoder, tmp_path):
    source, weight_bytes = decoder
    out_path = tmp_path / "simplified.onnx"
    child = subprocess.run([sys.executable, "-c", API_CHILD, str(source), str(out_path)],
                           capture_output=True, text=True, timeout=900, env=_env())
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\nlarge model (API): {weight_bytes / 2**30:.2f} GiB of weights; peak (VmHWM) "
          f"{report['peak'] / 2**30:.2f} GiB = {report['peak'] / weight_bytes:.2f}x")
    assert report["lazy"] and report["rss_after_load"] < 0.1 * weight_bytes
    stats = report["record"]["statistics"]
    assert stats["engine"] == "onnx-ir" and "large" in stats["fallback_reason"]
    assert report["record"]["accuracy"] is not None  # checked lossless against the input, piecewise
    assert report["piecewise"] == "PiecewiseSession"
    assert report["logits_shape"] == [1, 12, 32000]
    assert report["max_diff"] < 1e-3
    data_files = list(tmp_path.glob("simplified.onnx.*.data"))
    assert len(data_files) == 1 and data_files[0].stat().st_size >= 0.99 * weight_bytes
    assert out_path.stat().st_size < 2**20
    assert report["peak"] < API_PEAK_FACTOR * weight_bytes


def _tree_rss(root: int) -> int:
    """Summed VmRSS of ``root`` and its descendants, in bytes."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{pid}/task"):
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return total


def test_cli_weightonly_pipeline_under_a_memory_limit(decoder, tmp_path):
    source, weight_bytes = decoder
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calibration.npz", input_ids=rng.integers(0, 1000, size=(2, 16), dtype=np.int64))
    np.savez(tmp_path / "evaluation.npz", input_ids=rng.integers(0, 1000, size=(2, 16), dtype=np.int64))
    out = tmp_path / "out"
    out.mkdir()
    limit = int(DATA_LIMIT_FACTOR * weight_bytes)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    command = [str(Path(sys.executable).with_name("onnxpress")), "run", str(source), "--recipe", str(recipe),
               "-o", str(out / "model.onnx"), "--target", "cpu", "--calibration", str(tmp_path / "calibration.npz"),
               "--data", str(tmp_path / "evaluation.npz"), "--external-data",
               "--report", str(tmp_path / "report")]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(), preexec_fn=limited)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(process.pid))
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    print(f"\nlarge model (CLI weightonly): {weight_bytes / 2**30:.2f} GiB of weights; {seconds:.0f} s; "
          f"tree peak {peak / 2**30:.2f} GiB = {peak / weight_bytes:.2f}x; data limit {limit / 2**30:.2f} GiB")
    # 1: the verdict is FAILED (int4 random weights miss cosine 0.99), and it is given.
    assert process.returncode in (0, 1), stderr[-4000:]
    assert "verdict on target 'cpu'" in stdout, stdout[-2000:] + stderr[-2000:]
    assert "MatMulNBits" in (tmp_path / "report" / "report.json").read_text()
    files = sorted(p.name for p in out.iterdir())
    data = [name for name in files if name.startswith("model.onnx.") and name.endswith(".data")]
    assert len(data) == 1 and (out / data[0]).stat().st_size < 0.2 * weight_bytes
    assert peak < CLI_PEAK_FACTOR * weight_bytes
