"""A save killed with SIGKILL at any moment leaves the old model or the new one, never a mix."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import onnxpress as ox

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CHILD = textwrap.dedent("""
    import sys, numpy as np, onnx_ir as ir, onnxpress as ox
    value = float(sys.argv[2])
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 2048]))
    weight = ir.Value(name="w", const_value=ir.tensor(np.full((2048, 8192), value, np.float32), name="w"))
    node = ir.node("MatMul", [x, weight], name="mm")
    node.outputs[0].name = "y"
    node.outputs[0].type, node.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([1, 8192])
    graph = ir.Graph([x], [node.outputs[0]], nodes=[node], initializers=[weight], opset_imports={"": 18})
    print("ready", flush=True)
    ox.save(ir.Model(graph, ir_version=10), sys.argv[1], external_data=True)
    print("saved", flush=True)
""")


def _value_of(path) -> float:
    model = ox.load(path)
    return float(model.graph.initializers["w"].const_value.numpy()[0, 0])


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.5, 1.0])
def test_a_killed_save_leaves_a_whole_model(tmp_path, delay):
    target = tmp_path / "model.onnx"
    subprocess.run([sys.executable, "-c", CHILD, str(target), "1.0"], check=True, capture_output=True)
    assert _value_of(target) == 1.0
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), "2.0"], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)  # somewhere inside the 64 MiB write, or after it
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert _value_of(target) in (1.0, 2.0)  # loads whole: old or new, never a mix
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible[0] == "model.onnx" and len(visible) <= 3  # the model, its data, perhaps an orphan new data file
    # The next save clears whatever the killed one left behind.
    subprocess.run([sys.executable, "-c", CHILD, str(target), "3.0"], check=True, capture_output=True)
    assert _value_of(target) == 3.0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == "model.onnx" and names[1].endswith(".data")  # nothing left over
