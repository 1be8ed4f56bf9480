"""The job service behind the routes: it takes uploads, queues jobs, reports on them and
hands out their files. The HTTP layer holds no state of its own, and nothing here knows
about HTTP beyond the status each error carries.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from foleyrt.errors import FoleyError, InputError
from foleyrt.media.video import scan_video
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import MAX_SEED
from foleyrt.server.cleanup import Janitor
from foleyrt.server.errors import (
    DiskFull,
    JobConflict,
    JobNotFound,
    NotAccepting,
    QueueFull,
    ResultsGone,
    UploadTooLarge,
)
from foleyrt.server.files import DataDir, new_job_id
from foleyrt.server.metrics import Metrics
from foleyrt.server.schemas import JobParams, JobRequest, OutputFormat
from foleyrt.server.settings import ServerSettings, format_duration
from foleyrt.server.store import Idempotency, JobRecord, JobState, JobStore, KeyReused
from foleyrt.server.worker import DISK_FULL_ERRNOS, DISK_FULL_MESSAGE, WorkerPool

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 10  # before any job has finished there is no run time to go by
DRAINING_RETRY_AFTER_S = 1  # a supervisor's restart (or another instance) is seconds away
PROBE_WORKERS = 2  # uploads checked at once: probing reads headers and packet indexes
MAX_SHOWN_ID = 36  # a job id (a UUID) is this long; longer "ids" are not echoed back
_COPY_CHUNK = 1024 * 1024
_OUTPUT_FIELDS: dict[str, str] = {"wav": "wav", "mp4": "mp4", "png": "spectrogram"}


class JobService:
    def __init__(self, settings: ServerSettings, pipelines: list[FoleyPipeline],
                 files: DataDir, store: JobStore, metrics: Metrics) -> None:
        self.settings = settings
        self.pipelines = pipelines  # one per worker, on its own device
        self.files = files
        self.store = store
        self.worker = WorkerPool(pipelines, store, files, settings, metrics)
        self.janitor = Janitor(store, files, ttl_s=settings.result_ttl_s,
                               record_ttl_s=settings.record_ttl_s,
                               interval_s=settings.cleanup_interval_s)
        self._probes = ThreadPoolExecutor(PROBE_WORKERS, thread_name_prefix="foleyrt-probe")
        self._draining = threading.Event()
        metrics.watch(store.counts, [p.runtime.device for p in pipelines])

    def start(self) -> None:
        self.worker.start()
        self.janitor.start()

    def drain(self) -> None:
        """Take no more jobs; the running ones finish, or go back to the queue when the
        shutdown timeout comes first."""
        if not self._draining.is_set():
            self._draining.set()
            self.worker.drain(self.settings.shutdown_timeout_s)

    def stop(self) -> None:
        self.drain()
        self.janitor.stop()
        self.worker.stop()
        self._probes.shutdown(wait=False, cancel_futures=True)
        self.store.close()
        self.files.close()

    # ---- jobs --------------------------------------------------------------------------------

    def admit(self) -> None:
        """Refuse a submission before its upload is read, when it could not be queued."""
        if self._draining.is_set():
            raise NotAccepting("the server is shutting down and takes no new jobs; retry "
                               "in a moment or on another instance",
                               retry_after_s=DRAINING_RETRY_AFTER_S)
        if not self.worker.alive:
            raise NotAccepting("a worker of the server has stopped; it needs a restart")
        if self.store.count(JobState.QUEUED) >= self.settings.max_queue:
            raise self._queue_full()
        free = self.disk_free()
        if free < self.settings.min_free_bytes:
            raise DiskFull(f"{DISK_FULL_MESSAGE} ({free // 2**20} MiB free, "
                           f"{self.settings.min_free_bytes // 2**20} MiB needed)")

    def submit(self, request: JobRequest, idempotency_key: str | None = None) -> JobRecord:
        """Check, store and queue a job; raise before anything is kept if it cannot run. With
        an `idempotency_key`, a retry of the same request gets the job the first one made."""
        params = self._resolve(request)
        self.admit()
        job_id = new_job_id()
        digest = hashlib.sha256(request.model_dump_json(exclude={"video"}).encode())
        try:
            self.files.create_job_dir(job_id)
            if request.video is not None:
                digest.update(self._receive(job_id, request.video.file, params.video_name))
            key = Idempotency(idempotency_key, digest.hexdigest()) if idempotency_key else None
            stored = self.store.add(job_id, params.model_dump(mode="json"),
                                    max_queued=self.settings.max_queue, idempotency=key)
            if stored is None:
                raise self._queue_full()
        except KeyReused as exc:
            self.files.remove_job(job_id)
            raise JobConflict(f"this Idempotency-Key was used for another request (job "
                              f"{exc.job_id}); use a new key for a new job") from None
        except OSError as exc:
            self.files.remove_job(job_id)
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFull(DISK_FULL_MESSAGE) from None
            raise
        except BaseException:
            self.files.remove_job(job_id)
            raise
        if stored != job_id:
            self.files.remove_job(job_id)  # a retry: the first request's job stands
            return self.get(stored)
        log.info("job %s queued", job_id)
        self.worker.wake()
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {_shown(job_id)}")
        return job

    def page(self, limit: int, cursor: int | None) -> tuple[list[JobRecord], int | None]:
        return self.store.page(limit, cursor)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job now, or ask the worker to stop a running one at its next
        step (the returned record then still says running)."""
        self.get(job_id)
        if self.store.cancel_if_queued(job_id):
            self.files.remove_job(job_id)
            return self.get(job_id)
        job = self.get(job_id)
        if job.state is not JobState.RUNNING:
            raise JobConflict(
                f"job {job_id} has already ended ({job.state.value}); only queued or running "
                "jobs can be cancelled"
            )
        self.worker.request_cancel(job_id)
        return job

    def output_path(self, job_id: str, index: int, fmt: OutputFormat) -> Path:
        job = self.get(job_id)
        if job.state is JobState.EXPIRED:
            raise ResultsGone(
                f"the results of job {job_id} expired (they are kept "
                f"{format_duration(self.settings.result_ttl_s)} after the job ends)"
            )
        if job.state is not JobState.SUCCEEDED:
            raise JobConflict(f"job {job_id} is {job.state.value}; outputs exist only once it "
                              "has succeeded")
        if not 0 <= index < len(job.outputs):
            count = len(job.outputs)  # (the index itself is not echoed: it may be huge)
            raise JobNotFound(f"no such sample: job {job_id} has {count} sample(s), numbered "
                              f"0 to {count - 1}")
        name = getattr(job.outputs[index], _OUTPUT_FIELDS[fmt])
        if name is None:
            raise JobNotFound(f"job {job_id} is text-only: it has no MP4, download the .wav")
        path = self.files.job_dir(job_id) / name
        if not path.is_file():
            raise ResultsGone(f"the files of job {job_id} are no longer on the server (removed "
                              "outside foleyrt); submit the job again")
        return path

    # ---- state of the service ------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(queued, running)."""
        return self.store.count(JobState.QUEUED), self.store.count(JobState.RUNNING)

    def disk_free(self) -> int:
        return shutil.disk_usage(self.files.jobs).free

    def readiness(self) -> dict[str, bool]:
        """What `/v1/ready` checks: each must hold for a new job to be taken and run."""
        return {
            "models_loaded": bool(self.pipelines),
            "worker_alive": self.worker.alive,
            "accepting": not self._draining.is_set(),
            "queue_has_room": self.store.count(JobState.QUEUED) < self.settings.max_queue,
            "disk_space": self.disk_free() >= self.settings.min_free_bytes,
        }

    # ---- helpers -------------------------------------------------------------------------

    def _resolve(self, request: JobRequest) -> JobParams:
        limits = self.settings.video_limits
        if request.samples > self.settings.max_samples:
            raise InputError(f"samples must be at most {self.settings.max_samples} on this server")
        if request.video is not None and request.duration is not None:
            raise InputError("duration is only for text-only jobs; a video sets its own length")
        if request.video is None and request.duration is None:
            raise InputError("upload a video, or give a duration (seconds) for a text-only job")
        if request.duration is not None and request.duration > limits.max_seconds:
            raise InputError(f"duration must be at most {limits.max_seconds:g} s on this server")
        params = JobParams(
            prompt=request.prompt.strip(),
            negative_prompt=request.negative_prompt,
            steps=request.steps or self.settings.default_steps,
            guidance=request.guidance,
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            samples=request.samples,
            duration=request.duration,
            window=request.window,
            overlap=request.overlap,
            video_name=None if request.video is None else _display_name(request.video.filename),
        )
        params.generation_request(limits.max_seconds)  # the request's own bounds (overlap)
        return params

    def _receive(self, job_id: str, upload: BinaryIO, name: str | None) -> bytes:
        """Store the upload under the server's name and check what it really is (the
        content, probed with FFmpeg on the probing threads within the video limits, not the
        name or the declared type); the SHA-256 of its bytes."""
        path = self.files.input_path(job_id)
        digest, size = hashlib.sha256(), 0
        with path.open("wb") as out:
            while chunk := upload.read(_COPY_CHUNK):
                size += len(chunk)
                if size > self.settings.max_upload_bytes:  # the door allowed form overhead
                    raise UploadTooLarge(self.settings.max_upload_bytes)
                digest.update(chunk)
                out.write(chunk)
        try:
            self._probes.submit(scan_video, path, self.settings.video_limits).result()
        except FoleyError as exc:
            raise type(exc)(self.files.redact(str(exc), job_id, name)) from None
        return digest.digest()

    def _queue_full(self) -> QueueFull:
        mean = self.store.mean_run_seconds()
        retry = max(1, math.ceil(mean)) if mean is not None else DEFAULT_RETRY_AFTER_S
        return QueueFull(
            f"the queue is full ({self.settings.max_queue} jobs waiting); retry in about "
            f"{retry} s", retry_after_s=retry,
        )


def _display_name(filename: str | None) -> str:
    """The client's file name, reduced to something safe to show (never used as a path)."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    shown = "".join(c for c in base if c.isprintable())[:100]
    return shown or "upload"


def _shown(job_id: str) -> str:
    """A job id as it may be echoed: quoted if it could be one, else not at all."""
    if len(job_id) <= MAX_SHOWN_ID and job_id.isprintable():
        return repr(job_id)
    return "with that id (job ids are 36-character UUIDs)"
