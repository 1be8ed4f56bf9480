"""Decoding processes that outlive a crash (`DecodeIn.PROCESSES`).

Clips are decoded in a pool of spawned processes (not forked: the parent has CUDA and threads,
which a fork would copy in an unusable state). A process that dies (the video decoder crashing
on a hostile file, the OOM killer) breaks a `ProcessPoolExecutor` for good: every clip in
flight fails with it, and so would every later one. `DecodePool` starts a new pool instead and
tries each clip that was in flight again, alone in the pool: a clip whose process dies then
killed it itself, and fails with one line; the others were decoded beside it and go on. So one
bad file costs one item, not the run.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from types import TracebackType
from typing import ParamSpec, TypeVar

import torch

from foleyrt.errors import MediaError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class DecodePool:
    """`workers` decoding processes sharing the CPU's cores, all started at construction:
    made while the models load, they are ready for a run's first clips. A context manager;
    several runs may share one (`run_local(..., decoders=...)`)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.restarts = 0  # pools started after a process died
        self._lock = threading.Lock()
        self._gate = _Gate()
        self._pool = self._start()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` in a decoding process (`fn` and its arguments picklable): beside the
        others, then, if a process died meanwhile, alone in the pool, where a death is its own."""
        call = partial(fn, *args, **kwargs)
        for gate in (self._gate.shared, self._gate.exclusive):
            with gate():
                pool = self._pool
                try:
                    return pool.submit(call).result()
                except BrokenProcessPool:
                    self._replace(pool)
        raise MediaError("its decoding process died (the video decoder crashed on it, or the "
                         "machine ran out of memory)")

    def shutdown(self) -> None:
        with self._lock:
            self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.shutdown()

    def _start(self) -> ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=torch.set_num_threads, initargs=(threads,))
        # The pool spawns a process per task that finds none idle: one task each starts them
        # all (importing what a decoding task imports), without waiting for them here.
        for _ in range(self.workers):
            pool.submit(_started)
        return pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for `broken`, once: the clips in flight all see the same break."""
        with self._lock:
            if self._pool is broken:
                log.warning("a decoding process died; starting %d new ones", self.workers)
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                self.restarts += 1


class _Gate:
    """Shared runs go beside each other; an exclusive run waits for them to end and goes
    alone (new shared runs wait for it)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._changed.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()


def _started() -> None:
    """A decoding process's first task: its start (spawning, importing what a decoding task
    imports) is all it does."""
    importlib.import_module("foleyrt.batch.stages")
