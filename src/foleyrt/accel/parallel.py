"""CFG-parallel: one request's classifier-free guidance split over two processes, one per GPU.

Under guidance every forward's rows are two halves, unconditional first
(`ConditionRows.guided`), independent until the loop combines them. `CfgParallelDenoiser` wraps
a rank's own denoiser (whatever `accel.recipes.apply` built: compiled blocks and CUDA graphs
included): it prepares only its rank's half of the conditions, and per step computes that half
and all-gathers the other, so each rank's loop sees every row's velocity. Unguided forwards
(guidance <= 1) run whole on both ranks: replicated, with no exchange, so the two loops stay
the same program.

Process model: rank 0 is the caller's process (the CLI, a Python program, the server's worker
thread). `CfgParallel` starts rank 1 as a fresh Python process (`subprocess`, a socket pair for
its control channel; not multiprocessing's spawn, which would re-run the caller's main script
there), which builds the same transformer on the next device while rank 0 loads its models.
The features and the VAE stay on rank 0; only the loop is split: for each `denoise` rank 0
sends the tasks, schedule and row limit over the channel, and both ranks run
`sampling.loop.denoise` on them (SPMD). After every step rank 0 broadcasts one flag on the CPU
(gloo): its progress callback may stop the loop, and both ranks then stop at the same step, so
neither waits on a collective the other never joins. A failure on either rank ends rank 1 (a
failing rank 1 sends its exception first); rank 0 raises it, and the next request starts a
fresh rank 1.

Backends: NCCL between the GPUs with NVLink multicast off (`accel.process`), gloo for the
flags; on the CPU gloo for both (two CPU processes: how the tests prove the numbers match one
process's). torch.distributed keeps one default group per process, so a process holds one
CFG-parallel pipeline at a time.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import fields, replace
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from foleyrt.accel.process import configure_process
from foleyrt.accel.runtime import ParallelMode, RuntimeConfig
from foleyrt.errors import Cancelled, ConfigError, FoleyError, ParallelError, UsageError
from foleyrt.sampling.conditions import ConditionRows, Conditions
from foleyrt.sampling.denoiser import Denoiser, Velocity
from foleyrt.sampling.loop import StepCallback, StepEvent, Task, Window, denoise
from foleyrt.sampling.schedule import Schedule

log = logging.getLogger(__name__)

PeerBuilder = Callable[[RuntimeConfig], Denoiser]  # pickled to rank 1: a module's function

WORLD = 2
LOCALHOST = "127.0.0.1"
READY = "ready"
RANK1_ENTRY = ("import sys; from foleyrt.accel.parallel import rank1_main; "
               "rank1_main(int(sys.argv[1]))")
SHUTDOWN = b""  # an empty job: rank 1 leaves its loop
POLL_S = 0.2  # while rank 1 starts: how often rank 0 checks that it is still alive
FAILURE_GRACE_S = 1.0  # after a failure: how long rank 0 waits for rank 1's exception
JOIN_TIMEOUT_S = 30.0  # how long a stopping rank 1 gets before it is terminated

# PyTorch 2.13 renamed all_gather_into_tensor (now deprecated); the pins admit older versions.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def rank_devices(device: torch.device) -> tuple[torch.device, torch.device]:
    """The devices of ranks 0 and 1: `device` and the GPU after it, or the CPU twice."""
    if device.type != "cuda":
        return device, device
    first = device.index or 0
    return torch.device("cuda", first), torch.device("cuda", first + 1)


class CfgParallelDenoiser:
    """`inner`, this rank's denoiser, on this rank's half of guided rows (rank 0 the
    unconditional rows, rank 1 the conditional ones); see the module docstring."""

    def __init__(self, inner: Denoiser, rank: int) -> None:
        self.inner = inner
        self.model = inner.model
        self.text_masks = inner.text_masks
        self.rank = rank

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        if not rows.guided:
            return self.inner.prepare(rows, schedule)
        half = self.inner.prepare(rows.halves()[self.rank], schedule)
        rank = self.rank

        def velocity(x: Tensor, step: int) -> Tensor:
            mine = half(x.chunk(2)[rank], step).contiguous()
            both = mine.new_empty(WORLD * mine.shape[0], *mine.shape[1:])
            _all_gather(both, mine)
            return both

        return velocity


class CfgParallel:
    """Rank 0's side: starts rank 1, whose denoiser `build(runtime)` makes on the next device
    (it loads while the caller builds its own), then runs `denoise` on both ranks. `attach`
    the caller's denoiser before the first `denoise`; `close` ends rank 1 (also done at exit)."""

    def __init__(self, runtime: RuntimeConfig, build: PeerBuilder) -> None:
        if runtime.parallel is not ParallelMode.CFG:
            raise UsageError("CfgParallel needs a runtime with parallel='cfg'")
        if not dist.is_available():
            raise ConfigError("--parallel cfg needs torch.distributed, which this PyTorch "
                              "build lacks")
        if dist.is_initialized():
            raise UsageError("this process already has a torch.distributed process group "
                             "(another CFG-parallel pipeline?): close it first")
        self.runtime = runtime
        self._build = build
        self._peer: _Peer | None = _Peer(runtime, build)
        self._closed = False
        self.denoiser: CfgParallelDenoiser | None = None

    def attach(self, local: Denoiser) -> CfgParallelDenoiser:
        """Wrap rank 0's own denoiser, once rank 1 is ready (its start-up error, if any, is
        raised here)."""
        self._running_peer()
        self.denoiser = CfgParallelDenoiser(local, rank=0)
        return self.denoiser

    def denoise(self, tasks: Sequence[Task], schedule: Schedule, *, max_rows: int | None = None,
                on_step: StepCallback | None = None, hold_prepared: bool = True
                ) -> list[Tensor]:
        """`sampling.loop.denoise` on both ranks; rank 0's latents are returned."""
        if self.denoiser is None:
            raise UsageError("attach rank 0's denoiser before denoising")
        peer = self._running_peer()

        def step(event: StepEvent) -> bool:
            try:
                stop = bool(on_step is not None and on_step(event))
            except Cancelled:
                _step_flag(True)
                raise
            return _step_flag(stop)

        try:
            peer.send(_pack(tasks, schedule, max_rows, hold_prepared))
            return denoise(self.denoiser, tasks, schedule, max_rows=max_rows, on_step=step,
                           hold_prepared=hold_prepared)
        except Cancelled:
            raise  # rank 1 stopped at the same step and waits for the next request
        except BaseException as exc:
            self._peer = None
            cause = peer.stop_after_failure()
            if cause is None:
                raise
            raise cause from exc

    def close(self) -> None:
        """End rank 1 and the process group; the pipeline cannot denoise afterwards."""
        self._closed = True
        if self._peer is not None:
            self._peer.stop()
            self._peer = None

    def _running_peer(self) -> _Peer:
        """Rank 1, in the group: started afresh when an earlier request's failure ended it."""
        if self._closed:
            raise UsageError("this CFG-parallel pipeline was closed")
        if self._peer is not None and not self._peer.alive:
            log.warning("the CFG-parallel peer process had stopped; starting a new one")
            self._peer.stop()
            self._peer = None
        if self._peer is None:
            self._peer = _Peer(self.runtime, self._build)
        try:
            self._peer.join(self.runtime.device)
        except BaseException:
            self._peer.stop()
            self._peer = None
            raise
        return self._peer


class _Peer:
    """Rank 1 seen from rank 0: its process, the control channel to it, the rendezvous
    store."""

    def __init__(self, runtime: RuntimeConfig, build: PeerBuilder) -> None:
        configure_process()  # NCCL without NVLink multicast, inherited by rank 1
        self.device = rank_devices(runtime.device)[1]
        rank1 = replace(runtime, device=self.device, parallel=ParallelMode.NONE)
        self.store = dist.TCPStore(LOCALHOST, 0, WORLD, is_master=True, wait_for_workers=False)
        level = logging.getLogger("foleyrt").getEffectiveLevel()
        hello = pickle.dumps((build, rank1, self.store.port, level))  # fails here, not there
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # what we import from
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RANK1_ENTRY, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env)
        self.conn = Connection(ours.detach())
        self.joined = False
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self.conn, True)
        self.conn.send_bytes(hello)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def join(self, device: torch.device) -> None:
        """Wait until rank 1 has built its denoiser, then form the process group (once)."""
        if self.joined:
            return
        while not self.conn.poll(POLL_S) and self.alive:
            pass
        message = self._receive()
        if message != READY:
            raise self._failure(message, "could not start")
        _join_group(self.store, 0, rank_devices(device)[0])
        self.joined = True

    def send(self, job: bytes) -> None:
        self.conn.send_bytes(job)

    def stop(self, graceful: bool = True) -> None:
        """Ask rank 1 to leave (`graceful`) or terminate it; then leave the group."""
        if self._finalizer.detach() is not None:
            _shutdown(self.process, self.conn, graceful)

    def stop_after_failure(self) -> BaseException | None:
        """After a failed request, rank 1 terminated (it may wait on a collective that will
        never come) and its failure, if the failure was its: the exception it sent, or its
        end. None when it was alive and silent: the failure was rank 0's own."""
        silent = not self.conn.poll(FAILURE_GRACE_S)  # a message, or the end of the channel
        message = None if silent else self._receive()
        self.stop(graceful=False)
        return None if silent else self._failure(message, "failed")

    def _receive(self) -> object:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            return None  # rank 1 ended without a word

    def _failure(self, message: object, what: str) -> BaseException:
        """Rank 1's failure as rank 0 raises it: user-facing errors and out-of-memory errors
        as they were (callers handle those), anything else as a `ParallelError`."""
        if isinstance(message, (FoleyError, torch.cuda.OutOfMemoryError)):
            return message
        if isinstance(message, BaseException):
            detail = f"{type(message).__name__}: {message}"
        else:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(JOIN_TIMEOUT_S)
            detail = f"its process ended (exit status {self.process.returncode})"
        return ParallelError(f"the CFG-parallel peer on {self.device} {what}: {detail}")


def _shutdown(process: subprocess.Popen, conn: Connection, graceful: bool) -> None:
    if graceful and process.poll() is None:
        with suppress(OSError):  # already gone
            conn.send_bytes(SHUTDOWN)
        with suppress(subprocess.TimeoutExpired):
            process.wait(JOIN_TIMEOUT_S)
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(JOIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    conn.close()
    if dist.is_initialized():
        dist.destroy_process_group()


def _join_group(store: dist.Store, rank: int, device: torch.device) -> None:
    """The default process group of the two ranks: gloo on the CPU; on GPUs NCCL for the
    velocities and gloo for the step flags, the NCCL communicator made now (not at the first
    step)."""
    if device.type == "cuda":
        dist.init_process_group("cpu:gloo,cuda:nccl", store=store, rank=rank,
                                world_size=WORLD, device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)


def _step_flag(stop: bool) -> bool:
    """Rank 0's decision to stop after this step, as both ranks see it (rank 1's `stop` is
    not used)."""
    flag = torch.tensor([int(stop)], dtype=torch.int32)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _pack(tasks: Sequence[Task], schedule: Schedule, max_rows: int | None,
          hold_prepared: bool) -> bytes:
    """A `denoise` call as plain containers of CPU tensors (read back with `weights_only`)."""
    buffer = io.BytesIO()
    torch.save({"tasks": _to_wire(list(tasks)), "schedule": _to_wire(schedule),
                "max_rows": max_rows, "hold_prepared": hold_prepared}, buffer)
    return buffer.getvalue()


def _unpack(data: bytes, device: torch.device
            ) -> tuple[list[Task], Schedule, int | None, bool]:
    job = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    return (_from_wire(job["tasks"]), _from_wire(job["schedule"]), job["max_rows"],
            job["hold_prepared"])


# The dataclasses of a `denoise` call, sent field by field (a field added to one travels too).
_WIRE_TYPES = {cls.__name__: cls for cls in (Task, Window, Conditions, Schedule)}
_TYPE_KEY = "__wire_type__"


def _to_wire(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.cpu()
    if type(value).__name__ in _WIRE_TYPES:
        return {_TYPE_KEY: type(value).__name__,
                **{f.name: _to_wire(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, list | tuple):
        return type(value)(_to_wire(v) for v in value)
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, dict) and _TYPE_KEY in value:
        kind = _WIRE_TYPES[value[_TYPE_KEY]]
        return kind(**{k: _from_wire(v) for k, v in value.items() if k != _TYPE_KEY})
    if isinstance(value, list | tuple):
        return type(value)(_from_wire(v) for v in value)
    return value


def rank1_main(fd: int) -> None:
    """Rank 1's process (`RANK1_ENTRY`; `fd` its end of the control channel): build the
    denoiser, report, join the group, serve `denoise` calls until rank 0 sends SHUTDOWN or
    goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle: it stops us
    conn = Connection(fd)
    try:
        build, runtime, port, log_level = conn.recv()
        logging.basicConfig(format=f"foleyrt (cfg rank 1, {runtime.device}): %(message)s")
        logging.getLogger("foleyrt").setLevel(log_level)
        configure_process()
        if runtime.device.type == "cuda":
            torch.cuda.set_device(runtime.device)
        store = dist.TCPStore(LOCALHOST, port, WORLD, is_master=False)
        denoiser = CfgParallelDenoiser(build(runtime), rank=1)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, which raises it
        _report_failure(conn, exc)
        return
    conn.send(READY)
    _join_group(store, 1, runtime.device)
    try:
        with torch.inference_mode():
            _serve(conn, denoiser, runtime.device)
    finally:
        dist.destroy_process_group()


def _serve(conn: Connection, denoiser: CfgParallelDenoiser, device: torch.device) -> None:
    while True:
        try:
            job = conn.recv_bytes()
        except EOFError:
            return  # rank 0 is gone
        if job == SHUTDOWN:
            return
        try:
            tasks, schedule, max_rows, hold = _unpack(job, device)
            denoise(denoiser, tasks, schedule, max_rows=max_rows,
                    on_step=lambda _: _step_flag(False), hold_prepared=hold)
        except Cancelled:
            continue
        except Exception as exc:  # reported to rank 0; this process ends with the request
            log.exception("denoising failed")
            _report_failure(conn, exc)
            return


def _report_failure(conn: Connection, exc: BaseException) -> None:
    try:
        conn.send(exc)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: type and message
        conn.send(ParallelError(f"{type(exc).__name__}: {exc}"))
