"""The job service behind the routes: it takes uploads, queues jobs, reports on them and
hands out their files. The HTTP layer holds no state of its own, and nothing here knows
about HTTP beyond the status each error carries.
"""

from __future__ import annotations

import logging
import math
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO

from foleyrt.errors import FoleyError, InputError
from foleyrt.media.video import probe_video
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import MAX_SEED
from foleyrt.server.cleanup import Janitor, expire_results
from foleyrt.server.errors import JobConflict, JobNotFound, QueueFull, ResultsExpired
from foleyrt.server.files import DataDir, new_job_id
from foleyrt.server.schemas import JobParams, JobRequest, OutputFormat
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobRecord, JobState, JobStore
from foleyrt.server.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 10  # before any job has finished there is no run time to go by
_COPY_CHUNK = 1024 * 1024
_OUTPUT_FIELDS: dict[str, str] = {"wav": "wav", "mp4": "mp4", "png": "spectrogram"}


class JobService:
    def __init__(self, settings: ServerSettings, pipeline: FoleyPipeline, files: DataDir,
                 store: JobStore) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.files = files
        self.store = store
        self.worker = Worker(pipeline, store, files, timeout_s=settings.job_timeout_s)
        self.janitor = Janitor(store, files, ttl_s=settings.result_ttl_s,
                               interval_s=settings.cleanup_interval_s)

    @classmethod
    def start(cls, settings: ServerSettings, pipeline: FoleyPipeline) -> JobService:
        """Open the data directory, account for what a previous run left, and start the
        worker and the janitor."""
        files = DataDir(settings.data_dir)
        files.open()
        try:
            store = JobStore(files.database)
        except BaseException:
            files.close()
            raise
        interrupted = store.fail_interrupted()
        for job_id in interrupted:
            files.remove_job(job_id)  # partial outputs and the upload of a failed job
        if interrupted:
            log.warning("%d job(s) were cut off by the last stop and are marked failed",
                        len(interrupted))
        files.remove_orphans(store.ids())
        expire_results(store, files, settings.result_ttl_s)
        queued = store.count(JobState.QUEUED)
        if queued:
            log.info("resuming %d queued job(s)", queued)
        service = cls(settings, pipeline, files, store)
        service.worker.start()
        service.janitor.start()
        return service

    def stop(self) -> None:
        self.janitor.stop()
        self.worker.stop()
        self.store.close()
        self.files.close()

    # ---- jobs --------------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobRecord:
        """Check, store and queue a job; raise before anything is kept if it cannot run."""
        params = self._resolve(request)
        if self.store.count(JobState.QUEUED) >= self.settings.max_queue:
            raise self._queue_full()  # early: don't copy and probe an upload to refuse it
        job_id = new_job_id()
        self.files.create_job_dir(job_id)
        try:
            if request.video is not None:
                self._receive(job_id, request.video.file, params.video_name)
            if not self.store.add(job_id, params.model_dump(mode="json"),
                                  max_queued=self.settings.max_queue):
                raise self._queue_full()
        except BaseException:
            self.files.remove_job(job_id)
            raise
        self.worker.wake()
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job

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
            raise ResultsExpired(
                f"the results of job {job_id} expired (they are kept "
                f"{self.settings.result_ttl_s / 3600:g} h after the job ends)"
            )
        if job.state is not JobState.SUCCEEDED:
            raise JobConflict(f"job {job_id} is {job.state.value}; outputs exist only once it "
                              "has succeeded")
        if not 0 <= index < len(job.outputs):
            raise JobNotFound(f"job {job_id} has {len(job.outputs)} sample(s), numbered from 0; "
                              f"there is no sample {index}")
        name = getattr(job.outputs[index], _OUTPUT_FIELDS[fmt])
        if name is None:
            raise JobNotFound(f"job {job_id} is text-only: it has no MP4, download the .wav")
        return self.files.job_dir(job_id) / name

    # ---- state of the service ------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(queued, running)."""
        return self.store.count(JobState.QUEUED), self.store.count(JobState.RUNNING)

    # ---- helpers -------------------------------------------------------------------------

    def _resolve(self, request: JobRequest) -> JobParams:
        if request.samples > self.settings.max_samples:
            raise InputError(f"samples must be at most {self.settings.max_samples} on this server")
        if request.video is not None and request.duration is not None:
            raise InputError("duration is only for text-only jobs; a video sets its own length")
        if request.video is None and request.duration is None:
            raise InputError("upload a video, or give a duration (seconds) for a text-only job")
        return JobParams(
            prompt=request.prompt.strip(),
            negative_prompt=request.negative_prompt,
            steps=request.steps or self.settings.default_steps,
            guidance=request.guidance,
            seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
            samples=request.samples,
            duration=request.duration,
            video_name=None if request.video is None else _display_name(request.video.filename),
        )

    def _receive(self, job_id: str, upload: BinaryIO, name: str | None) -> None:
        """Store the upload under the server's name and check what it really is (the
        content, by probing it with FFmpeg, not the name or the declared type)."""
        path = self.files.input_path(job_id)
        with path.open("wb") as out:
            shutil.copyfileobj(upload, out, _COPY_CHUNK)
        try:
            probe_video(path)
        except FoleyError as exc:
            raise type(exc)(self.files.redact(str(exc), job_id, name)) from None

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
