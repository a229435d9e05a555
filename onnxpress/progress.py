"""How far long steps got: the one progress event the library emits besides free text.

Long work (a statistics sweep over calibration feeds, SmoothQuant's alpha search, a
sensitivity measurement, a latency measurement, distillation steps) reports through the
progress callback it was given, a ``Report``: a callable of one line. A plain message is a
``str``; a :class:`Step` is a ``str`` too (its line, ``statistics 37/256 feeds``) that also
carries the numbers, so a display can draw a bar while a callback that only prints or collects
lines keeps working unchanged. The library never prints and never imports a display library;
``onnxpress.cli`` renders (rich bars on a terminal, plain lines when piped).

A :class:`Tracker` emits a step's events: at its start, at most every ``EVERY`` seconds while it
runs, and at its end, so a display is told at most about once a second per step, however fast
the work goes. :func:`track` wraps a loop in one::

    for feed in track(feeds, context.say, "statistics", unit="feeds"):
        ...
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

# One line: a message (``str``) or how far a step got (``Step``, a ``str`` too).
Report = Callable[[str], None]

EVERY = 1.0  # seconds between a running step's events, at least


class Step(str):
    """How far one step got: ``done`` of ``total`` ``unit`` of ``task`` (``total`` None: unknown).

    Its string is the line a plain display prints, ``statistics 37/256 feeds`` (or ``text``
    when given), so callbacks written for lines take it as one.

    Attributes:
        task: what runs, the display's key for the step (``statistics``, ``smoothquant alpha``);
            a step of the same task that starts again replaces the previous one.
        done, total: units done, and in all (None when not known ahead).
        unit: what is counted (``feeds``, ``layers``, ``runs``), plural.
        note: a short detail of the latest unit (``loss 0.0123``), or "".
        seconds: since the step started.
        ended: the step is over (``done`` may fall short of ``total``: a search that stopped
            early, a time budget).
    """

    task: str
    done: int
    total: int | None
    unit: str
    note: str
    seconds: float
    ended: bool

    def __new__(cls, task: str, done: int, total: int | None = None, unit: str = "", *, note: str = "",
                seconds: float = 0.0, ended: bool = False, text: str | None = None) -> Step:
        if text is None:
            count = f"{done}/{total}" if total is not None else f"{done}"
            text = f"{task} {count}{' ' + unit if unit else ''}{', ' + note if note else ''}"
        self = super().__new__(cls, text)
        self.task, self.done, self.total, self.unit = task, int(done), total, unit
        self.note, self.seconds, self.ended = note, float(seconds), bool(ended)
        return self

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.task, self.done, self.total, self.unit, self.note, self.seconds, self.ended, str(self)))

    def __repr__(self) -> str:
        return (f"Step({self.task!r}, {self.done}, {self.total}, {self.unit!r}"
                f"{', ended=True' if self.ended else ''})")

    @property
    def count(self) -> str:
        """``37/256 feeds``: the numbers, without the task."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        return f"{count} {self.unit}".strip()

    def within(self, prefix: str) -> Step:
        """This step as part of ``prefix`` (a pass, a candidate): its task and line start with it."""
        return Step(f"{prefix}: {self.task}", self.done, self.total, self.unit, note=self.note,
                    seconds=self.seconds, ended=self.ended, text=f"{prefix}: {self}")


def _rebuild(task, done, total, unit, note, seconds, ended, text) -> Step:
    return Step(task, done, total, unit, note=note, seconds=seconds, ended=ended, text=text)


class Tracker:
    """Tells ``report`` how far one step got: at its start, at most every ``every`` seconds, and
    at its end (``end()``, or leaving its ``with`` block). With ``report`` None it does nothing.

    Args:
        report: the line callback (a ``PassContext.say``, ``optimize``'s ``progress``), or None.
        task, total, unit: as in :class:`Step`.
        every: seconds between events while it runs (``EVERY``).
    """

    def __init__(self, report: Report | None, task: str, total: int | None = None, unit: str = "", *,
                 every: float = EVERY) -> None:
        self.report = report
        self.task, self.total, self.unit = task, total, unit
        self.every = every
        self.done = 0
        self.note = ""
        self.started = time.monotonic()
        self.ended = False
        self._last = self.started
        self._emit(False)

    def advance(self, count: int = 1, *, note: str | None = None) -> None:
        """``count`` more units are done."""
        self.update(self.done + count, note=note)

    def update(self, done: int, total: int | None = None, *, note: str | None = None) -> None:
        """``done`` units are done (of ``total``, when it became known or changed)."""
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        if self.report is not None and not self.ended and time.monotonic() - self._last >= self.every:
            self._emit(False)

    def end(self, *, note: str | None = None) -> None:
        """The step is over: its last event (once; later calls do nothing)."""
        if self.ended:
            return
        if note is not None:
            self.note = note
        self.ended = True
        self._emit(True)

    def _emit(self, ended: bool) -> None:
        if self.report is None:
            return
        now = time.monotonic()
        self._last = now
        self.report(Step(self.task, self.done, self.total, self.unit, note=self.note,
                         seconds=now - self.started, ended=ended))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


def track(items: Iterable[T], report: Report | None, task: str, *, total: int | None = None,
          unit: str = "") -> Iterator[T]:
    """``items``, telling ``report`` how many were handled (a unit counts as done when the loop
    asks for the next one); the step ends when the loop ends, by exhaustion, ``break`` or an
    error. ``total`` defaults to ``len(items)`` when it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    tracker = Tracker(report, task, total, unit)
    try:
        for item in items:
            yield item
            tracker.advance()
    finally:
        tracker.end()


def logged(report: Report | None, logger: logging.Logger) -> Report:
    """``report`` with each line also logged: messages at INFO, steps at DEBUG (they come often)."""

    def tell(line: str) -> None:
        if isinstance(line, Step):
            logger.debug("%s", line)
        else:
            logger.info("%s", line)
        if report is not None:
            report(line)

    return tell


def within(report: Report | None, prefix: str) -> Report | None:
    """``report`` for a part of a longer job: its steps become steps of ``prefix`` (``Step.within``)
    and its messages start with ``prefix: ``."""
    if report is None:
        return None

    def tell(line: str) -> None:
        report(line.within(prefix) if isinstance(line, Step) else f"{prefix}: {line}")

    return tell


def pipeline_steps(report: Report | None, prefix: str = "") -> Callable[[Any], None] | None:
    """A ``Pipeline.run`` progress callback that passes the steps of the passes on to ``report``,
    each as a step of ``prefix: <pass>`` (for a pipeline run inside a longer step: an ``optimize``
    candidate, a ``sweep`` cell). Pass starts, ends and messages are left to the log."""
    if report is None:
        return None

    def forward(event: Any) -> None:
        step = getattr(event, "step", None)
        if step is not None:
            report(step.within(f"{prefix}: {event.name}" if prefix else event.name))

    return forward
