"""Precisions side by side with the peers, in one run: fp16, weight-only int4/int8, fixed point, binary.

Three sections, each a script of its own in this folder that also runs alone:

- ``precision_fp16.py``: onnxpress's ``fp16`` pass against onnxconverter-common's
  ``convert_float_to_float16`` (its defaults, and ``keep_io_types=True``) on MiniLM, a block with a
  -3.4e38 attention mask and a LayerNorm epsilon of 1e-12, the digits CNN, ResNet-18 and corpus
  CNNs and transformers: error and cosine against fp32, NaN/Inf counts, nodes kept fp32 and why.
- ``precision_weightonly.py``: MiniLM's weights to int4 (blocks of 32 and 128) and int8 with RTN,
  HQQ, GPTQ and AWQ, against NNCF's ``compress_weights`` (INT4 sym/asym) and ONNX Runtime's
  ``MatMulNBitsQuantizer`` (RTN, HQQ): size, cosine, latency at 1 and 128 tokens against fp32
  and dynamic int8.
- ``precision_lowbit.py``: fixed-point int8 (power-of-two scales) and binary weights on the digits
  CNN and ResNet-18, against free-scale int8 and fp32.

Each section runs in a fresh interpreter (its own imports and memory); this script runs them
one after another, never side by side, so their latencies are not taken while another works.

    python benchmarks/precision.py                       # every section
    python benchmarks/precision.py --sections lowbit     # some of them
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = {"fp16": "precision_fp16.py", "weightonly": "precision_weightonly.py", "lowbit": "precision_lowbit.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    failed = []
    for section in chosen:
        print(f"\n{'=' * 30} {section} ({SECTIONS[section]}) {'=' * 30}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / SECTIONS[section])], cwd=HERE.parent, check=False)
        print(f"[{section}: {time.perf_counter() - start:.0f} s, exit code {done.returncode}]", flush=True)
        if done.returncode != 0:
            failed.append(section)
    if failed:
        print(f"\nsections that failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
