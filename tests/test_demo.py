import re
import subprocess
import sys

import onnxpress as ox


def test_demo_runs_end_to_end_and_passes(tmp_path):
    result = subprocess.run([sys.executable, "-m", "onnxpress.cli", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "verdict on target 'cpu': PASSED" in out
    for row in ("size", "latency median", "accuracy"):
        assert re.search(rf"^{row}\s+\S+", out, re.M), row
    accuracy = re.search(r"^accuracy\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert float(accuracy.group(1)) > 0.95 and float(accuracy.group(2)) > 0.95
    assert (tmp_path / "digits_cnn.onnx").exists()
    assert ox.inspect(tmp_path / "digits_cnn.onnx").ops["Conv"] == 3
