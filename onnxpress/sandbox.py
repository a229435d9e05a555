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
from dataclasses import dataclass
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


_current: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("onnxpress_limits", default=None)


@contextlib.contextmanager
def limited(limits: Limits | None = None) -> Iterator[Limits]:
    """Within this block, sandboxable steps run in a limited child process."""
    chosen = limits or Limits()
    token = _current.set(chosen)
    try:
        yield chosen
    finally:
        _current.reset(token)


def current() -> Limits | None:
    return _current.get()


def default_memory_bytes() -> int | None:
    """Three quarters of the machine's physical memory (None where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError, AttributeError):
        return None


def _child(connection, target: str, args: tuple, memory_bytes: int | None) -> None:
    """Runs in the fresh process: limits, a scratch working folder, the call, the answer."""
    import resource
    import sys

    # The parent's stdout carries results (`--json`); what native code or ONNX Runtime prints
    # here (its "EP Error ... Falling back to CPU" message, say) goes to stderr instead.
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    with tempfile.TemporaryDirectory(prefix="onnxpress-sandbox-") as folder:
        os.chdir(folder)
        module_name, _, name = target.partition(":")
        try:
            result = getattr(importlib.import_module(module_name), name)(*args)
            connection.send(("ok", result))
        except MemoryError:
            connection.send(("memory", "ran out of memory"))
        except Exception as err:  # reported to the parent, which raises it as a clear error
            text = str(err).strip()
            connection.send(("error", (type(err).__name__, text.splitlines()[0] if text else "")))
    connection.close()


def call(target: str, *args: Any, what: str, address_space: bool = True) -> Any:
    """Run ``module:function(*args)`` under the current limits (in-process when there are none).

    ``args`` and the result must pickle (pass model bytes, not objects). Raises
    ``ResourceLimitError`` naming ``what`` on a timeout, exhausted memory or a crash, and
    ``SandboxedError`` carrying the message when the function raised.

    The memory limit is enforced twice: as the child's address-space limit (an allocation past
    it fails at once) and by watching its resident memory. ``address_space=False`` keeps only
    the watch, for GPU runtimes: CUDA reserves far more address space than it ever uses and
    will not start under such a limit.
    """
    limits = current()
    if limits is None:
        module_name, _, name = target.partition(":")
        return getattr(importlib.import_module(module_name), name)(*args)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, daemon=True,
                              args=(sender, target, args, limits.memory_bytes if address_space else None))
    process.start()
    sender.close()
    try:
        deadline = time.monotonic() + limits.seconds
        while not receiver.poll(_WATCH_SECONDS):
            if time.monotonic() > deadline:
                process.kill()
                raise ResourceLimitError(f"{what} did not finish within {limits.seconds:g} s (stopped)")
            if limits.memory_bytes is not None and _resident_bytes(process.pid) > limits.memory_bytes:
                process.kill()
                raise ResourceLimitError(f"{what} used more than the memory limit of "
                                         f"{limits.memory_bytes / 2**30:.1f} GiB (stopped)")
        try:  # a child that died without answering closes the pipe: EOFError
            status, payload = receiver.recv()
        except EOFError:
            process.join(5)
            limit = f" (memory limit {limits.memory_bytes / 2**30:.1f} GiB)" if limits.memory_bytes else ""
            raise ResourceLimitError(f"{what} crashed with exit code {process.exitcode}{limit}") from None
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
        receiver.close()
    if status == "ok":
        return payload
    if status == "memory":
        raise ResourceLimitError(f"{what} ran out of memory (limit {limits.memory_bytes / 2**30:.1f} GiB)")
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
