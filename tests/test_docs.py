"""The walkthroughs in ``docs/`` run as written: every code block of every ``docs/*.md``.

How a doc's blocks are treated (for whoever writes or edits a doc):

- A block whose first line is ``# file: NAME`` (in any fence: ``python``, ``toml``, ``sh``...)
  is not run: its text is written to ``NAME`` in the working folder, at that point of the
  walkthrough (``mymodel.py``, ``recipe.toml``, a target profile).
- ```` ```python ```` blocks run in order in ONE Python process per doc, in one namespace:
  a later block sees the names an earlier one defined.
- ```` ```sh ```` blocks run with ``bash`` under ``set -euo pipefail``, with the virtual
  environment's ``bin`` first on ``PATH`` (``onnxpress``, ``python``). A command shown failing
  on purpose is written ``cmd || echo "exit code $?"``.
- Python and sh blocks run in document order, in the same fresh temporary working folder per
  doc, so a block sees the files the blocks before it wrote. ``$ONNXPRESS_CACHE`` points into
  that folder: no run reuses another's results.
- Any other fence (``text``, ``console``, ``toml``, ``json``...) is not run: commands that
  cannot run here (building ONNX Runtime) go in ``console`` blocks, output in ``text`` blocks.
- ``<!-- expect: LINE -->`` (one or more, on lines of their own) before a ```` ```text ````
  block: LINE must appear in the output (stdout and stderr) of the last block that ran before
  it, and in the text block itself, so the output a doc shows cannot silently rot. Pick lines
  that do not change from run to run (verdicts, op lists, shapes), not timings.

Nothing downloads: the docs use the bundled samples (``onnxpress.samples``) or models they
train or build in a few seconds.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
RUN = ("python", "sh")

_FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
_EXPECT = re.compile(r"^<!--\s*expect:\s*(.*?)\s*-->\s*$")
_FILE = re.compile(r"^#\s*file:\s*(\S+)\s*$")


@dataclass
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    expects: list[str] = field(default_factory=list)
    file: str | None = None

    @property
    def runs(self) -> bool:
        return self.file is None and self.lang in RUN


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order, each with the expect lines before it."""
    blocks: list[Block] = []
    expects: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        expect = _EXPECT.match(line)
        fence = _FENCE.match(line)
        if expect:
            expects.append(expect.group(1))
        elif fence:
            start = index
            index += 1
            body = []
            while index < len(lines) and lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            if index == len(lines):
                raise AssertionError(f"line {start + 1}: the code block is not closed")
            block = Block(fence.group(1).lower(), "\n".join(body) + "\n", start + 1, expects)
            named = _FILE.match(body[0]) if body else None
            if named:
                block.file = named.group(1)
                block.code = "\n".join(body[1:]) + "\n"
            blocks.append(block)
            expects = []
        elif line.strip() and expects and not line.startswith("<!--"):
            raise AssertionError(f"line {index + 1}: an expect comment must come right before a text block")
        index += 1
    for block in blocks:
        if block.expects and block.lang != "text":
            raise AssertionError(f"line {block.line}: expect comments belong before a ```text block")
    return blocks


# Runs in the doc's working folder: the steps in order, each step's output captured at the file
# descriptors (ONNX Runtime and child processes write there too), the results as JSON. Spawned
# children (validate's peak-memory probe) import this file again, hence the main guard.
_DRIVER = textwrap.dedent('''
    import json, os, subprocess, sys, traceback

    def run_python(code, name, namespace, out):
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1); os.dup2(out.fileno(), 2)
        try:
            exec(compile(code, name, "exec"), namespace)
            return 0
        except SystemExit as stop:
            return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])

    def main():
        steps = json.load(open(sys.argv[1]))
        results = []
        namespace = {"__name__": "__main__"}
        sys.path.insert(0, os.getcwd())
        for index, step in enumerate(steps):
            if step["file"]:
                with open(step["file"], "w") as handle:
                    handle.write(step["code"])
                continue
            with open(f".docs-out-{index}.txt", "w+b") as out:
                if step["lang"] == "python":
                    code = run_python(step["code"], step["name"], namespace, out)
                else:
                    code = subprocess.run(["bash", "-c", "set -euo pipefail\\n" + step["code"]],
                                          stdout=out, stderr=subprocess.STDOUT).returncode
                out.seek(0)
                results.append({"index": index, "rc": code, "output": out.read().decode(errors="replace")})
            with open(sys.argv[2], "w") as handle:
                json.dump(results, handle)
            if code != 0:
                break

    if __name__ == "__main__":
        main()
''')


def run_doc(path: Path, folder: Path) -> tuple[list[Block], dict[int, dict]]:
    blocks = parse(path.read_text())
    steps = [{**asdict(b), "name": f"{path.name}:{b.line}"} for b in blocks if b.file or b.runs]
    (folder / ".docs-steps.json").write_text(json.dumps(steps))
    (folder / ".docs-driver.py").write_text(_DRIVER)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "ONNXPRESS_CACHE": str(folder / ".cache"), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, ".docs-driver.py", ".docs-steps.json", ".docs-results.json"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"the docs driver failed:\n{done.stderr[-3000:]}"
    results = json.loads((folder / ".docs-results.json").read_text())
    ran = [b for b in blocks if b.file or b.runs]
    return blocks, {id(ran[r["index"]]): r for r in results}


def test_parse_reads_fences_files_and_expects():
    text = textwrap.dedent("""\
        ```python
        # file: mymodel.py
        x = 1
        ```
        ```sh
        echo hi
        ```
        <!-- expect: hi -->
        ```text
        hi
        ```
        ```console
        ./build.sh
        ```
    """)
    model, shell, shown, console = parse(text)
    assert model.file == "mymodel.py" and model.code == "x = 1\n" and not model.runs
    assert shell.runs and shell.lang == "sh" and shell.line == 5
    assert shown.expects == ["hi"] and not shown.runs
    assert not console.runs


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_runs_as_written(doc, tmp_path):
    blocks, results = run_doc(DOCS / doc, tmp_path)
    assert any(b.runs for b in blocks), f"{doc} has no block to run"
    last = None
    for block in blocks:
        if block.runs:
            result = results.get(id(block))
            assert result is not None, f"{doc}:{block.line}: not run (an earlier block failed)"
            assert result["rc"] == 0, (f"{doc}:{block.line}: exit code {result['rc']}\n--- block\n{block.code}"
                                       f"--- output (last 4000 characters)\n{result['output'][-4000:]}")
            last = (block, result)
        for expected in block.expects:
            assert expected in block.code, f"{doc}:{block.line}: the text block does not show {expected!r}"
            assert last is not None, f"{doc}:{block.line}: nothing ran before this expect"
            assert expected in last[1]["output"], (
                f"{doc}:{block.line}: {expected!r} is not in the output of the block at line "
                f"{last[0].line}:\n{last[1]['output'][-4000:]}")
