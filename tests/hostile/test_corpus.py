"""Every case of the hostile corpus through ``onnxpress inspect`` and ``onnxpress run``.

Each runs as a real command in its own process with a wall-clock guard, and must give its
expected exit code with one clear error line (no traceback); the input files are unchanged
afterwards; a refused run writes nothing; no output ever holds the foreign file's bytes.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxpress import samples

from .corpus import CASES, MARKER, build

RECIPE = samples.DIGITS_MODEL.parent / "recipe.toml"
# A hung command would be stopped by its own --time-limit; this guard catches onnxpress itself hanging.
GUARD_SECONDS = 240

pytestmark = pytest.mark.slow


def _hashes(root: Path) -> dict[str, str]:
    """Content hash of every regular file under root (links and special files by their kind)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "link->" + os.readlink(path)
        elif path.is_file() and not path.is_fifo():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_fifo():
            found[str(path)] = "fifo"
    return found


def _onnxpress(*args: str) -> subprocess.CompletedProcess:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "onnxpress.cli", *args], capture_output=True, text=True,
                            timeout=GUARD_SECONDS, errors="replace")
    result.seconds = time.monotonic() - start
    return result


def _judge(result: subprocess.CompletedProcess, outcome, what: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, f"{what}: traceback\n{result.stderr}"
    assert result.returncode == outcome.code, f"{what}: exit {result.returncode}\n{result.stderr[-2000:]}"
    if outcome.code != 0:
        assert lines and lines[-1].startswith("onnxpress: error: "), f"{what}: no error line\n{result.stderr}"
        assert re.search(outcome.pattern, lines[-1]), f"{what}: {lines[-1]!r} does not match {outcome.pattern!r}"
        assert sum(line.startswith("onnxpress: error: ") for line in lines) == 1


def test_the_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_case(case, tmp_path):
    model = build(case, tmp_path)
    before = _hashes(tmp_path)

    inspected = _onnxpress(*case.options, "inspect", str(model))
    _judge(inspected, case.inspect, f"{case.name}: inspect")
    if case.inspect.code == 0:
        assert "inputs:" in inspected.stdout

    out = tmp_path / "out"
    out.mkdir()
    ran = _onnxpress(*case.options, "run", str(model), "--recipe", str(RECIPE), "-o", str(out / "result.onnx"))
    _judge(ran, case.run, f"{case.name}: run")
    written = [p for p in out.rglob("*") if p.is_file()]
    if case.run.code == 0:
        assert (out / "result.onnx").is_file()
        # the output stands on its own: it loads and runs from its new folder
        assert _onnxpress("inspect", str(out / "result.onnx")).returncode == 0
    else:
        assert written == [], f"{case.name}: a refused run left {written}"
    for path in written:
        assert MARKER not in path.read_bytes(), f"{case.name}: {path} holds the foreign file's bytes"
    limit = float(dict(zip(case.options[::2], case.options[1::2])).get("--time-limit", 600))
    assert ran.seconds < limit * 2 + 60, f"{case.name}: run took {ran.seconds:.0f} s"

    after = _hashes(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(str(out))} == before, \
        f"{case.name}: an input file changed"
