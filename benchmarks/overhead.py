"""What onnxpress's own machinery costs around the passes: ``onnxpress run`` beside a bare ONNX
Runtime session on the same model, with the serialisations and child processes it needed.

For each case (the digits demo recipe; MiniLM with simplify + quantize) it times, in fresh
processes and interleaved rounds (median of ``--rounds``):

- ``bare``: ``python -c`` importing onnxruntime, building one session on the model file and
  running one feed: the floor any tool pays to touch the model;
- ``run``: ``python -m onnxpress.cli run MODEL --recipe R -o OUT``, as a user runs it;

and counts, in one more ``run`` process with counters wrapped around library functions (which
imports them early, so it is not timed), serialisations of a model to protobuf
(``onnx_ir.serde.serialize_model`` calls: our runner's and the libraries' boundaries alike),
distinct models ONNX Runtime was given, and child processes started (multiprocessing and
subprocess). The counting wraps library functions rather than reading onnxpress's own
counters, so ``--python`` can name the interpreter of an environment where an older onnxpress
is installed, to measure it the same way.

    python benchmarks/overhead.py [--rounds 3] [--python PATH] [--cases digits,minilm]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# Runs `onnxpress run` in this process with counters around the library calls.
_COUNTED_RUN = textwrap.dedent("""
    import hashlib, json, multiprocessing.process, subprocess, sys, time
    started = time.perf_counter()
    import onnx_ir

    counts = {"serialisations": 0, "children": 0}
    models = set()
    serialize = onnx_ir.serde.serialize_model

    def counted_serialize(*args, **kwargs):
        counts["serialisations"] += 1
        return serialize(*args, **kwargs)

    onnx_ir.serde.serialize_model = counted_serialize
    start = multiprocessing.process.BaseProcess.start

    def counted_start(self):
        counts["children"] += 1
        return start(self)

    multiprocessing.process.BaseProcess.start = counted_start
    popen = subprocess.Popen.__init__

    def counted_popen(self, *args, **kwargs):
        counts["children"] += 1
        return popen(self, *args, **kwargs)

    subprocess.Popen.__init__ = counted_popen
    import onnxruntime
    session = onnxruntime.InferenceSession.__init__

    def counted_session(self, source, *args, **kwargs):
        key = hashlib.sha1(source if isinstance(source, bytes) else str(source).encode()).hexdigest()
        models.add(key)
        return session(self, source, *args, **kwargs)

    onnxruntime.InferenceSession.__init__ = counted_session
    from onnxpress.cli import main
    code = main(sys.argv[1:])
    counts["distinct_models_in_process"] = len(models)
    counts["seconds"] = time.perf_counter() - started
    print("OVERHEAD " + json.dumps(counts), file=sys.stderr)
    sys.exit(code)
""")

_BARE = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    feed = dict(np.load(sys.argv[2]))
    session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
""")


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stderr


def _digits(folder: Path) -> tuple[Path, Path, Path]:
    from onnxpress import samples

    feed = folder / "feed.npz"
    import numpy as np

    np.savez(feed, **samples.digits_calibration().take(1)[0])
    # The bundled recipe's passes and calibration (written out, so that older versions read it too).
    recipe = folder / "recipe.toml"
    recipe.write_text(textwrap.dedent(f"""
        target = "cpu"
        [pipeline]
        check = true
        golden_samples = 8
        [calibration]
        source = "{samples.DIGITS_CALIB}"
        limit = 200
        [[passes]]
        name = "simplify"
        [[passes]]
        name = "quantize"
        method = "percentile"
        bias_correction = true
    """))
    return samples.DIGITS_MODEL, recipe, feed


def _minilm(folder: Path) -> tuple[Path, Path, Path]:
    import numpy as np

    import onnxpress as ox
    from onnxpress.samples import minilm

    model = folder / "minilm.onnx"
    ox.save(minilm.export(), model)
    feeds = minilm.feeds(minilm.CALIBRATION_SENTENCES[:100])
    calib = folder / "calib"
    calib.mkdir()
    for index, feed in enumerate(feeds):
        np.savez(calib / f"{index:04d}.npz", **feed)
    np.savez(folder / "feed.npz", **feeds[0])
    recipe = folder / "recipe.toml"
    recipe.write_text(textwrap.dedent(f"""
        description = "MiniLM: simplify, then int8 (the transformer preset: dynamic, SmoothQuant)"
        target = "cpu"
        [calibration]
        source = "{calib}"
        [[passes]]
        name = "simplify"
        [[passes]]
        name = "quantize"
    """))
    return model, recipe, folder / "feed.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose onnxpress is measured")
    parser.add_argument("--cases", default="digits,minilm")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = subprocess.run([args.python, "-c", "import onnxpress; print(onnxpress.__file__)"],
                           capture_output=True, text=True, env=env).stdout.strip()
    print(f"onnxpress measured: {where}")
    header = (f"{'case':<8}{'bare s':>9}{'run s':>9}{'ratio':>8}{'serialisations':>16}{'models to ORT':>15}"
              f"{'children':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as scratch:
        root = Path(scratch)
        for case in args.cases.split(","):
            folder = root / case
            folder.mkdir()
            model, recipe, feed = {"digits": _digits, "minilm": _minilm}[case](folder)
            bare, run = [], []
            for round_ in range(args.rounds):
                seconds, _ = _timed([args.python, "-c", _BARE, str(model), str(feed)], env, folder)
                bare.append(seconds)
                seconds, _ = _timed([args.python, "-m", "onnxpress.cli", "run", str(model), "--recipe",
                                     str(recipe), "-o", str(folder / f"out{round_}.onnx")], env, folder)
                run.append(seconds)
            _, err = _timed([args.python, "-c", _COUNTED_RUN, "run", str(model), "--recipe", str(recipe),
                             "-o", str(folder / "counted.onnx")], env, folder)
            counts = json.loads(err.split("OVERHEAD ", 1)[1].splitlines()[0])
            rows.append((case, statistics.median(bare), statistics.median(run), counts))
    print(header)
    for case, bare_s, run_s, last in rows:
        print(f"{case:<8}{bare_s:>9.2f}{run_s:>9.2f}{run_s / bare_s:>8.1f}{last['serialisations']:>16}"
              f"{last['distinct_models_in_process']:>15}{last['children']:>10}")
    print("serialisations: onnx_ir.serde.serialize_model calls in the run process (the runner's and the "
          "libraries' boundaries); models to ORT: distinct models given to InferenceSession in that process "
          "(the sandbox worker's are not seen); children: processes it started.")


if __name__ == "__main__":
    main()
