"""The worker threads in front of the GPUs: one per pipeline (one per GPU), all taking jobs
from the one store.

A worker owns its pipeline: the weights, the CUDA context and the compiled graphs of a GPU
are only ever touched from its thread (the encoders also from its encoding threads, below),
and a batch's memory peak is never stacked on another's. It runs jobs in batches, as
Triton's dynamic batcher does: it claims the oldest queued job and encodes it (decode,
features), then claims the queued jobs that will share its forwards (`batching`) while their
rows fit the row budget (`batch_rows`, else what `FoleyPipeline.row_budget` measures for the
first job's shape), waiting at most `batch_wait_s` from its first claim for more to arrive.
Each companion is encoded as it is claimed, up to `COMPANION_ENCODERS` at once on threads of
their own where the worker decodes clips itself: decoding a clip is mostly CPU work that
would otherwise leave the GPU idle one companion after another (nothing else of this worker
runs on the GPU while its batch gathers); with decoding processes the worker encodes them
itself. The batch is denoised in one `FoleyPipeline.denoise` call; each job is then decoded
by the VAE on the worker thread and its files written on one of `OUTPUT_WRITERS` threads
(muxing and the spectrogram are CPU work, a fifth of a second or so per 10 s clip: one job
after another they would hold the GPU idle), and the worker goes on to its next batch while
they write (at most `PENDING_WRITES` jobs' sounds wait for a writer; past that the worker
waits). With decoding processes (`ClipPrefetch`), queued video jobs' clips are decoded
ahead while a batch runs, a claimed job's encoding only waits for its frames, and a batch
takes as companions only jobs whose frames are there (a clip still decoding would hold the
batch, and the GPU, until it is done; the next batch takes that job). The HTTP
threads only talk to the workers through the store (new jobs) and the `WorkerPool`.

Stopping is cooperative: the pipeline calls the progress callback after every decoded frame,
between stages and after every denoising step, and the callback answers True to stop (user
cancel, time limit, server shutdown). A stage itself is never interrupted mid-kernel. In a
batch each job stops on its own: one cancelled or timed out while the batch denoises ends at
once (its record says so, its files go) and its rows are dropped from the result, while the
others run on; the denoising itself stops only when every job of the batch has stopped.

Out of memory while a batch of several jobs denoises: each is retried alone (a smaller peak;
the batch may have been more than the GPU held beside other work). A job out of memory alone,
or in its own decoding or features or VAE, fails with a message that says so.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import torch
from torch import Tensor

from foleyrt.accel.process import encoder_matmul_precision
from foleyrt.batch.local import DecodeIn
from foleyrt.errors import Cancelled, FoleyError
from foleyrt.pipeline.pipeline import (
    Encoded,
    FoleyPipeline,
    FoleyResult,
    Progress,
    release_cuda_memory,
    together_else_alone,
)
from foleyrt.server.batching import BatchKey, LengthHints, companion, job_rows
from foleyrt.server.files import DataDir
from foleyrt.server.metrics import Metrics
from foleyrt.server.outputs import encode_job, write_outputs
from foleyrt.server.prefetch import ClipPrefetch
from foleyrt.server.schemas import JobParams
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobRecord, JobState, JobStore, OutputFiles

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # a missed wake-up costs at most this long
COMPANION_ENCODERS = 4  # companions of a batch encoded at once (see the module docstring)
OUTPUT_WRITERS = 4  # jobs written at once (see the module docstring)
PENDING_WRITES = 64  # jobs' sounds held for the writers at most: a few batches' worth
PROGRESS_WRITE_S = 0.1  # progress is stored at most this often within a stage
STOP_GRACE_S = 5.0  # after the shutdown timeout, how long a step may still take to end
OOM_MESSAGE = (
    "the GPU ran out of memory on this job; try fewer samples or a shorter clip, or retry "
    "when the server is less busy"
)
DISK_FULL_MESSAGE = "the server's disk is full; retry later, when results have expired"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Below this much free space (the failed job's partial files still on it), a job that failed
# is taken to have met a full disk.
_DISK_FULL_BYTES = 1024 * 1024
_STAGES = ("video", "features", "denoise", "decode", "saving")

T = TypeVar("T")


class StopReason(Enum):
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"
    SHUTDOWN = "shutdown"


class Signals:
    """What the HTTP side tells every worker: cancelled jobs, and the drain."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self.draining = threading.Event()
        self.drain_deadline = 0.0  # monotonic; running jobs are re-queued past it

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.add(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._cancelled.discard(job_id)

    def cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def reason(self, job_id: str, deadline: float) -> StopReason | None:
        """Why `job_id` (with its time limit at `deadline`) must stop now, if it must."""
        if self.cancelled(job_id):
            return StopReason.CANCELLED
        now = time.monotonic()
        if self.draining.is_set() and now > self.drain_deadline:
            return StopReason.SHUTDOWN
        if now > deadline:
            return StopReason.TIMED_OUT
        return None


@dataclass(eq=False)  # compared and hashed by identity: one object per claim
class _Job:
    """A claimed job while its batch runs, and until its files are written."""

    record: JobRecord
    started: float  # monotonic
    deadline: float
    encoded: Encoded | None = None
    reason: StopReason | None = None
    ended: bool = False  # its record is final or back in the queue: nothing more to do
    last_write: tuple[str | None, float] = (None, 0.0)

    @property
    def id(self) -> str:
        return self.record.id


class Worker:
    def __init__(self, pipeline: FoleyPipeline, store: JobStore, files: DataDir,
                 settings: ServerSettings, metrics: Metrics, signals: Signals,
                 clips: ClipPrefetch | None = None, name: str = "foleyrt-worker") -> None:
        self.pipeline = pipeline
        self.clips = clips  # None: this thread decodes each clip itself
        self.store = store
        self.files = files
        self.settings = settings
        self.metrics = metrics
        self.signals = signals
        self.hints = LengthHints(files, settings.video_limits)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._wake = threading.Event()
        self._batch: list[_Job] = []
        self._writing: set[_Job] = set()  # finished jobs a writer has yet to write
        self._writing_lock = threading.Lock()
        self._write_slots = threading.BoundedSemaphore(PENDING_WRITES)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """A job was queued (or the drain began)."""
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        """Wait for the thread to end (it ends once its writers are done). Past `timeout_s`
        (a batch stuck inside one long stage, or a write), its unfinished jobs are re-queued
        here, so none is lost when the process exits."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            with self._writing_lock:
                writing = list(self._writing)
            for job in [*self._batch, *writing]:
                if not job.ended:
                    log.warning("job %s still running after the shutdown timeout; re-queued",
                                job.id)
                    self.store.requeue(job.id)

    # ---- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        _use_device(self.pipeline.runtime.device)
        # The writers outlive each batch; leaving this block waits for their last files.
        with ThreadPoolExecutor(OUTPUT_WRITERS, thread_name_prefix="foleyrt-write") as writers:
            while not self.signals.draining.is_set():
                try:
                    head = self.store.claim_next()
                    if head is None:
                        self._wake.wait(IDLE_POLL_S)
                        self._wake.clear()
                        continue
                    with torch.inference_mode():
                        self._run(head, writers)
                except Exception as exc:  # the worker outlives any one failure, store errors too
                    log.exception("worker error; carrying on")
                    self._abandon(exc)
                    time.sleep(IDLE_POLL_S)
                finally:
                    self._batch = []

    def _run(self, head: JobRecord, writers: ThreadPoolExecutor) -> None:
        first = self._start(head)
        self._encode(first)
        if first.encoded is None:
            return
        self._gather(first)
        if self.clips is not None:
            self.clips.look_ahead()  # the next jobs' clips decode while this batch denoises
        ready = [job for job in self._batch if job.encoded is not None and not job.ended]
        latents = self._denoise(ready)
        for job, latent in zip(ready, latents, strict=True):
            if latent is not None and not job.ended:
                self._finish(job, latent, writers)

    def _abandon(self, exc: Exception) -> None:
        """After a bug, the batch's jobs it left running fail (they would stay running);
        a job a writer holds ends there."""
        with self._writing_lock:
            writing = set(self._writing)
        for job in self._batch:
            if not job.ended and job not in writing:
                self._fail(job, f"internal error ({type(exc).__name__}); see the server log")

    def _start(self, record: JobRecord) -> _Job:
        now = time.monotonic()
        job = _Job(record, now, now + self.settings.job_timeout_s)
        self._batch.append(job)
        log.info("job %s started", job.id)
        return job

    def _gather(self, first: _Job) -> None:
        """Claim the queued jobs that share `first`'s forwards, while rows are left, waiting
        until `batch_wait_s` after its claim for more to be queued; each is encoded as it is
        claimed (its rows counted then: one that fails to encode leaves them unused), and
        this returns once every one is encoded. Without decoding processes each companion
        is encoded on an encoding thread, its decoding being CPU work; with them, a job
        whose clip is still decoding counts as not queued yet (it would hold the whole
        batch, and the GPU, until its frames came; the next batch takes it), and the
        worker encodes each companion itself, in turn: only GPU work is left, which threads
        would only slow (run BL)."""
        assert first.encoded is not None
        key = BatchKey.of_encoded(first.encoded)
        budget = self.pipeline.max_rows([first.encoded], self.settings.batch_rows)
        room = budget - job_rows(JobParams.of(first.record))
        wait_until = first.started + self.settings.batch_wait_s
        device = self.pipeline.runtime.device
        threads = None if self.clips is not None else ThreadPoolExecutor(
            COMPANION_ENCODERS, thread_name_prefix="foleyrt-encode", initializer=_use_device,
            initargs=(device,))
        with threads or nullcontext():
            while room > 0 and not self.signals.draining.is_set():
                queued = self.store.queued()  # every one keeps its cached length hint
                keys: list[BatchKey | None] = list(self.hints.keys(queued))
                if self.clips is not None:  # one still decoding is not taken now
                    keys = [None if self.clips.waiting(record) else job_key
                            for record, job_key in zip(queued, keys, strict=True)]
                found = companion(queued, keys, key, room)
                record = None if found is None else self.store.claim(found.id)
                if record is not None:
                    job = self._start(record)
                    room -= job_rows(JobParams.of(record))
                    if threads is None:
                        self._encode(job)
                    else:
                        threads.submit(self._encode_apart, job)
                    continue
                if found is not None:
                    continue  # another worker or a cancel took it first: look again
                remaining = wait_until - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                self._wake.clear()

    # ---- stages ----------------------------------------------------------------------------

    def _encode(self, job: _Job) -> None:
        job.encoded = self._guarded(job, lambda: encode_job(
            self.pipeline, job.record, self.files, self._progress(job),
            self.settings.video_limits, self.clips))

    def _encode_apart(self, job: _Job) -> None:
        """`_encode` on an encoding thread, which inherits no inference mode."""
        with torch.inference_mode():
            self._encode(job)

    def _denoise(self, jobs: list[_Job]) -> list[Tensor | None]:
        """The latents of each job (None for a job that ended meanwhile)."""
        self.metrics.batch_jobs.observe(len(jobs))
        return together_else_alone(
            len(jobs), lambda: self._denoise_together(jobs),
            lambda k: None if jobs[k].ended else self._denoise_alone(jobs[k]), "jobs")

    def _denoise_alone(self, job: _Job) -> Tensor | None:
        assert job.encoded is not None
        encoded, progress = job.encoded, self._progress(job)
        latents = self._guarded(job, lambda: self._timed(
            [job], lambda: self.pipeline.denoise([encoded], progress=progress)))
        return None if latents is None else latents[0]

    def _denoise_together(self, jobs: list[_Job]) -> list[Tensor | None]:
        """One denoising for the batch; every job hears of each step. Raises only when it
        runs out of memory."""

        def progress(event: Progress) -> bool:
            for job in jobs:
                if job.ended:
                    continue
                self._report(job, event)
                job.reason = self.signals.reason(job.id, job.deadline)
                if job.reason in (StopReason.CANCELLED, StopReason.TIMED_OUT):
                    self._stopped(job)  # now; its rows run on to the batch's end
            return all(job.ended or job.reason is not None for job in jobs)

        encoded = [job.encoded for job in jobs if job.encoded is not None]
        try:
            latents = self._timed(jobs, lambda: self.pipeline.denoise(
                encoded, max_rows=self.settings.batch_rows, progress=progress))
        except Cancelled:
            for job in jobs:
                if not job.ended:
                    self._stopped(job)
            return [None] * len(jobs)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - each job fails with it; the worker goes on
            for job in jobs:
                if not job.ended:
                    self._fail(job, self._message(job, exc))
            return [None] * len(jobs)
        return list(latents)

    def _timed(self, jobs: list[_Job], denoise: Callable[[], list[Tensor]]) -> list[Tensor]:
        """Run `denoise`; its time goes into each job's timings."""
        started = time.perf_counter()
        latents = denoise()
        device = self.pipeline.runtime.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for job in jobs:
            assert job.encoded is not None
            job.encoded.timings["denoise"] = time.perf_counter() - started
        return latents

    def _finish(self, job: _Job, latent: Tensor, writers: ThreadPoolExecutor) -> None:
        """Decode the job's sound here (the GPU's part), then have a writer write it."""
        assert job.encoded is not None
        encoded, progress = job.encoded, self._progress(job)
        result = self._guarded(job, lambda: self.pipeline.finish(encoded, latent, progress))
        if result is not None:
            self._write_slots.acquire()
            with self._writing_lock:
                self._writing.add(job)
            writers.submit(self._write, job, result)

    def _write(self, job: _Job, result: FoleyResult) -> None:
        """A writer thread: the job's files, then its record (a bug is logged, as the
        worker's loop logs its own)."""

        def write() -> tuple[float, tuple[OutputFiles, ...]]:
            self.store.set_progress(job.id, "saving", 0, 1)
            saving = time.monotonic()
            outputs = write_outputs(result, self.files.job_dir(job.id))
            if self.signals.cancelled(job.id):  # asked while its sound was made or written
                job.reason = StopReason.CANCELLED
                raise Cancelled("generation cancelled")
            return time.monotonic() - saving, outputs

        try:
            done = self._guarded(job, write)
            if done is None:
                return
            saving_s, outputs = done
            self.files.remove_input(job.id)
            self.store.finish(job.id, JobState.SUCCEEDED, outputs=outputs)
            timings = {**result.timings, "saving": saving_s}
            for stage in _STAGES:
                if stage in timings:
                    self.metrics.stage_seconds.labels(stage).observe(timings[stage])
            self._end(job, "succeeded")
        except Exception:
            log.exception("worker error while writing job %s; carrying on", job.id)
        finally:
            with self._writing_lock:
                self._writing.discard(job)
            self._write_slots.release()

    # ---- one job's progress and end --------------------------------------------------------

    def _progress(self, job: _Job) -> Callable[[Progress], bool]:
        def progress(event: Progress) -> bool:
            self._report(job, event)
            job.reason = self.signals.reason(job.id, job.deadline)
            return job.reason is not None

        return progress

    def _report(self, job: _Job, event: Progress) -> None:
        now = time.monotonic()
        if event.stage != job.last_write[0] or now - job.last_write[1] >= PROGRESS_WRITE_S:
            self.store.set_progress(job.id, event.stage, event.step, event.total)
            job.last_write = (event.stage, now)

    def _guarded(self, job: _Job, stage: Callable[[], T]) -> T | None:
        """`stage()` for one job; None when it failed or stopped (the job then has ended)."""
        out_of_memory = False
        try:
            return stage()
        except Cancelled:
            self._stopped(job)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
            self._fail(job, OOM_MESSAGE)
        except Exception as exc:  # noqa: BLE001 - the job fails with it; the worker goes on
            self._fail(job, self._message(job, exc))
        if out_of_memory:  # out of the `except`: its traceback no longer holds the tensors
            release_cuda_memory()
        return None

    def _message(self, job: _Job, exc: Exception) -> str:
        """What a client is told of a failure: ours in our words, others by their kind."""
        if isinstance(exc, FoleyError):
            return self.files.redact(str(exc), job.id)
        if self._disk_full(exc):
            return DISK_FULL_MESSAGE
        log.error("job %s failed", job.id, exc_info=exc)
        return f"internal error ({type(exc).__name__}); see the server log"

    def _stopped(self, job: _Job) -> None:
        if job.reason is StopReason.SHUTDOWN:
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            self.store.requeue(job.id)
            self._end(job, "requeued")
        elif job.reason is StopReason.TIMED_OUT:
            self._fail(job, f"timed out: the limit is {self.settings.job_timeout_s:g} s per job",
                       outcome="timed_out")
        else:
            self.files.remove_job(job.id)
            self.store.finish(job.id, JobState.CANCELLED)
            log.info("job %s cancelled", job.id)
            self._end(job, "cancelled")

    def _fail(self, job: _Job, message: str, outcome: str = "failed") -> None:
        log.warning("job %s failed: %s", job.id, message)
        self.files.remove_job(job.id)  # partial outputs and the upload: nothing to keep
        self.store.finish(job.id, JobState.FAILED, error=message)
        self._end(job, outcome)

    def _end(self, job: _Job, outcome: str) -> None:
        job.ended = True
        self.signals.forget(job.id)
        self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - job.started)
        if outcome == "succeeded":
            log.info("job %s succeeded", job.id)

    def _disk_full(self, exc: BaseException) -> bool:
        """Writers report a full disk in their own words (libsndfile: "System error"), so
        the free space says what happened when the error does not."""
        if any(isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS
               for e in (exc, exc.__cause__, exc.__context__)):
            return True
        return shutil.disk_usage(self.files.jobs).free < _DISK_FULL_BYTES


def _use_device(device: torch.device) -> None:
    """Make the worker's GPU this thread's current device (it is per thread): streams and
    graphs made without a device use it. The worker's thread and its encoding threads."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


class WorkerPool:
    """The server's workers, one per pipeline, sharing the store, the data directory, the
    stop signals and, with `--decode-in processes`, the decoding processes. A job is claimed
    by exactly one of them (the store's claims are atomic)."""

    def __init__(self, pipelines: list[FoleyPipeline], store: JobStore, files: DataDir,
                 settings: ServerSettings, metrics: Metrics) -> None:
        self.signals = Signals()
        self._fast_encoders = settings.runtime.fast_encoders
        self._held = ExitStack()  # the encoders' precision while the workers run
        self.clips = (
            ClipPrefetch(store, files, settings.video_limits, settings.decode_workers,
                         self.signals.draining.is_set, self._wake_workers)
            if settings.decode_in is DecodeIn.PROCESSES else None
        )
        self.workers = [
            Worker(pipeline, store, files, settings, metrics, self.signals, self.clips,
                   name=f"foleyrt-worker-{k}")
            for k, pipeline in enumerate(pipelines)
        ]

    @property
    def alive(self) -> bool:
        """Every worker runs (one gone leaves its GPU idle: a restart is the fix)."""
        return all(worker.alive for worker in self.workers)

    def start(self) -> None:
        # Process-wide, and checked by the compiled blocks' guards: one worker's encoders
        # switching it while another's denoising captures a graph (`--gpus 0,1`) would fail
        # that batch (run BM met it). Held while the workers run, as batch mode holds it.
        self._held.enter_context(encoder_matmul_precision(self._fast_encoders))
        for worker in self.workers:
            worker.start()

    def wake(self) -> None:
        """A job was queued: every idle worker looks, one claims it; its clip starts
        decoding if it waits."""
        self._wake_workers()
        if self.clips is not None:
            self.clips.look_ahead()

    def _wake_workers(self) -> None:
        """A job was queued, or a queued job's clip decoded: a batch gathering may take it."""
        for worker in self.workers:
            worker.wake()

    def request_cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step if it is (or is about to be) running."""
        self.signals.cancel(job_id)

    def drain(self, timeout_s: float) -> None:
        """Take no new job; let running ones finish within `timeout_s`, else stop them at
        their next step and put them back in the queue (the next start runs them)."""
        self.signals.drain_deadline = time.monotonic() + timeout_s
        self.signals.draining.set()
        self.wake()

    def stop(self) -> None:
        """Wait for the drain to end (see `Worker.join`)."""
        if not self.signals.draining.is_set():
            self.drain(0.0)
        until = max(time.monotonic(), self.signals.drain_deadline) + STOP_GRACE_S
        for worker in self.workers:
            worker.join(max(0.0, until - time.monotonic()))
        if self.clips is not None:
            self.clips.close()
        self._held.close()
