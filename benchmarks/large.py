"""Peak memory, wall time and disk use of compressing a model past protobuf's 2 GB limit.

Issue 17's measurement. A synthetic decoder-only transformer (``_large_model.py``: token
embedding, pre-norm blocks of single-head causal attention and a Relu MLP, final norm and LM
head; ``input_ids`` int64 [batch, sequence], both dynamic) with float32 weights just past
``--size-gb`` GiB (default 2.2: hidden 2048, vocabulary 32000, 10 blocks, 2.36 GiB) is built
once from a fixed seed into ``--work DIR`` with external data, and reused while its
``build.json`` matches. The build streams each weight to the data file and never holds the
model; a session of ONNX Runtime then loads it and runs one feed.

Rows, each in a fresh process started from this (small) process:

- ``onnxpress weightonly``: ``onnxpress run`` with a recipe of simplify, then weightonly
  (4 bits, block 32, round to nearest), validated on the ``cpu`` target;
- ``onnxpress lowrank+quantize``: simplify, lowrank (SVD, ``rank_ratio`` 0.25; its default
  ``compensate = "auto"`` refits every factored layer on the calibration data, one layer at a
  time, unless ``--no-compensate``), quantize (``mode = "dynamic"``), validated on ``cpu``;
- ``ORT quantize_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` on the model's path
  (it ``onnx.load``s the file itself) with ``use_external_data_format=True``;
- ``ORT MatMulNBits``: ``onnx.load``, ``MatMulNBitsQuantizer`` (4 bits, block 32, symmetric),
  saved with external data;
- ``ORT session (floor)``: an ``InferenceSession`` on the fp32 file and one feed.

The onnxpress rows run the CLI (``-q --external-data``, ``--calibration`` and ``--data`` are
small ``.npz`` files of random token ids: 4 samples of batch 1, sequence 16 each). Both
recipes set ``accuracy_floor = 0.0``: random weights have a flat spectrum, so low rank (and
int4) lose much of the output, and a floor would stop the run before validation; the verdict
(PASSED / FAILED with the cosine) is reported instead. The CLI runs sandboxed steps in a
spawned worker process, so memory is measured over the whole process tree:

- ``tree MB``: the peak over time of the summed ``VmRSS`` of the child and all its
  descendants, polled every 50 ms from /proc (a spike shorter than that can be missed; pages
  of a file mapped by two processes count twice);
- ``proc MB``: the largest single-process peak: ``ru_maxrss`` from ``wait4`` on the child
  (which covers its waited-for descendants) and each descendant's ``VmHWM`` as last polled.
  It includes this driver's resident memory at fork time, which is why the driver never
  loads the model.

``x weights`` is ``tree MB`` over the model's float32 weight bytes (the issue's goal: <= 1.0).
Both count memory-mapped weight pages, as the kernel does. ``out MB`` is the size of every
file the method wrote in its output folder; ``tmp MB`` the peak size of the ``TMPDIR`` the
child was given (polled every second); ``s`` the wall time of the whole child, imports and
(for onnxpress) the per-pass checks and validation included. A child that fails, is killed
(out of memory: signal 9) or runs past ``--timeout`` (default 1200 s) is a row with its last
error line. Outputs are deleted after each row unless ``--keep``. MB are 2**20 bytes.

Run: `.venv/bin/python benchmarks/large.py [--work DIR] [--size-gb 2.2] [--quick]
[--methods a,b] [--json PATH] [--timeout S] [--keep] [--no-compensate]`; ``--quick`` builds a 0.3 GiB model
(hidden 1024, 4 blocks) for a smoke run. Method names: ``weightonly``, ``lowrank``,
``ort_dynamic``, ``ort_nbits``, ``ort_session``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _large_model  # benchmarks/_large_model.py: this script runs as a file, so its folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
MB = 2**20
SEED = 2024
SEQUENCE = 16
SAMPLES = 4
_POLL_S = 0.05
_DISK_POLL_S = 1.0
_ONNXPRESS = Path(sys.executable).with_name("onnxpress")

_COMMON = """target = "cpu"

[pipeline]
check = true
golden_samples = 2
accuracy_floor = 0.0   # random weights: report the verdict rather than stop at a floor

[[passes]]
name = "simplify"
"""
RECIPES = {
    "weightonly": 'description = "large.py: simplify, weightonly int4"\n' + _COMMON + """
[[passes]]
name = "weightonly"
bits = 4
block_size = 32
algorithm = "rtn"
measure_latency = false
""",
    "lowrank": 'description = "large.py: simplify, lowrank, dynamic int8"\n' + _COMMON + """
[[passes]]
name = "lowrank"
method = "svd"
rank_ratio = 0.25

[[passes]]
name = "quantize"
mode = "dynamic"
""",
}
LABELS = {"weightonly": "onnxpress weightonly", "lowrank": "onnxpress lowrank+quantize",
          "ort_dynamic": "ORT quantize_dynamic", "ort_nbits": "ORT MatMulNBits", "ort_session": "ORT session (floor)"}


@dataclasses.dataclass
class Row:
    """One method's measurements."""

    method: str
    label: str
    seconds: float = 0.0
    tree_mb: float = 0.0
    process_mb: float = 0.0
    output_mb: float = 0.0
    temp_mb: float = 0.0
    status: str = ""
    ok: bool = False


# ---------------------------------------------------------------- children (run with --child JOB)

def _child(job: dict[str, Any]) -> None:
    """One method (or the build) in this fresh process; failures propagate to stderr."""
    kind = job["kind"]
    if kind == "build":
        shape = _large_model.Shape(**job["shape"])
        path = _large_model.build(Path(job["folder"]), shape, seed=job["seed"])
        outputs = _session_run(path)
        print(json.dumps({"logits_shape": list(outputs.shape), "finite": bool(np.isfinite(outputs).all())}))
    elif kind == "ort_session":
        _session_run(Path(job["model"]))
    elif kind == "ort_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(job["model"], job["output"], weight_type=QuantType.QInt8, use_external_data_format=True)
    elif kind == "ort_nbits":
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        model = onnx.load(job["model"])
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=32, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(job["output"], use_external_data_format=True)
    else:
        raise ValueError(f"large.py: unknown child job {kind!r}")


def _session_run(path: Path) -> np.ndarray:
    """Load ``path`` in an ONNX Runtime session and run one feed of SEQUENCE tokens."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, 1000, size=(1, SEQUENCE), dtype=np.int64)
    return session.run(None, {"input_ids": ids})[0]


# ---------------------------------------------------------------- measuring a process tree

def _read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes ({} when it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status
                    if line.startswith(("VmRSS:", "VmHWM:"))}
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        parent = int(text[text.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid
        children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def run_tree(command: list[str], folder: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``command`` in ``folder`` with ``folder/tmp`` as TMPDIR; measure its process tree.

    Returns the exit code, wall seconds, peak summed VmRSS of the tree, the largest
    single-process peak, the peak size of the temp folder, and stdout/stderr texts.
    """
    temp = folder / "tmp"
    temp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TMPDIR"] = str(temp)
    stdout_path, stderr_path = folder / "stdout.txt", folder / "stderr.txt"
    tree_peak = process_peak = temp_peak = 0
    timed_out = False
    start = time.perf_counter()
    next_disk = start
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                process_peak = max(process_peak, usage.ru_maxrss * 1024)
                break
            figures = [_read_status(p) for p in _descendants(process.pid)]
            tree_peak = max(tree_peak, sum(f.get("VmRSS", 0) for f in figures))
            process_peak = max([process_peak, *(f.get("VmHWM", 0) for f in figures)])
            now = time.perf_counter()
            if now >= next_disk:
                temp_peak = max(temp_peak, _folder_bytes(temp))
                next_disk = now + _DISK_POLL_S
            if now - start > timeout_s:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
            time.sleep(_POLL_S)
    seconds = time.perf_counter() - start
    temp_peak = max(temp_peak, _folder_bytes(temp))
    shutil.rmtree(temp, ignore_errors=True)
    return {"returncode": process.returncode, "timed_out": timed_out, "seconds": seconds,
            "tree_bytes": tree_peak, "process_bytes": process_peak, "temp_bytes": temp_peak,
            "stdout": stdout_path.read_text(errors="replace"), "stderr": stderr_path.read_text(errors="replace")}


def _error_line(result: dict[str, Any], timeout_s: float) -> str:
    """Why a child failed, in one line."""
    if result["timed_out"]:
        return f"timed out after {timeout_s:.0f} s"
    code = result["returncode"]
    lines = [line.strip() for line in result["stderr"].splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    last = (errors or lines or [""])[-1]
    if code < 0:
        reason = f"killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
        return f"{reason}; {last}" if last else reason
    return last or f"exit status {code}"


# ---------------------------------------------------------------- the benchmark

def build_model(work: Path, shape: _large_model.Shape, timeout_s: float) -> Path:
    """Build the model into ``work`` in a child process, unless ``build.json`` says it is there."""
    folder = work / f"model-h{shape.hidden}-l{shape.layers}-v{shape.vocab}-s{SEED}"
    marker = folder / "build.json"
    wanted = {"shape": dataclasses.asdict(shape), "seed": SEED}
    if marker.exists() and json.loads(marker.read_text()).get("config") == wanted:
        print(f"model: reusing {folder}", file=sys.stderr, flush=True)
        return folder / "model.onnx"
    shutil.rmtree(folder, ignore_errors=True)
    print(f"model: building {shape} ({shape.weight_bytes / 2**30:.2f} GiB) in {folder} ...",
          file=sys.stderr, flush=True)
    job = {"kind": "build", "folder": str(folder), "shape": dataclasses.asdict(shape), "seed": SEED}
    scratch = work / "build-run"
    result = run_tree([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)], scratch, timeout_s)
    if result["returncode"] != 0:
        raise SystemExit(f"large.py: building the model failed: {_error_line(result, timeout_s)}")
    check = json.loads(result["stdout"].strip().splitlines()[-1])
    marker.write_text(json.dumps({"config": wanted, "seconds": result["seconds"],
                                  "peak_process_mb": result["process_bytes"] / MB, "session_check": check}))
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"model: built in {result['seconds']:.0f} s (peak {result['process_bytes'] / MB:.0f} MB); "
          f"ORT session ran one feed: logits {check['logits_shape']}, finite {check['finite']}",
          file=sys.stderr, flush=True)
    return folder / "model.onnx"


def write_data(work: Path) -> tuple[Path, Path]:
    """Calibration and evaluation token ids: SAMPLES rows of SEQUENCE each (seeds 1 and 2)."""
    paths = []
    for name, seed in (("calibration", 1), ("evaluation", 2)):
        path = work / f"{name}.npz"
        ids = np.random.default_rng(seed).integers(0, 1000, size=(SAMPLES, SEQUENCE), dtype=np.int64)
        np.savez(path, input_ids=ids)
        paths.append(path)
    return paths[0], paths[1]


def command_for(method: str, model: Path, folder: Path, calibration: Path, evaluation: Path,
                compensate: bool) -> list[str]:
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    if method in RECIPES:
        recipe = folder / "recipe.toml"
        text = RECIPES[method]
        if method == "lowrank" and not compensate:
            text = text.replace("rank_ratio = 0.25\n", "rank_ratio = 0.25\ncompensate = false\n")
        recipe.write_text(text)
        return [str(_ONNXPRESS), "-q", "run", str(model), "--recipe", str(recipe), "-o", str(out / "model.onnx"),
                "--target", "cpu", "--calibration", str(calibration), "--data", str(evaluation),
                "--external-data"]
    job = {"kind": method, "model": str(model), "output": str(out / "model.onnx")}
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]


def _verdict(stdout: str) -> str:
    """The CLI's verdict and the line with the output's cosine, if printed."""
    lines = stdout.splitlines()
    verdict = next((line.strip() for line in lines if line.startswith("verdict on target")), "")
    cosine = next((line.strip() for line in lines if line.startswith("output logits")), "")
    return "; ".join(part for part in (verdict, cosine) if part)


def run_method(method: str, model: Path, work: Path, data: tuple[Path, Path], timeout_s: float,
               keep: bool, compensate: bool = True) -> Row:
    folder = work / "runs" / method
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"[{LABELS[method]}] running ...", file=sys.stderr, flush=True)
    result = run_tree(command_for(method, model, folder, *data, compensate), folder, timeout_s)
    row = Row(method, LABELS[method], seconds=result["seconds"], tree_mb=result["tree_bytes"] / MB,
              process_mb=result["process_bytes"] / MB, output_mb=_folder_bytes(folder / "out") / MB,
              temp_mb=result["temp_bytes"] / MB)
    verdict = _verdict(result["stdout"])
    # The CLI exits 1 on a FAILED verdict: the run completed, and the verdict is the finding.
    row.ok = not result["timed_out"] and (result["returncode"] == 0 or bool(verdict))
    row.status = (verdict or "ok") if row.ok else "failed: " + _error_line(result, timeout_s)
    print(f"[{LABELS[method]}] {result['seconds']:.0f} s, tree peak {row.tree_mb:.0f} MB: {row.status}",
          file=sys.stderr, flush=True)
    if not keep:
        shutil.rmtree(folder / "out", ignore_errors=True)
    return row


def table(rows: list[Row], weight_bytes: int, title: str) -> str:
    header = ["method", "tree MB", "x weights", "proc MB", "s", "out MB", "tmp MB", "status"]
    lines = [header] + [[row.label, f"{row.tree_mb:.0f}", f"{row.tree_mb * MB / weight_bytes:.2f}",
                         f"{row.process_mb:.0f}", f"{row.seconds:.0f}", f"{row.output_mb:.0f}",
                         f"{row.temp_mb:.0f}", row.status[:160]] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) if 0 < i < len(header) - 1 else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join([title, *text])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the model and the runs (default: a temp dir)")
    parser.add_argument("--size-gb", type=float, default=2.2, help="GiB of float32 weights (default 2.2)")
    parser.add_argument("--quick", action="store_true", help="a 0.3 GiB model for a smoke run")
    parser.add_argument("--methods", default=",".join(LABELS), help="comma-separated, of: " + ", ".join(LABELS))
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per child (default 1200)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep each method's output files")
    parser.add_argument("--no-compensate", action="store_true",
                        help="lowrank without its calibrated refit (compensate = false; default: \"auto\")")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(json.loads(args.child))
        return
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(methods) - set(LABELS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(LABELS)}")
    size = 0.3 if args.quick else args.size_gb
    temporary = None
    if args.work is None:
        temporary = tempfile.mkdtemp(prefix="onnxpress-large-")
        args.work = Path(temporary)
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()
    try:
        shape = _large_model.shape_for(size)
        model = build_model(work, shape, args.timeout)
        data_bytes = (model.parent / _large_model.DATA_NAME).stat().st_size
        data = write_data(work)
        rows = [run_method(m, model, work, data, args.timeout, args.keep, not args.no_compensate)
                for m in methods]
        title = (f"== synthetic decoder h={shape.hidden} layers={shape.layers} vocab={shape.vocab}: "
                 f"{shape.weight_bytes / MB:.0f} MB of float32 weights ({data_bytes / MB:.0f} MB external data); "
                 f"{os.cpu_count()} CPUs")
        print(table(rows, shape.weight_bytes, title), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"shape": dataclasses.asdict(shape), "weight_bytes": shape.weight_bytes,
                                             "rows": [dataclasses.asdict(row) for row in rows]}, indent=2))
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    main()
