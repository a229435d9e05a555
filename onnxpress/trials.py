"""Running independent trials in parallel: the one executor for candidate builds and sweeps.

``run_trials(fn, items)`` calls ``fn(item)`` for every item and returns the results in the
order of the items. With one worker and no cluster address the calls run here, one after
another, and Ray is never imported. Otherwise each call is a Ray task: on a local Ray
started with one CPU per worker, or on the cluster at ``address``. Ray is the optional extra
``onnxpress[ray]``.

Rules for what runs as a trial:

- ``fn`` and the items must pickle: a module-level function of an importable module (Ray
  sends it by reference), items of plain data (paths, options), results of plain data. A
  worker reads its model from a path; on a cluster every path must be one every node sees.
- ``fn`` returns the failures it expects as values (a sweep's ``error`` rows). Any exception
  it raises ends the run as one ``TrialError`` naming the item, with the original type and
  the first line of its message.
- A trial never measures latency: timings taken while other trials run beside it say more
  about the neighbours than about the model. The caller measures after ``run_trials``
  returns, one model at a time (``sweep`` does). ``in_trial()`` is true inside a trial, for
  code that must refuse to time.
- Limits: a trial runs under the same ``sandbox.limited`` limits as its caller. In-process it
  simply inherits them; a Ray task re-enters ``sandbox.limited`` with the caller's limits, so
  an untrusted model's native steps are as contained in a worker as they are here.

One Ray runtime serves every ``run_trials`` call of the process: it starts on first use and
stops at interpreter exit, or at the end of a ``session(...)`` block that started it (a new
worker count or address replaces it). A Ray the program started itself (``ray.init`` before
us) is used as it is and never stopped here. A local Ray keeps its sockets and logs in a
private folder under the system's temporary directory, removed when it stops; its workers'
output goes to those logs, not to the terminal. A driver joining a cluster uses the cluster
node's folders; Ray turns token authentication on by itself only for clusters it finds, so a
cluster that requires it needs ``RAY_AUTH_MODE=token`` in the environment.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

from onnxpress import sandbox
from onnxpress.errors import OnnxpressError
from onnxpress.progress import Step

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class TrialError(OnnxpressError):
    """A trial raised: ``item`` is the item, ``kind`` the exception's type name, ``message``
    the first line of its message."""

    def __init__(self, what: str, item: Any, kind: str, message: str) -> None:
        super().__init__(f"{what} {_label(item)} failed: {kind}: {message}")
        self.item = item
        self.kind = kind
        self.message = message


_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("onnxpress_in_trial", default=False)


def in_trial() -> bool:
    """True while a trial runs (in-process or in a Ray worker): no latency may be measured."""
    return _inside.get()


def resolve_workers(workers: int) -> int:
    """``workers`` as a count: 0 means one per core this process may use."""
    if workers < 0:
        raise ValueError(f"trials: workers must be >= 0 (0: one per core), got {workers}")
    if workers == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    return workers


def run_trials(fn: Callable[[T], R], items: Sequence[T], *, workers: int = 1, address: str | None = None,
               progress: Callable[[str], None] | None = None, what: str = "trial") -> list[R]:
    """``[fn(item) for item in items]``, on Ray workers when ``workers`` > 1 or ``address`` is given.

    Args:
        fn: a module-level function (it must pickle by reference).
        items: the trials' inputs, plain data; ``str(item)`` labels an item in messages.
        workers: trials at once; 1 runs them here one after another, 0 means one per core.
            With ``address`` the cluster's free CPUs set how many run at once, and ``workers``
            > 1 caps that.
        address: a Ray cluster (``ray://host:10001``, ``auto``) instead of a local Ray.
        progress: told ``"3/9 trials done: <item>"`` as each trial ends (a ``progress.Step`` of
            task ``trials``: a display can draw it as a bar).
        what: what a trial is called in messages.

    Raises:
        TrialError: a trial raised; the trials still running are cancelled.
        OnnxpressError: Ray is needed and not installed, or cannot start or connect.
    """
    count = resolve_workers(workers)
    items = list(items)
    tell = _teller(progress, len(items), what)
    if count <= 1 and address is None:
        return _serial(fn, items, tell, what)
    return _parallel(fn, items, count, address, tell, what)


def _serial(fn: Callable[[T], R], items: list[T], tell: Callable[[int, Any], None], what: str) -> list[R]:
    results = []
    for index, item in enumerate(items):
        token = _inside.set(True)
        try:
            results.append(fn(item))
        except Exception as err:  # any failure of a trial ends the run as one error naming it
            raise TrialError(what, item, type(err).__name__, _first_line(err)) from err
        finally:
            _inside.reset(token)
        tell(index + 1, item)
    return results


def _parallel(fn: Callable[[T], R], items: list[T], workers: int, address: str | None,
              tell: Callable[[int, Any], None], what: str) -> list[R]:
    if not items:
        return []
    ray = _start(workers, address)
    task = _remote_task(ray)
    limits = sandbox.current()
    # Local: Ray runs `workers` at once anyway. Cluster: `workers` > 1 caps the tasks in flight.
    window = workers if (address is None or workers > 1) else len(items)
    results: dict[int, Any] = {}
    pending: dict[Any, int] = {}
    queue = iter(enumerate(items))
    try:
        while len(results) < len(items):
            for index, item in queue:
                pending[task.remote(fn, item, limits)] = index
                if len(pending) >= window:
                    break
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except ray.exceptions.RayError as err:  # the worker died, or fn or a value did not unpickle
                raise TrialError(what, items[index], type(err).__name__, _ray_reason(err)) from None
            if outcome[0] == "error":
                raise TrialError(what, items[index], outcome[1], outcome[2])
            results[index] = outcome[1]
            tell(len(results), items[index])
    finally:
        for ref in pending:  # left running only after an error or an interrupt
            ray.cancel(ref)
    return [results[i] for i in range(len(items))]


def _task(fn: Callable[[Any], Any], item: Any, limits: sandbox.Limits | None) -> tuple:
    """One trial in a Ray worker: ``("ok", result)`` or ``("error", type name, first line)``.

    Errors come back as values: an exception object may not pickle (it can hold a model).
    """
    token = _inside.set(True)
    try:
        with _limited(limits):
            return "ok", fn(item)
    except Exception as err:  # reported to the driver, which raises it as a TrialError
        return "error", type(err).__name__, _first_line(err)
    finally:
        _inside.reset(token)


# The limits a Ray worker entered for its first trial and keeps in force for the next ones.
_kept: list[contextlib.ExitStack] = []


@contextlib.contextmanager
def _limited(limits: sandbox.Limits | None) -> Iterator[None]:
    """``sandbox.limited(limits)`` around one trial in a Ray worker, entered once per worker.

    A fresh ``limited`` block per trial would start (and import ONNX Runtime in) a new limited
    child each time. Ray runs a worker's tasks one after another in its main thread and context,
    so the first trial enters the block and leaves it open, and later trials find the limits in
    force. Where they are not visible (other limits, another context), a trial gets its own block.
    The worker's limited child ends with the worker.
    """
    if limits is None or sandbox.current() == limits:
        yield
    elif not _kept:
        stack = contextlib.ExitStack()
        stack.enter_context(sandbox.limited(limits))
        _kept.append(stack)
        yield
    else:
        with sandbox.limited(limits):
            yield


# ----------------------------------------------------------------------------- the Ray runtime


@dataclass
class _Runtime:
    """The Ray runtime this process uses: what it was started for, and whether we own it."""

    address: str | None
    cpus: int | None
    owned: bool
    folder: str | None = None


_runtime: _Runtime | None = None
_remote: Any = None
_exit_hook = False


def _import_ray(workers: int, address: str | None):
    try:
        import ray
    except ImportError:
        need = f"--ray-address {address}" if address is not None else f"--workers {workers}"
        raise OnnxpressError(f"{need} needs Ray: pip install 'onnxpress[ray]'") from None
    return ray


def _start(workers: int, address: str | None):
    """The Ray module, with a runtime for ``workers`` local CPUs or the cluster at ``address``."""
    global _runtime, _exit_hook
    ray = _import_ray(workers, address)
    cpus = None if address is not None else workers
    if _runtime is not None and ray.is_initialized():
        if not _runtime.owned or (_runtime.address, _runtime.cpus) == (address, cpus):
            return ray
        shutdown()  # ours, for another worker count or cluster: start the one asked for
    elif _runtime is not None:  # ours, stopped behind our back: only its folder is left
        shutdown()
    elif ray.is_initialized():
        logger.info("trials: using the Ray runtime this program started")
        _runtime = _Runtime(address=None, cpus=None, owned=False)
        return ray
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    folder = None
    try:
        if address is not None:
            _reach(address)
            # No temporary folder of ours: a driver joining a cluster uses its node's.
            ray.init(address=address, **options)
        else:
            # Ray's sockets live in here: keep the path short (a Unix socket path has ~107 bytes).
            folder = tempfile.mkdtemp(prefix="onnxpress-ray-")
            ray.init(num_cpus=workers, _temp_dir=folder, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if address is None:
            raise OnnxpressError(f"cannot start a local Ray with {workers} CPUs: {_first_line(err)}") from None
        # Ray enables token authentication only for clusters it finds itself, never for an address.
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            " (a cluster with token authentication needs RAY_AUTH_MODE=token in the environment)")
        raise OnnxpressError(f"cannot reach the Ray cluster at {address}: {_first_line(err)}{hint}") from None
    _runtime = _Runtime(address=address, cpus=cpus, owned=True, folder=folder)
    if not _exit_hook:
        atexit.register(shutdown)
        _exit_hook = True
    return ray


# How long a cluster's head may take to accept a connection before we give up on it.
_CONNECT_SECONDS = 10.0


def _reach(address: str) -> None:
    """Refuse a ``host:port`` (or ``ray://host:port``) nothing answers at: ``ray.init`` would
    retry it for minutes, logging a warning every few seconds. Other forms (``auto``) go to Ray."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)", address)
    if match is None:
        return
    try:
        socket.create_connection((match.group(1), int(match.group(2))), timeout=_CONNECT_SECONDS).close()
    except OSError as err:
        raise OnnxpressError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


def _remote_task(ray):
    global _remote
    if _remote is None:
        # No retries: a trial that killed its worker is reported, not run again unseen.
        _remote = ray.remote(num_cpus=1, max_retries=0)(_task)
    return _remote


def shutdown() -> None:
    """Stop the Ray runtime this module started (nothing if it started none) and remove its folder."""
    global _runtime
    runtime, _runtime = _runtime, None
    if runtime is None or not runtime.owned:
        return
    import ray

    ray.shutdown()
    if runtime.folder is not None:
        shutil.rmtree(runtime.folder, ignore_errors=True)


@contextlib.contextmanager
def session(*, workers: int = 1, address: str | None = None) -> Iterator[None]:
    """Within this block ``run_trials`` calls with the same ``workers`` and ``address`` share one
    Ray runtime, started here (when they need one) and stopped at the end if started here."""
    count = resolve_workers(workers)
    started = False
    if count > 1 or address is not None:
        before = _runtime
        _start(count, address)
        started = _runtime is not before and _runtime is not None and _runtime.owned
    try:
        yield
    finally:
        if started:
            shutdown()


# ----------------------------------------------------------------------------- messages


def _label(item: Any) -> str:
    text = str(item)
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _ray_reason(err: BaseException) -> str:
    """The last line of a Ray error, without its colour codes: the underlying exception
    (``ModuleNotFoundError: No module named 'x'`` when a worker cannot import ``fn``)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _teller(progress: Callable[[str], None] | None, total: int, what: str) -> Callable[[int, Any], None]:
    """``tell(done, item)``: tells ``progress`` that ``done`` of ``total`` trials ended, the last
    one ``item``, as a step whose line is ``"3/9 trials done: <item>"``."""
    started = time.monotonic()

    def tell(done: int, item: Any) -> None:
        if progress is not None:
            label = _label(item)
            progress(Step(f"{what}s", done, total, f"{what}s", note=label, seconds=time.monotonic() - started,
                          ended=done == total, text=f"{done}/{total} {what}s done: {label}"))

    return tell
