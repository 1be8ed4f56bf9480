"""Which queued jobs a worker runs together: the dynamic batcher's rules, like Triton's.

Jobs share the transformer's forwards when their rows have one shape: the same number of
steps (one schedule), the same CFG layout (guided or not) and the same latent length. A batch
starts with the oldest queued job (so nothing starves); companions are taken in queue order
among the jobs that match it, while their rows fit the batch's row budget. A job's latent
length is known for sure only once its clip is decoded, so companions are picked by what
their parameters (text-only) or their upload's header (video) tell; a guess that misses
costs nothing but sharing: `FoleyPipeline.denoise` gives every shape its own forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from foleyrt.errors import FoleyError
from foleyrt.lengths import SequenceLengths, WindowPlan
from foleyrt.media.video import VideoLimits, probe_video
from foleyrt.pipeline.pipeline import Encoded
from foleyrt.request import guidance_active, transformer_rows
from foleyrt.server.files import DataDir
from foleyrt.server.schemas import JobParams
from foleyrt.server.store import JobRecord


@dataclass(frozen=True)
class BatchKey:
    """What jobs must agree on to share forwards (`latent_frames` None: not known)."""

    steps: int
    guided: bool
    latent_frames: int | None

    @classmethod
    def of(cls, params: JobParams, latent_frames: int | None) -> BatchKey:
        return cls(params.steps, guidance_active(params.guidance), latent_frames)

    @classmethod
    def of_encoded(cls, encoded: Encoded) -> BatchKey:
        request = encoded.request
        return cls(request.steps, guidance_active(request.guidance),
                   encoded.lengths.latent_frames)


def job_rows(params: JobParams) -> int:
    """The transformer rows a job fills: a row per sample, twice with guidance."""
    return transformer_rows(params.samples, params.guidance)


class LengthHints:
    """Latent lengths of queued jobs as their parameters or upload headers tell them, each
    read once while the job waits (a header probe reads a few kB, never a frame)."""

    def __init__(self, files: DataDir, limits: VideoLimits) -> None:
        self.files = files
        self.limits = limits
        self._known: dict[str, int | None] = {}

    def keys(self, queued: list[JobRecord]) -> list[BatchKey]:
        """The key of each queued job; the cache keeps only these jobs' entries."""
        known = {job.id: self._known[job.id] if job.id in self._known else self._latent(job)
                 for job in queued}
        self._known = known
        return [BatchKey.of(JobParams.of(job), known[job.id]) for job in queued]

    def _latent(self, job: JobRecord) -> int | None:
        """The latent frames of the job's forwards: its clip's, or a long clip's windows'
        (`Encoded.lengths`, which `BatchKey.of_encoded` reads)."""
        params = JobParams.of(job)
        seconds = params.duration
        if seconds is None:
            try:
                seconds = probe_video(self.files.input_path(job.id), self.limits).duration_s
            except (FoleyError, OSError):  # cancelled and removed meanwhile: not picked
                return None
        windowing = params.generation_request(self.limits.max_seconds).windowing
        return WindowPlan.of(SequenceLengths.of_duration(seconds), windowing).window.latent_frames


def companion(queued: list[JobRecord], keys: list[BatchKey | None], key: BatchKey,
              room: int) -> JobRecord | None:
    """The first queued job that matches `key` and fits in `room` rows (None: a job not to
    take now)."""
    for job, job_key in zip(queued, keys, strict=True):
        if job_key == key and job_rows(JobParams.of(job)) <= room:
            return job
    return None
