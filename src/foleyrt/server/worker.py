"""The one worker thread in front of the GPU.

It owns the pipeline: jobs run one at a time in queue order, so the weights, the CUDA
context and the compiled graphs are only ever touched from one thread, and a job's memory
peak is never stacked on another's. The HTTP threads only talk to it through the store
(new jobs), `wake()` and `request_cancel()`.

Stopping a job is cooperative: the pipeline calls the progress callback between stages and
after every denoising step, and the callback answers True to stop it (user cancel, time
limit, server shutdown). A stage itself is never interrupted mid-kernel.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum

import torch

from foleyrt.errors import Cancelled, FoleyError
from foleyrt.pipeline.pipeline import FoleyPipeline, Progress, release_cuda_memory
from foleyrt.server.files import DataDir
from foleyrt.server.outputs import generate, write_outputs
from foleyrt.server.store import JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # a missed wake-up costs at most this long
OOM_MESSAGE = (
    "the GPU ran out of memory on this job; try fewer samples or a shorter clip, or retry "
    "when the server is less busy"
)


class StopReason(Enum):
    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"
    SHUTDOWN = "shutdown"


class Worker:
    def __init__(
        self, pipeline: FoleyPipeline, store: JobStore, files: DataDir, *, timeout_s: float
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.files = files
        self.timeout_s = timeout_s
        self._thread = threading.Thread(target=self._loop, name="foleyrt-worker", daemon=True)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel_lock = threading.Lock()
        self._cancelled: set[str] = set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish at the next step: the running job goes back to the queue (the next start
        runs it), queued ones stay queued."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("worker still busy after %.0f s; leaving it behind", timeout_s)

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step if it is (or is about to be) running."""
        with self._cancel_lock:
            self._cancelled.add(job_id)

    # ---- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next()
                if job is None:
                    self._wake.wait(IDLE_POLL_S)
                    self._wake.clear()
                    continue
                self._execute(job)
            except Exception:  # the worker must outlive any one failure, store errors too
                log.exception("worker error; carrying on")
                time.sleep(IDLE_POLL_S)

    def _stop_reason(self, job_id: str, deadline: float) -> StopReason | None:
        with self._cancel_lock:
            if job_id in self._cancelled:
                return StopReason.CANCELLED
        if self._stopping.is_set():
            return StopReason.SHUTDOWN
        if time.monotonic() > deadline:
            return StopReason.TIMED_OUT
        return None

    def _execute(self, job: JobRecord) -> None:
        deadline = time.monotonic() + self.timeout_s
        reason: StopReason | None = None

        def progress(event: Progress) -> bool:
            nonlocal reason
            self.store.set_progress(job.id, event.stage, event.step, event.total)
            reason = self._stop_reason(job.id, deadline)
            return reason is not None

        log.info("job %s started", job.id)
        out_of_memory = False
        try:
            result = generate(self.pipeline, job, self.files, progress)
            self.store.set_progress(job.id, "saving", 0, 1)
            outputs = write_outputs(result, self.files.job_dir(job.id))
        except Cancelled:
            self._stopped(job, reason)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
            self._fail(job, OOM_MESSAGE)
        except FoleyError as exc:
            self._fail(job, self.files.redact(str(exc), job.id))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._fail(job, f"internal error ({type(exc).__name__}); see the server log")
        else:
            self.files.remove_input(job.id)
            self.store.finish(job.id, JobState.SUCCEEDED, outputs=outputs)
            log.info("job %s succeeded", job.id)
        finally:
            with self._cancel_lock:
                self._cancelled.discard(job.id)
        if out_of_memory:
            release_cuda_memory()

    def _stopped(self, job: JobRecord, reason: StopReason | None) -> None:
        if reason is StopReason.SHUTDOWN:
            log.info("job %s interrupted by shutdown; re-queued", job.id)
            self.store.requeue(job.id)
        elif reason is StopReason.TIMED_OUT:
            self._fail(job, f"timed out: the limit is {self.timeout_s:g} s per job")
        else:
            self.files.remove_job(job.id)
            self.store.finish(job.id, JobState.CANCELLED)
            log.info("job %s cancelled", job.id)

    def _fail(self, job: JobRecord, message: str) -> None:
        log.warning("job %s failed: %s", job.id, message)
        self.files.remove_job(job.id)  # partial outputs and the upload: nothing to keep
        self.store.finish(job.id, JobState.FAILED, error=message)

