"""Running native steps that can hang or exhaust memory on a hostile graph under limits.

onnxsim, shape inference and ONNX Runtime session creation are native code: a malformed graph
can make them spin or allocate without bound. Inside ``limited(...)`` (the CLI always enters
it; the API opts in) such a step runs in a fresh process with a wall-clock limit and an
address-space limit, in a fresh temporary working folder (some tools drop files there), and a
failure becomes one clear ``ResourceLimitError`` instead of a frozen or killed user process.
Outside it the step runs in-process as usual.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from onnxpress.errors import OnnxpressError


class ResourceLimitError(OnnxpressError):
    """A sandboxed step ran past its time or memory limit, or died."""


@dataclass(frozen=True)
class Limits:
    """Wall-clock seconds and address-space bytes for one sandboxed step (None: unlimited)."""

    seconds: float = 600.0
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"sandbox: seconds must be > 0, got {self.seconds}")
        if self.memory_bytes is not None and self.memory_bytes < 64 * 2**20:
            raise ValueError(f"sandbox: memory_bytes must be at least 64 MiB, got {self.memory_bytes}")


# Child processes this process started (``benchmarks/overhead.py`` reports it).
STARTED = 0


@dataclass
class _Scope:
    """The limits in force and the warm workers that serve them (one per address-space mode)."""

    limits: Limits
    workers: dict[bool, "_Worker"] = field(default_factory=dict)

    def worker(self, address_space: bool) -> "_Worker":
        worker = self.workers.get(address_space)
        if worker is None or not worker.alive():
            worker = self.workers[address_space] = _Worker(self.limits, address_space)
        return worker

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()


_current: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("onnxpress_limits", default=None)


@contextlib.contextmanager
def limited(limits: Limits | None = None) -> Iterator[Limits]:
    """Within this block, sandboxable steps run in a limited child process.

    The block keeps one warm worker process that serves its steps one after the other (a
    fresh interpreter per step would re-import the world each time); a worker that overran a
    limit or died is replaced by a new one for the next step. It ends with the block.
    """
    scope = _Scope(limits or Limits())
    # Start the worker now: it imports ONNX Runtime while the caller loads the model.
    scope.worker(address_space=True)
    token = _current.set(scope)
    try:
        yield scope.limits
    finally:
        _current.reset(token)
        scope.close()


def current() -> Limits | None:
    scope = _current.get()
    return None if scope is None else scope.limits


def default_memory_bytes() -> int | None:
    """Three quarters of the machine's physical memory (None where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError, AttributeError):
        return None


# Modules a new worker imports before its first request (while the parent is still busy).
_WARM_MODULES = ("onnxpress.runtime", "onnxruntime")


def _serve(connection, memory_bytes: int | None) -> None:
    """The worker's loop: limits once, then each request in a scratch working folder."""
    import resource
    import sys

    # The parent's stdout carries results (`--json`); what native code or ONNX Runtime prints
    # here (its "EP Error ... Falling back to CPU" message, say) goes to stderr instead.
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for module in _WARM_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # a missing module is reported by the request that needs it
            pass
    while True:
        try:
            target, args = connection.recv()
        except (EOFError, OSError):
            break
        with tempfile.TemporaryDirectory(prefix="onnxpress-sandbox-") as folder:
            os.chdir(folder)
            connection.send(_answer(target, args))
            os.chdir("/")
    connection.close()


def _answer(target: str, args: tuple) -> tuple[str, Any]:
    module_name, _, name = target.partition(":")
    try:
        return "ok", getattr(importlib.import_module(module_name), name)(*args)
    except MemoryError:
        return "memory", "ran out of memory"
    except Exception as err:  # reported to the parent, which raises it as a clear error
        text = str(err).strip()
        return "error", (type(err).__name__, text.splitlines()[0] if text else "")


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """While a child is spawned, hide the caller's script from multiprocessing.

    A spawned child imports the parent's ``__main__`` script again (as ``__mp_main__``) before
    it runs anything, so a user's script without an ``if __name__ == "__main__":`` guard would run
    a second time inside our worker. The worker needs nothing from that script: its target is
    ``onnxpress.sandbox._serve``. Spawning reads ``__main__.__spec__`` and ``__file__`` only while
    ``start()`` prepares the child, in this thread.
    """
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _Worker:
    """A child process that runs steps under the limits, one at a time."""

    def __init__(self, limits: Limits, address_space: bool) -> None:
        global STARTED
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
        self.limits = limits
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, daemon=True,
                                       args=(child, limits.memory_bytes if address_space else None))
        with _main_script_hidden():
            self.process.start()
        child.close()
        STARTED += 1

    def alive(self) -> bool:
        return self.process.is_alive()

    def call(self, target: str, args: tuple, what: str) -> Any:
        limits = self.limits
        try:
            self.connection.send((target, args))
            deadline = time.monotonic() + limits.seconds
            while not self.connection.poll(_WATCH_SECONDS):
                if time.monotonic() > deadline:
                    self.close()
                    raise ResourceLimitError(f"{what} did not finish within {limits.seconds:g} s (stopped)")
                if limits.memory_bytes is not None and _resident_bytes(self.process.pid) > limits.memory_bytes:
                    self.close()
                    raise ResourceLimitError(f"{what} used more than the memory limit of "
                                             f"{limits.memory_bytes / 2**30:.1f} GiB (stopped)")
            status, payload = self.connection.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            # A worker that died without answering closes the pipe.
            self.process.join(5)
            code = self.process.exitcode
            self.close()
            limit = f" (memory limit {limits.memory_bytes / 2**30:.1f} GiB)" if limits.memory_bytes else ""
            raise ResourceLimitError(f"{what} crashed with exit code {code}{limit}") from None
        if status == "memory":
            self.close()  # its heap may be in any state: the next step gets a fresh worker
        return status, payload

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.connection.close()


def call(target: str, *args: Any, what: str, address_space: bool = True) -> Any:
    """Run ``module:function(*args)`` under the current limits (in-process when there are none).

    ``args`` and the result must pickle (pass model bytes, not objects). Steps run in the
    block's warm worker. Raises ``ResourceLimitError`` naming ``what`` on a timeout, exhausted
    memory or a crash, and ``SandboxedError`` carrying the message when the function raised.

    The memory limit is enforced twice: as the worker's address-space limit (an allocation
    past it fails at once) and by watching its resident memory. ``address_space=False`` keeps
    only the watch, for GPU runtimes: CUDA reserves far more address space than it ever uses
    and will not start under such a limit.
    """
    scope = _current.get()
    if scope is None:
        module_name, _, name = target.partition(":")
        return getattr(importlib.import_module(module_name), name)(*args)
    return _outcome(*scope.worker(address_space).call(target, args, what), what, scope.limits)


def call_fresh(target: str, *args: Any, what: str, seconds: float = 600.0) -> Any:
    """Run ``module:function(*args)`` once in a new process of its own, whatever the limits.

    For measurements that need a clean process (peak resident memory): the current limits
    apply when there are any, else only ``seconds``.
    """
    scope = _current.get()
    limits = scope.limits if scope is not None else Limits(seconds=seconds)
    worker = _Worker(limits, address_space=False)
    try:
        return _outcome(*worker.call(target, args, what), what, limits)
    finally:
        worker.close()


def _outcome(status: str, payload: Any, what: str, limits: Limits) -> Any:
    """The result a worker sent, or the error it stands for."""
    if status == "ok":
        return payload
    if status == "memory":
        limit = f" (limit {limits.memory_bytes / 2**30:.1f} GiB)" if limits.memory_bytes else ""
        raise ResourceLimitError(f"{what} ran out of memory{limit}")
    kind, message = payload
    raise SandboxedError(what, kind, message)


# How often the parent looks at the child's resident memory.
_WATCH_SECONDS = 0.05


def _resident_bytes(pid: int) -> int:
    """Resident memory of a process (0 where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class SandboxedError(RuntimeError):
    """The sandboxed function raised: ``kind`` is the exception's type name, ``message`` its
    first line."""

    def __init__(self, what: str, kind: str, message: str) -> None:
        super().__init__(f"{what} failed: {kind}: {message}")
        self.kind = kind
        self.message = message
