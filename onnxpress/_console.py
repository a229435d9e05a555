"""Progress on the command line's stderr: rich bars on a terminal, plain lines when piped.

Only ``onnxpress.cli`` imports this module: the library reports through its progress callbacks
and logging, never prints and never imports rich. A :class:`Console` takes what those callbacks
are told: a pipeline's ``ProgressEvent`` (a pass starts, says something, tells how far a step got,
ends), a ``progress.Step`` line (how far a step of ``optimize``, ``sweep`` or ``validate`` got) or
a plain message line.

On a terminal (and with rich installed) each running pass and step is a bar: its name, done/total,
elapsed time; messages and pass completion lines print above the bars. Piped, it prints lines:
pass starts, messages and completions as they come; a step's line once it has run for a second,
then at most every five seconds, and at its end with its duration:
``[2/3] quantize: statistics 256/256 feeds (3.1s)``. A step that ends within a second prints
nothing (a pass runs many short ones).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, TextIO

from onnxpress.progress import Step

FIRST_LINE = 1.0  # seconds a step runs before its first plain line (shorter ones print none)
EVERY = 5.0  # seconds between a running step's plain lines


class Console:
    """Renders progress on ``stream`` (stderr by default).

    Args:
        stream: where lines and bars go.
        rich_console: a ``rich.console.Console`` to draw bars on (tests force a terminal this
            way); by default one on ``stream`` when it is a terminal and rich is installed, else
            plain lines.
        clock: seconds, for the plain lines' pace (tests pass a fake one).
    """

    def __init__(self, stream: TextIO | None = None, *, rich_console: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._plain: dict[tuple, list[float | None]] = {}  # step key -> [first seen, last line]
        self._rich = rich_console if rich_console is not None else _terminal(self.stream)
        self._bars: Any = None  # rich Progress while rows are shown
        self._rows: dict[tuple, Any] = {}  # pass or step key -> rich task id
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    @property
    def rich(self) -> bool:
        """Whether bars are drawn (else plain lines)."""
        return self._rich is not None

    def __call__(self, event: Any) -> None:
        if isinstance(event, str):  # a Step or a message from optimize, sweep, validate
            if isinstance(event, Step):
                self._step((None, event.task), "", event)
            else:
                self._line(event)
            return
        prefix = f"[{event.index + 1}/{event.total}] {event.name}"
        step = event.message if isinstance(event.message, Step) else None
        if step is not None:
            self._step((event.index, step.task), prefix, step)
        elif event.message:
            self._line(f"{prefix}: {event.message}")
        elif event.record is None:
            self._started(event.index, prefix)
        else:
            self._ended(event.index, prefix, event.record)

    def close(self) -> None:
        """Take the bars away (an error or a result prints next)."""
        self._rows.clear()
        self._stop()

    # ------------------------------------------------------------------------- passes

    def _started(self, index: int, prefix: str) -> None:
        if self.rich:
            self._add((index, None), prefix, None, "")
        else:
            self._line(f"{prefix} ...")

    def _ended(self, index: int, prefix: str, record: Any) -> None:
        accuracy = "" if record.cosine is None else f", cosine {record.cosine:.6f}, max-abs {record.max_abs:.2e}"
        for key in [key for key in self._plain if key[0] == index]:
            del self._plain[key]
        if self.rich:
            for key in [key for key in self._rows if key[0] == index]:
                self._remove(key)
        self._line(f"{prefix} done in {record.seconds:.2f}s: {record.nodes_before} -> {record.nodes_after} "
                   f"nodes{accuracy}")

    # -------------------------------------------------------------------------- steps

    def _step(self, key: tuple, prefix: str, step: Step) -> None:
        label = f"{prefix}: {step.task}" if prefix else step.task
        if self.rich:
            count = step.count + (f"  {step.note}" if step.note else "")
            if step.ended:
                self._remove(key)
            elif key in self._rows:
                self._bars.update(self._rows[key], total=step.total, completed=step.done, count=count)
            else:
                self._add(key, label, step.total, count, step.done)
            return
        line = f"{prefix}: {step}" if prefix else str(step)
        now = self.clock()
        seen = self._plain.setdefault(key, [now, None])
        if step.ended:
            del self._plain[key]
            if seen[1] is not None or step.seconds >= FIRST_LINE:  # a step quicker than that stays silent
                self._line(f"{line} ({step.seconds:.1f}s)")
            return
        due = now - seen[0] >= FIRST_LINE if seen[1] is None else now - seen[1] >= EVERY
        if due and (step.total is None or step.done < step.total):  # all done: its end line comes next
            seen[1] = now
            self._line(line)

    # -------------------------------------------------------------------------- output

    def _line(self, text: str) -> None:
        if self.rich:
            self._rich.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _add(self, key: tuple, description: str, total: int | None, count: str, done: int = 0) -> None:
        if self._bars is None:
            self._start()
        self._rows[key] = self._bars.add_task(description, total=total, completed=done, count=count)

    def _remove(self, key: tuple) -> None:
        task = self._rows.pop(key, None)
        if task is not None and self._bars is not None:
            self._bars.remove_task(task)
        if not self._rows:
            self._stop()

    def _start(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bars = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                              TextColumn("{task.fields[count]}", markup=False), TimeElapsedColumn(),
                              console=self._rich, transient=True)
        before = sys.stderr
        self._bars.start()
        if sys.stderr is not before:
            # The display redirects stderr so that lines print above the bars; log records go to
            # the handler's own stream, the stderr of before: point it at the redirection too.
            self._handlers = [(h, h.stream) for h in logging.getLogger().handlers
                              if type(h) is logging.StreamHandler and h.stream is before]
            for handler, _ in self._handlers:
                handler.setStream(sys.stderr)

    def _stop(self) -> None:
        if self._bars is None:
            return
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []
        self._bars.stop()
        self._bars = None


def _terminal(stream: TextIO) -> Any:
    """A rich console on ``stream`` when it is a terminal that draws, else None (plain lines)."""
    try:
        from rich.console import Console as RichConsole
    except ImportError:  # rich is optional: plain lines
        return None
    console = RichConsole(file=stream)
    return console if console.is_terminal and not console.is_dumb_terminal else None
