"""The one worker thread in front of the GPU.

It owns the pipeline: jobs run one at a time in queue order, so the weights, the CUDA
context and the compiled graphs are only ever touched from one thread, and a job's memory
peak is never stacked on another's. The HTTP threads only talk to it through the store
(new jobs), `wake()`, `request_cancel()` and `drain()`.

Stopping a job is cooperative: the pipeline calls the progress callback after every decoded
frame, between stages and after every denoising step, and the callback answers True to stop
it (user cancel, time limit, server shutdown). A stage itself is never interrupted mid-kernel.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
import time
from enum import Enum

import torch

from foleyrt.errors import Cancelled, FoleyError
from foleyrt.pipeline.pipeline import FoleyPipeline, Progress, release_cuda_memory
from foleyrt.server.files import DataDir
from foleyrt.server.metrics import Metrics
from foleyrt.server.outputs import generate, write_outputs
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # a missed wake-up costs at most this long
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


class StopReason(Enum):
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"
    SHUTDOWN = "shutdown"


class Worker:
    def __init__(self, pipeline: FoleyPipeline, store: JobStore, files: DataDir,
                 settings: ServerSettings, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.store = store
        self.files = files
        self.settings = settings
        self.metrics = metrics
        self._thread = threading.Thread(target=self._loop, name="foleyrt-worker", daemon=True)
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._drain_deadline = 0.0  # monotonic; the running job is re-queued past it
        self._cancel_lock = threading.Lock()
        self._cancelled: set[str] = set()
        self._running: str | None = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout_s: float) -> None:
        """Take no new job; let the running one finish within `timeout_s`, else stop it at
        its next step and put it back in the queue (the next start runs it)."""
        self._drain_deadline = time.monotonic() + timeout_s
        self._draining.set()
        self._wake.set()

    def stop(self) -> None:
        """Wait for the drain to end. A job still running after its deadline and a grace
        period (stuck inside one long stage) is re-queued here, so no accepted job is lost
        when the process exits under it."""
        if not self._draining.is_set():
            self.drain(0.0)
        wait_s = max(0.0, self._drain_deadline - time.monotonic()) + STOP_GRACE_S
        self._thread.join(wait_s)
        running = self._running
        if self._thread.is_alive() and running is not None:
            log.warning("job %s still running after the shutdown timeout; re-queued", running)
            self.store.requeue(running)

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step if it is (or is about to be) running."""
        with self._cancel_lock:
            self._cancelled.add(job_id)

    # ---- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._draining.is_set():
            try:
                job = self.store.claim_next()
                if job is None:
                    self._wake.wait(IDLE_POLL_S)
                    self._wake.clear()
                    continue
                self._running = job.id
                self._execute(job)
            except Exception:  # the worker must outlive any one failure, store errors too
                log.exception("worker error; carrying on")
                time.sleep(IDLE_POLL_S)
            finally:
                self._running = None

    def _stop_reason(self, job_id: str, deadline: float) -> StopReason | None:
        with self._cancel_lock:
            if job_id in self._cancelled:
                return StopReason.CANCELLED
        now = time.monotonic()
        if self._draining.is_set() and now > self._drain_deadline:
            return StopReason.SHUTDOWN
        if now > deadline:
            return StopReason.TIMED_OUT
        return None

    def _execute(self, job: JobRecord) -> None:
        started = time.monotonic()
        deadline = started + self.settings.job_timeout_s
        reason: StopReason | None = None
        last_write: tuple[str | None, float] = (None, 0.0)

        def progress(event: Progress) -> bool:
            nonlocal reason, last_write
            now = time.monotonic()
            if event.stage != last_write[0] or now - last_write[1] >= PROGRESS_WRITE_S:
                self.store.set_progress(job.id, event.stage, event.step, event.total)
                last_write = (event.stage, now)
            reason = self._stop_reason(job.id, deadline)
            return reason is not None

        log.info("job %s started", job.id)
        out_of_memory = False
        outcome = "failed"
        try:
            result = generate(self.pipeline, job, self.files, progress,
                              self.settings.video_limits)
            self.store.set_progress(job.id, "saving", 0, 1)
            saving = time.monotonic()
            outputs = write_outputs(result, self.files.job_dir(job.id))
            result.timings["saving"] = time.monotonic() - saving
        except Cancelled:
            outcome = self._stopped(job, reason)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
            self._fail(job, OOM_MESSAGE)
        except FoleyError as exc:
            self._fail(job, self.files.redact(str(exc), job.id))
        except Exception as exc:
            if self._disk_full(exc):
                self._fail(job, DISK_FULL_MESSAGE)
            else:
                log.exception("job %s failed", job.id)
                self._fail(job, f"internal error ({type(exc).__name__}); see the server log")
        else:
            self.files.remove_input(job.id)
            self.store.finish(job.id, JobState.SUCCEEDED, outputs=outputs)
            outcome = "succeeded"
            for stage in ("video", "features", "denoise", "decode", "saving"):
                if stage in result.timings:
                    self.metrics.stage_seconds.labels(stage).observe(result.timings[stage])
            log.info("job %s succeeded", job.id)
        finally:
            with self._cancel_lock:
                self._cancelled.discard(job.id)
        self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - started)
        if out_of_memory:
            release_cuda_memory()

    def _stopped(self, job: JobRecord, reason: StopReason | None) -> str:
        if reason is StopReason.SHUTDOWN:
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            self.store.requeue(job.id)
            return "requeued"
        if reason is StopReason.TIMED_OUT:
            self._fail(job, f"timed out: the limit is {self.settings.job_timeout_s:g} s per job")
            return "timed_out"
        self.files.remove_job(job.id)
        self.store.finish(job.id, JobState.CANCELLED)
        log.info("job %s cancelled", job.id)
        return "cancelled"

    def _fail(self, job: JobRecord, message: str) -> None:
        log.warning("job %s failed: %s", job.id, message)
        self.files.remove_job(job.id)  # partial outputs and the upload: nothing to keep
        self.store.finish(job.id, JobState.FAILED, error=message)

    def _disk_full(self, exc: BaseException) -> bool:
        """Writers report a full disk in their own words (libsndfile: "System error"), so
        the free space says what happened when the error does not."""
        if any(isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS
               for e in (exc, exc.__cause__, exc.__context__)):
            return True
        return shutil.disk_usage(self.files.jobs).free < _DISK_FULL_BYTES
