"""Module calls on other threads during a trace: PyTorch's tracer patches `nn.Module.__call__`
for the whole process, so without `TRACING` a module called beside a trace fails; with it the
call waits for the trace (and a trace for the calls in flight), with no deadlock when stages
that hold calls start traces themselves."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import fx, nn

from foleyrt.accel.tracing import TraceGuard

PAUSE_S = 0.3  # inside the trace: long enough for the other thread's call to land in it


class _SlowToTrace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(PAUSE_S)  # runs once, while the tracer's patch is in place
        return self.inner(x)


class _Stage(nn.Module):
    """What another stage runs: a module calling a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _trace_beside_a_call(guard: TraceGuard | None) -> BaseException | None:
    """Trace on one thread while another calls `_Stage`; the call's error, if any."""
    failure: list[BaseException] = []
    started = threading.Event()

    def trace() -> None:
        if guard is None:
            started.set()
            fx.symbolic_trace(_SlowToTrace())
            return
        with guard.tracing():
            started.set()
            fx.symbolic_trace(_SlowToTrace())

    def call() -> None:
        started.wait()
        time.sleep(PAUSE_S / 3)
        try:
            if guard is None:
                _Stage()(torch.ones(1, 4))
            else:
                with guard.calls():
                    _Stage()(torch.ones(1, 4))
        except Exception as exc:  # noqa: BLE001 - the test reports whatever it was
            failure.append(exc)

    threads = [threading.Thread(target=trace), threading.Thread(target=call)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return failure[0] if failure else None


def test_a_call_beside_a_trace_fails_without_the_guard_and_waits_with_it() -> None:
    error = _trace_beside_a_call(None)
    assert isinstance(error, NameError) and "not installed as a submodule" in str(error)
    assert _trace_beside_a_call(TraceGuard()) is None


def test_a_trace_waits_for_calls_in_flight() -> None:
    guard, order = TraceGuard(), []
    entered = threading.Event()

    def stage() -> None:
        with guard.calls():
            entered.set()
            time.sleep(PAUSE_S)
            order.append("call done")

    thread = threading.Thread(target=stage)
    thread.start()
    entered.wait()
    with guard.tracing():
        order.append("trace")
    thread.join()
    assert order == ["call done", "trace"]


def test_stages_that_trace_inside_their_calls_take_turns() -> None:
    """Two threads, each inside `calls()` (and nested), each starting a trace: both finish."""
    guard, done = TraceGuard(), []
    both_inside = threading.Barrier(2)

    def stage(name: str) -> None:
        with guard.calls(), guard.calls():
            both_inside.wait()
            with guard.tracing():
                time.sleep(PAUSE_S / 3)
            done.append(name)

    threads = [threading.Thread(target=stage, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(done) == ["a", "b"]
    with guard.tracing():  # every hold was given back
        pass


def test_an_interrupted_wait_for_a_trace_gives_everything_back() -> None:
    """A trace waiting for a call in flight is interrupted (an exception, e.g. Ctrl-C, in
    its wait): the guard is left as it was, so later calls and traces go on."""
    guard = TraceGuard()
    entered, release = threading.Event(), threading.Event()

    def stage() -> None:
        with guard.calls():
            entered.set()
            release.wait()

    thread = threading.Thread(target=stage)
    thread.start()
    entered.wait()
    original = guard._changed.wait_for

    def wait_then_raise(predicate, timeout=None):  # type: ignore[no-untyped-def]
        if predicate():
            return True
        raise KeyboardInterrupt

    guard._changed.wait_for = wait_then_raise  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt), guard.tracing():
        pass
    guard._changed.wait_for = original  # type: ignore[method-assign]
    release.set()
    thread.join()
    with guard.calls(), guard.tracing():  # nothing left claimed or counted
        pass
