"""Measure one method alone in a fresh child process: its wall time and peak resident memory.

Shared by the benchmark scripts that compare compressors (``quantize.py``, ``recover.py``).
The parent starts the script again with ``--child JOB`` (``run_child``); the child does its
imports, reads its calibration feeds, then calls ``measure`` around the work, which prints one
line marked ``RESULT`` carrying the measurements as JSON. The scripts run as files, so this
module is imported from their folder (``import _measure``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULT = "RESULT "  # marks the child's stdout line that carries its measurements (JSON)
MB = 2 ** 20


def measure(work: Callable[[], dict[str, Any]], refusals: tuple[type[BaseException], ...] = ()) -> None:
    """Run ``work`` and print its wall time, peak memory and what it returned on one ``RESULT`` line.

    The memory baseline is taken here, so the caller does its imports and reads its feeds
    first: ``step_mb`` is what the work added over the process as it was. An exception of
    ``refusals`` (a method refusing a model cleanly) is printed as the result's ``error``;
    anything else crashes the child and the parent reports its last line.
    """
    base_mb = status_mb("VmRSS")
    start = time.perf_counter()
    try:
        extra = work()
    except refusals as err:
        print(RESULT + json.dumps({"error": f"refused: {err}"}), flush=True)
        return
    seconds = time.perf_counter() - start
    peak_mb = status_mb("VmHWM")
    print(RESULT + json.dumps({"seconds": seconds, "peak_mb": peak_mb, "step_mb": peak_mb - base_mb, **extra}),
          flush=True)


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB.

    VmHWM (peak resident) belongs to this process image; ru_maxrss would carry a parent's peak
    over fork and exec.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / MB
    raise KeyError(key)


def run_child(script: Path, job: dict[str, Any], cwd: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``script --child JSON(job)`` in a fresh interpreter and return what its ``measure``
    printed; ``{"error": ...}`` when it timed out, or crashed (its last stderr line)."""
    try:
        done = subprocess.run([sys.executable, str(script), "--child", json.dumps(job)],
                              capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit status {done.returncode}"}


def write_feeds(feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    """Store feeds of any shapes in one ``.npz`` file (keys ``index:input``)."""
    np.savez(path, **{f"{i}:{name}": array for i, feed in enumerate(feeds) for name, array in feed.items()})


def read_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """The feeds ``write_feeds`` stored, in order."""
    feeds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            index, name = key.split(":", 1)
            feeds.setdefault(int(index), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]
