"""Keeping module calls on other threads out of a compile's trace.

While PyTorch traces a graph ahead of time (`aot_compile`), its tracer replaces
`nn.Module.__call__` for the whole process: a module called on another thread meanwhile (the
batch pipeline encodes the next clips while the current group compiles its first forward) is
taken into the trace and fails ("module is not installed as a submodule"). So the pipeline's
stages hold `TRACING.calls()` (many threads at once) and a compile holds `TRACING.tracing()`
(alone: it waits for the stages in flight, and new ones wait for it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TraceGuard:
    """A shared/exclusive lock: shared for module calls, exclusive for a trace. Shared holds
    nest within a thread; a thread that traces from inside its own shared hold (a denoising
    stage compiling its first forward) lends that hold back while it traces, so two stages
    compiling at once take turns instead of waiting for each other."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._calls = 0  # threads inside `calls()`
        self._tracing = False
        self._depth = threading.local()  # this thread's nesting of `calls()`

    def _held(self) -> int:
        return getattr(self._depth, "n", 0)

    @contextmanager
    def calls(self) -> Iterator[None]:
        depth = self._held()
        if depth == 0:
            with self._changed:
                self._changed.wait_for(lambda: not self._tracing)
                self._calls += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._changed:
                    self._calls -= 1
                    self._changed.notify_all()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        lent = self._held() > 0
        claimed = False  # undone in `finally` only as far as it got (an interrupted wait)
        try:
            with self._changed:
                if lent:
                    self._calls -= 1
                    self._changed.notify_all()
                self._changed.wait_for(lambda: not self._tracing)
                self._tracing = claimed = True
                self._changed.wait_for(lambda: self._calls == 0)
            yield
        finally:
            with self._changed:
                if claimed:
                    self._tracing = False
                if lent:
                    self._calls += 1
                self._changed.notify_all()


# One per process, as the tracer's patch is: every pipeline and compile in a process share it.
TRACING = TraceGuard()
