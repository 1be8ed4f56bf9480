"""The local executor: `foleyrt batch`'s stages on one machine, overlapped.

    decoders (threads) --encoded (bounded)--> GPU thread: encodes, groups
        --groups (one)--> denoising thread: denoises [the GPU thread does, `Encoders.BETWEEN`]
        --denoised groups (bounded)--> writer thread: VAE decode
        --results (bounded)--> muxing threads: mux, write

Where the time of one 10 s 720p clip goes decides the shape: decoding (CPU) takes about as
long as the clip's share of denoising (GPU), its features a fraction of that, muxing another
fraction, the VAE almost nothing. So:

- Decoders run ahead in parallel threads. With `DecodeIn.THREADS` each decodes in its own
  thread (with `Encoders.BESIDE` the GPU resizes and encodes the frames as they come,
  `FoleyPipeline.encode`; by default the thread resizes them on the CPU); but turning
  decoded frames into RGB holds the GIL (`scripts/profile_media.py`), so these threads take
  turns on one core and hold up the GPU threads (on an H100 host, processes gave 11-14 %
  more clips/s, docs/benchmarks.md §6 run BD, so they are the default on a GPU,
  `DecodeIn.default_for`): `DecodeIn.PROCESSES` has each thread hand its clip to a process
  of a pool, which decodes and resizes it on the CPU
  (`stages.decode_source`, the release's own arithmetic) and sends the frames back through
  shared memory; `foleyrt batch` starts the processes while the models load
  (`DecodePool`), so they are ready for the first clips. With `Encoders.BESIDE` each
  decoder thread encodes its clip on its own CUDA stream, because the GPU thread queues a
  whole group's steps ahead of the GPU: on the one default stream a decoder's encoder
  kernels would wait behind all of them, and the next group's features would be ready only
  when the current group is done. On their own
  streams they run beside the transformer's kernels (a decoder waits for its own stream only,
  see `FoleyPipeline._sync`). Beside is not enough: measured on an H100, a clip's features
  took 3.3 s in batch mode against 0.2 s on an idle GPU, each of the encoders' many small
  kernels waiting for SMs behind the transformer's, so groups went out with the few clips
  that were ready. The decoders' and the writer's streams therefore have the highest
  priority: the GPU hands SMs that come free to their kernels first, and the transformer
  fills the rest (docs/benchmarks.md §6).
- Where the features are computed is a choice (`Encoders`), since beside is not free either:
  with priority the groups filled, yet the transformer's GPU time per clip grew by about
  what batching saves, the encoders' kernels holding SMs its GEMMs wait for (docs §6). So
  each decoder decodes and resizes its clip on the CPU (in its thread, or in a process with
  `DecodeIn.PROCESSES`) and hands the frames to the GPU thread, which computes their
  features. A clip longer than one pass is still encoded by its decoder (it streams in
  windows: its frames at once would not fit in memory).
- Queueing a group's denoising holds the thread that queues it about as long as the GPU
  takes to run it (measured: the call's host time matches the group's GPU time, docs §6 run
  AX; the loop has no wait of its own, so the host likely can queue only so far ahead). By
  default (`Encoders.AHEAD`) a denoising thread of its own therefore queues each group (and
  waits there), while the GPU thread goes on encoding on a high-priority stream, so the next
  group's features are computed beside the current group's denoising and the group fills
  meanwhile (in bf16 the faster place end to end, docs §6 run AY; in fp8 within a few per
  cent of between, run BA). `Encoders.BETWEEN` has the GPU thread queue the encoding behind
  the denoising, one network on the GPU at a time, without waiting for it
  (`FoleyPipeline.encode(wait=False)`: the uploads and the text encoder, which would wait
  for the queued denoising, go on a side stream); being held while a group denoises, that
  thread then encodes the next clips one by one, the GPU doing little but their encoders.
  `Encoders.INTERLEAVED` keeps ahead's two threads but has the GPU thread queue the
  encoders on the denoising's own stream, between the steps of the group being queued
  there: one network on the GPU at a time, as between (beside the transformer, ahead's
  encoders slowed it by about their own GPU time, most in fp8: docs §6 runs AY, BA), with
  neither thread waiting for the other. Measured, it is within 1-2 % of ahead (docs §6 runs
  BD, BE): the transformer keeps its pace, but the stream also carries the encoders.
- The GPU thread groups items of one shape (they share each forward) until the group holds
  what the row budget allows (`--batch-rows`, or what the GPU's free memory allows), or until
  the GPU has nothing else to do and no clip came for a while (`_Run.ripe_wait`); groups go
  as powers of two of their items (`stages.Grouper`: few group sizes, few shapes to compile
  and capture). It queues the group's denoising and goes back to collecting.
- The writer waits for a group's denoising and decodes its latents with the VAE on its own
  stream (beside the next group's denoising); a few muxing threads write the items while the
  GPU carries on. Muxing a 10 s clip takes about a fifth of a second of CPU: one thread
  would leave the run's last group waiting on it clip after clip, and would be what limits
  once the GPU's share of a clip falls under it (FP8).

Queues are bounded, so a folder of 10,000 clips holds a group or two of items at a time:
what stays per clip is its report row. With `--offload` the stages run one after another
(overlapping them would hold every network on the GPU at once, which is what offloading
avoids); `overlap=False` does so too, the one-at-a-time baseline that `bench --throughput`
compares with.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from foleyrt.accel.process import encoder_matmul_precision
from foleyrt.accel.runtime import OffloadKind, RuntimeConfig
from foleyrt.batch import stages
from foleyrt.batch.decoders import DecodePool
from foleyrt.batch.plan import BatchReport, BatchSettings, ItemResult, Status
from foleyrt.batch.stages import Work
from foleyrt.errors import UsageError
from foleyrt.media.video import DecodedClip
from foleyrt.pipeline.features import quick_gil_handover
from foleyrt.pipeline.pipeline import FoleyPipeline, FoleyResult

DEFAULT_DECODE_WORKERS = max(1, min(4, os.cpu_count() or 1))
GROUP_WAIT_S = 0.5  # how long a partial group waits while the GPU idles (`_Run.ripe_wait`)
MUXERS = 4  # threads that write the items' outputs (see the module docstring)
POLL_S = 0.05  # how often a waiting stage looks at the stop flag and the GPU
STAGES = ("decode", "encode", "denoise", "finish", "write")

_END = object()  # closes a queue: no more items will come


class DecodeIn(str, Enum):
    """Where the decoders decode (see the module docstring)."""

    THREADS = "threads"
    PROCESSES = "processes"

    @classmethod
    def default_for(cls, runtime: RuntimeConfig) -> DecodeIn:
        """Processes where the stages overlap on a GPU (their frames' RGB conversion no
        longer holds the GIL the GPU threads need; docs/benchmarks.md §6, run BD); threads
        elsewhere: on a CPU the cores are the model's too and a process each would cost a
        PyTorch import, and with offloading one thread runs every stage, decoding too."""
        overlapped = runtime.device.type == "cuda" and runtime.offload.kind is OffloadKind.NONE
        return cls.PROCESSES if overlapped else cls.THREADS


class Encoders(str, Enum):
    """Where the clips' features are computed on the GPU (see the module docstring): on each
    decoder's stream beside the transformer; on the GPU thread's, between groups; by the GPU
    thread on a stream of its own, ahead of the groups a second thread denoises; or by the
    GPU thread on the denoising's own stream, interleaved with the steps a second thread
    queues there (one network on the GPU at a time, neither thread held by the other)."""

    BESIDE = "beside"
    BETWEEN = "between"
    AHEAD = "ahead"
    INTERLEAVED = "interleaved"

    @property
    def by_gpu_thread(self) -> bool:
        """The decoders decode and resize on the CPU; the GPU thread computes the features."""
        return self is not Encoders.BESIDE

    @property
    def denoised_apart(self) -> bool:
        """A denoising thread of its own queues the groups (and is held there)."""
        return self in (Encoders.AHEAD, Encoders.INTERLEAVED)


@dataclass(frozen=True)
class LocalOptions:
    """`batch_rows`: transformer rows per forward (None: the row budget); `decode_workers`:
    clips decoded at once, in threads or processes (`decode_in`); `encoders`: where their
    features are computed; `overlap`: False runs one stage after another; `group_wait_s`:
    how long a partial group waits while the GPU idles (see `_Run.ripe_wait`);
    `fill_groups`: groups go only full or at the input's end (every group size met, as the
    throughput bench's warm-up needs)."""

    batch_rows: int | None = None
    decode_workers: int = DEFAULT_DECODE_WORKERS
    group_wait_s: float = GROUP_WAIT_S
    fill_groups: bool = False
    overlap: bool = True
    decode_in: DecodeIn = DecodeIn.THREADS
    encoders: Encoders = Encoders.AHEAD

    def __post_init__(self) -> None:
        if self.batch_rows is not None and self.batch_rows < 1:
            raise UsageError(f"--batch-rows must be at least 1, got {self.batch_rows}")
        if self.decode_workers < 1:
            raise UsageError(f"--decode-workers must be at least 1, got {self.decode_workers}")


@dataclass
class RunStats:
    """Where a run's time went: seconds each stage was busy (summed over its threads; on CUDA
    the host's view: a denoising call returns once queued, which holds it about as long as
    the GPU runs the group, a decoder once its stream is done), the clips of each group, and
    each group's denoising as the GPU timed it (CUDA events; empty elsewhere; interleaved,
    the encoders queued among its steps count too).
    `first_group_s`: when the first group's latents were ready."""

    wall_s: float = 0.0
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    groups: list[int] = field(default_factory=list)
    denoise_gpu_s: list[float] = field(default_factory=list)
    first_group_s: float | None = None


@dataclass
class _Decoded:
    """An item decoded on the CPU, on its way to be encoded by the GPU thread."""

    work: Work
    clip: DecodedClip


@dataclass
class _Group:
    """A closed group on its way to the denoising thread, with the event after its items'
    encoders on the GPU thread's encoding stream (None off CUDA, or where the GPU thread
    encodes on the denoising's stream)."""

    group: list[Work]
    max_rows: int
    encoders_done: torch.cuda.Event | None


@dataclass
class _Denoised:
    """A group on its way to the writer: its latents, and on CUDA the events that bracket
    its denoising on the GPU thread's stream."""

    group: list[Work]
    latents: list[Tensor] | None
    started: torch.cuda.Event | None = None
    done: torch.cuda.Event | None = None


def run_local(
    pipe: FoleyPipeline, report: BatchReport, settings: BatchSettings,
    options: LocalOptions | None = None, *,
    on_item: Callable[[ItemResult], None] | None = None,
    decoders: DecodePool | None = None,
) -> RunStats:
    """Generate every pending item of `report`, recording each outcome and calling `on_item`
    with it as it ends (from the thread that ended it, one call at a time). A bug in any
    stage stops the run and is re-raised here once every thread has stopped. `decoders`:
    decoding processes already started (`DecodePool`) for `DecodeIn.PROCESSES`;
    without them the run starts its own, and their start (each imports PyTorch: seconds)
    delays its first clips."""
    options = options or LocalOptions()
    if decoders is not None and options.decode_in is not DecodeIn.PROCESSES:
        raise UsageError(f"decoding processes were given to a run that decodes in "
                         f"{options.decode_in.value}")
    run = _Run(pipe, settings, options, on_item, decoders)
    pending = report.pending
    with torch.inference_mode():
        if pending and run.options.overlap and pipe.models.offloader is None:
            run.streaming(pending)
        elif pending:
            run.serial(pending)
    run.stats.wall_s = time.perf_counter() - run.t0
    return run.stats


class _Stage(threading.Thread):
    """A stage's thread; `finished` is set once its loop has returned. The run waits on that,
    not on `join()`: in CPython 3.11 a join interrupted by a signal marks the thread as
    stopped while it still runs (bpo-45274's fix), so a second join returns at once."""

    def __init__(self, loop: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.loop = loop
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self.loop()
        finally:
            self.finished.set()


class _Run:
    """One run's stages, queues and bookkeeping (see the module docstring)."""

    def __init__(self, pipe: FoleyPipeline, settings: BatchSettings, options: LocalOptions,
                 on_item: Callable[[ItemResult], None] | None,
                 decoders: DecodePool | None) -> None:
        self.pipe, self.settings, self.options = pipe, settings, options
        self.on_item = on_item
        self.stats = RunStats()
        self.lock = threading.Lock()  # stats, the feed, `on_item`
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.cuda = pipe.runtime.device.type == "cuda"
        self.last_done: torch.cuda.Event | None = None  # the last queued group's end
        self.queued = 0  # groups whose denoising has been queued
        # Decoding processes (`DecodeIn.PROCESSES`): the caller's, else the run's own.
        self.pool = decoders
        self.muxers: ThreadPoolExecutor | None = None  # None: items are written in turn
        self.muxing = threading.BoundedSemaphore(MUXERS)  # results held for the muxers
        self.t0 = time.perf_counter()

    # -- the two drivers ------------------------------------------------------------------

    def serial(self, pending: Sequence[ItemResult]) -> None:
        """Every stage in this thread, one after another; groups still share forwards."""
        grouper = stages.Grouper(self.row_limit)
        for result in pending:
            work = self.start(result)
            if work is not None and self.encode(work):
                closed = grouper.add(work)
                if closed is not None:
                    self.write(self.denoise(*closed))
            if self.stop.is_set():
                return
        for closed in grouper.drain():
            self.write(self.denoise(*closed))
            if self.stop.is_set():
                return

    def streaming(self, pending: Sequence[ItemResult]) -> None:
        workers = min(self.options.decode_workers, len(pending))
        per_item = stages.items_per_group(self.settings.request, self.options.batch_rows)
        encoded: queue.Queue[object] = queue.Queue(maxsize=max(per_item, workers))
        denoised: queue.Queue[object] = queue.Queue(maxsize=1)
        feed = iter(pending)
        left = [workers]

        def decoder() -> None:
            try:
                self.decode_all(feed, encoded)
            finally:
                with self.lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    self.put(encoded, _END)

        threads = [self.thread(decoder, f"foleyrt-decode-{k}") for k in range(workers)]
        threads.append(self.thread(lambda: self.write_all(denoised), "foleyrt-write"))
        # Closed groups may go to a thread of their own, which queues their denoising (and
        # is held there while the GPU works) as this one goes on encoding.
        handoff = denoised
        if self.options.encoders.denoised_apart:
            handoff = queue.Queue(maxsize=1)
            threads.append(self.thread(lambda: self.denoise_all(handoff, denoised),
                                       "foleyrt-denoise"))
        # Both settings are process-wide and each decoder's encoding sets and restores them:
        # held for the whole run, the decoders' nested uses restore what they found.
        fast = self.pipe.runtime.fast_encoders
        processes: AbstractContextManager[DecodePool | None] = nullcontext(self.pool)
        if self.pool is None and self.options.decode_in is DecodeIn.PROCESSES:
            processes = DecodePool(workers)
        muxers = ThreadPoolExecutor(MUXERS, thread_name_prefix="foleyrt-mux")
        with processes as self.pool, muxers as self.muxers, quick_gil_handover(), \
                encoder_matmul_precision(fast):
            started: list[_Stage] = []
            try:
                for t in threads:
                    t.start()
                    started.append(t)
                self.guard(lambda: self.group_all(encoded, handoff))
                self.put(handoff, _END)
            except BaseException:  # a signal outside the guarded loop (Ctrl-C, SIGTERM)
                self.stop.set()
                raise
            finally:
                self.join(started)
        if self.error is not None:
            raise self.error

    # -- the stages' loops ----------------------------------------------------------------

    def decode_all(self, feed: Iterator[ItemResult], encoded: queue.Queue[object]) -> None:
        stream = self.new_stream()
        while not self.stop.is_set():
            with self.lock:
                result = next(feed, None)
            if result is None:
                return
            work = self.start(result)
            if work is None:
                continue
            clip = None
            if self.pool is not None or self.options.encoders.by_gpu_thread:
                clip = self.decode(work)
                if clip is None:
                    continue
            if isinstance(clip, DecodedClip) and self.options.encoders.by_gpu_thread:
                if not self.put(encoded, _Decoded(work, clip)):
                    return
                continue
            with torch.cuda.stream(stream):
                ok = self.encode(work, clip)
            if ok and not self.put(encoded, work):
                return

    def group_all(self, encoded: queue.Queue[object], handoff: queue.Queue[object]) -> None:
        """The GPU thread: encodes what the decoders hand over, groups the items and hands
        each closed group on: denoised here (queued behind this thread's encoders), or as a
        `_Group` for the denoising thread. Ahead, this thread encodes on a stream of its own;
        otherwise on its current stream, the device's default, which is also the denoising
        thread's (interleaved: its encoders queue between the steps queued there)."""
        apart = self.options.encoders.denoised_apart
        stream = self.new_stream() if self.options.encoders is Encoders.AHEAD else None
        grouper = stages.Grouper(self.row_limit)
        sent = 0

        def send(closed: tuple[list[Work], int]) -> None:
            nonlocal sent
            sent += 1
            if not apart:
                self.put(handoff, self.denoise(*closed))
                return
            encoders_done = None
            if stream is not None:
                encoders_done = torch.cuda.Event()
                encoders_done.record(stream)
            self.put(handoff, _Group(*closed, encoders_done))

        while not self.stop.is_set():
            try:
                item = encoded.get(timeout=POLL_S)
            except queue.Empty:
                item = None
            lull = item is None  # no clip came for POLL_S
            if item is _END:
                for rest in grouper.drain():
                    send(rest)
                return
            if isinstance(item, _Decoded):  # encoded here, queued with the denoising
                with torch.cuda.stream(stream):  # or ahead of it, on a stream of its own
                    item = item.work if self.encode(item.work, item.clip, wait=False) else None
            closed = grouper.add(item) if isinstance(item, Work) else None
            wait = self.ripe_wait(sent, lull)
            if closed is None and wait is not None and self.gpu_idle(sent):
                closed = grouper.ripe(wait)
            if closed is not None:
                send(closed)

    def denoise_all(self, groups: queue.Queue[object], denoised: queue.Queue[object]) -> None:
        """The denoising thread (`Encoders.denoised_apart`): queues each group's denoising
        once its encoders are done, and hands it to the writer."""
        while True:
            item = self.get(groups)
            if item is None or item is _END:
                self.put(denoised, _END)
                return
            assert isinstance(item, _Group)
            if item.encoders_done is not None:
                torch.cuda.current_stream().wait_event(item.encoders_done)
            if not self.put(denoised, self.denoise(item.group, item.max_rows)):
                return

    def write_all(self, denoised: queue.Queue[object]) -> None:
        stream = self.new_stream()
        while True:
            item = self.get(denoised)
            if item is None or item is _END:
                return
            assert isinstance(item, _Denoised)
            with torch.cuda.stream(stream):
                self.write(item)

    # -- one item, one group ----------------------------------------------------------------

    def start(self, result: ItemResult) -> Work | None:
        work = stages.start(result, self.settings)
        if work is None:
            self.ended(result)
        return work

    def decode(self, work: Work) -> DecodedClip | Path | None:
        """The clip decoded and resized on the CPU by a decoding process, or without one in
        this thread (see `stages.decode_source`); None when it failed (recorded)."""
        with self.timed("decode"):
            clip = stages.decode(work, self.pool)
        if clip is None:
            self.ended(work.result)
        return clip

    def encode(self, work: Work, clip: DecodedClip | Path | None = None, *,
               wait: bool = True) -> bool:
        with self.timed("encode"):
            ok = stages.encode(self.pipe, work, clip, wait=wait)
        if not ok:
            self.ended(work.result)
        return ok

    def denoise(self, group: list[Work], max_rows: int) -> _Denoised:
        """Queue the group's denoising (on CUDA it runs on while this returns)."""
        with self.lock:
            self.stats.groups.append(len(group))
        started = done = None
        if self.cuda:
            for work in group:  # made on a decoder's stream, read on this one from now on
                assert work.encoded is not None
                work.encoded.record_stream(torch.cuda.current_stream())
            # The previous group's end and this group's encoders: `denoise` waits for them
            # anyway (the features' check and the first copy to the GPU do), and so the event
            # below times this group's denoising only.
            torch.cuda.current_stream().synchronize()
            started = torch.cuda.Event(enable_timing=True)
            started.record()
        with self.timed("denoise"):
            latents = stages.denoise(self.pipe, group, max_rows)
        if latents is None:
            for work in group:
                self.ended(work.result)
        if self.cuda:
            done = torch.cuda.Event(enable_timing=True)
            done.record()
            self.last_done = done
        with self.lock:
            self.queued += 1
        return _Denoised(group, latents, started, done)

    def write(self, denoised: _Denoised) -> None:
        """Wait for the group's latents, then finish each of its items and have it written."""
        if denoised.latents is None or self.stop.is_set():
            return
        if denoised.done is not None and denoised.started is not None:
            denoised.done.synchronize()
            with self.lock:
                self.stats.denoise_gpu_s.append(denoised.started.elapsed_time(denoised.done)
                                                / 1000)
        with self.lock:
            if self.stats.first_group_s is None:
                self.stats.first_group_s = time.perf_counter() - self.t0
        for work, latents in zip(denoised.group, denoised.latents, strict=True):
            with self.timed("finish"):
                result = stages.finish(self.pipe, work, latents)
            work.encoded = None  # the features' memory goes back now, not with the group
            if result is None:
                self.ended(work.result)
            elif self.muxers is None:
                self.write_one(work, result)
            elif self.acquire(self.muxing):
                job = self.muxers.submit(self.guard, partial(self.write_one, work, result))
                job.add_done_callback(lambda _: self.muxing.release())
            if self.stop.is_set():
                return

    def write_one(self, work: Work, result: FoleyResult) -> None:
        with self.timed("write"):
            stages.write(work, result)
        self.ended(work.result)

    def ended(self, result: ItemResult) -> None:
        """An item is done or failed: tell `on_item`; stop after a failure with fail_fast."""
        with self.lock:
            if self.on_item is not None:
                self.on_item(result)
        if self.settings.fail_fast and result.status is Status.FAILED:
            self.stop.set()

    # -- helpers ----------------------------------------------------------------------------

    def row_limit(self, work: Work) -> int:
        return stages.row_limit(self.pipe, work, self.options.batch_rows)

    def ripe_wait(self, sent: int, lull: bool) -> float | None:
        """How long a group must have waited to go while the GPU idles, `sent` groups into
        the run (None: it goes only full, or at the input's end). With `fill_groups`, None.
        With a denoising thread apart the first `group_wait_s` (clips come in a burst then),
        any later one not at all: the GPU thread encodes on while groups denoise, so the next
        group grows meanwhile. Where it denoises itself, each group holds it while the GPU
        runs it: a group then goes only in a lull of the clips (`lull`: none came for
        `POLL_S`) once it has waited `group_wait_s`, for fewer, fuller groups
        (docs/benchmarks.md §6, runs AV-AX)."""
        if self.options.fill_groups:
            return None
        if self.options.encoders.denoised_apart:
            return self.options.group_wait_s if sent == 0 else 0.0
        return self.options.group_wait_s if lull else None

    def gpu_idle(self, sent: int) -> bool:
        """True when each of the `sent` groups has been queued and the last one is done (off
        CUDA: queued, since denoising blocks)."""
        with self.lock:
            if self.queued < sent:
                return False
        return self.last_done is None or self.last_done.query()

    def new_stream(self) -> torch.cuda.Stream | None:
        """A stream for a decoder, the writer or the encoders ahead of the groups, served
        before the denoising's (see the module docstring)."""
        return self.pipe.runtime.priority_stream()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self.lock:
                self.stats.busy_s[stage] += time.perf_counter() - start

    def join(self, threads: Sequence[_Stage]) -> None:
        """Wait for the stages. Interrupted while waiting (Ctrl-C or SIGTERM once this thread
        has queued everything), stop them and wait again before passing the interrupt on:
        stage threads left running into the interpreter's exit abort the process (a thread
        taking the GIL back from PyTorch then ends inside C++ code: "terminate called without
        an active exception"). Every way out of `streaming` passes here."""
        try:
            for t in threads:
                t.finished.wait()
        except BaseException:
            self.stop.set()
            for t in threads:
                t.finished.wait()
            raise

    def thread(self, target: Callable[[], None], name: str) -> _Stage:
        return _Stage(lambda: self.guard(target), name)

    def guard(self, target: Callable[[], None]) -> None:
        """Run a stage's loop; its bug (already recorded on its items) stops every stage."""
        try:
            with torch.inference_mode():  # a thread does not inherit its creator's mode
                target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the run, after every stage stops
            with self.lock:
                self.error = self.error or exc
            self.stop.set()

    def acquire(self, slots: threading.BoundedSemaphore) -> bool:
        """Take a slot unless the run stops first (False then)."""
        while not self.stop.is_set():
            if slots.acquire(timeout=POLL_S):
                return True
        return False

    def put(self, q: queue.Queue[object], item: object) -> bool:
        """Put unless the run stops first (False then)."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue[object]) -> object | None:
        """The next item, or None once the run stops."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        return None

