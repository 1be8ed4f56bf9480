"""Shapes of what goes over the wire: the job form in, job / health / model documents out.
Pure data: the service decides, these only describe (and /docs shows them); `openapi_for`
writes the server's own limits into the published schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator

from foleyrt.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    MAX_DURATION,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SECONDS,
    MAX_SEED,
    MAX_STEPS,
    MIN_SECONDS,
    GenerationRequest,
)
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobRecord, JobState

API_PREFIX = "/v1"
MAX_PAGE = 100
MAX_CURSOR = 2**63 - 1  # SQLite's largest integer
IDEMPOTENCY_KEY_CHARS = 255
OutputFormat = Literal["wav", "mp4", "png"]


class JobRequest(BaseModel):
    """`POST /v1/jobs` form fields. Unknown fields are refused, so a misspelt option fails
    loudly instead of silently running with its default."""

    model_config = ConfigDict(extra="forbid")

    video: UploadFile | None = Field(
        None, description="the clip (any container/codec FFmpeg reads, within the limits of "
                          "GET /v1/models); omit for text-only, then `duration` is required")
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="what the sound should be")
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description=f"what to steer away from (default {DEFAULT_NEGATIVE_PROMPT!r})")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                              description="sampler steps (default: the server's)")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=0.0, le=MAX_GUIDANCE,
                            description="classifier-free guidance scale")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="noise seed (default: random)")
    # The upper bounds are the server's (GET /v1/models), checked by the service and written
    # into the published schema by `openapi_for`.
    samples: int = Field(1, ge=1, description="number of sound tracks")
    duration: float | None = Field(None, ge=MIN_SECONDS,
                                   description="seconds of audio, text-only jobs only")
    window: float | None = Field(
        None, ge=MIN_SECONDS, le=MAX_SECONDS,
        description="a clip (or duration) longer than this is generated in windows of this "
                    f"many seconds (default: up to {MAX_SECONDS:g} s in one pass, longer ones in "
                    f"{DEFAULT_WINDOW:g} s windows)")
    overlap: float = Field(DEFAULT_OVERLAP, ge=0.0,
                           description="seconds neighbouring windows share, cross-faded (at "
                                       "most the window less 1)")

    @field_validator("video", mode="before")
    @classmethod
    def _a_file_part(cls, value: object) -> object:
        """A `video` sent as a text field (no filename) is refused as such, not with FastAPI's
        "Expected UploadFile, received: <class 'str'>"."""
        if isinstance(value, str):
            raise ValueError("send the clip as a file (a part with a filename), not as text")
        return value


class JobParams(BaseModel):
    """A job's resolved parameters, as stored and reported (seed and steps filled in, so
    every result can be reproduced)."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str | None
    steps: int
    guidance: float
    seed: int
    samples: int
    duration: float | None = None
    window: float | None = None
    overlap: float = DEFAULT_OVERLAP
    video_name: str | None = Field(
        None, description="the uploaded file's name, for display only; null for text-only")

    @classmethod
    def of(cls, job: JobRecord) -> JobParams:
        """The parameters stored with `job`."""
        return cls.model_validate(job.params)

    @property
    def text_only(self) -> bool:
        return self.video_name is None

    def generation_request(self, max_duration: float = MAX_DURATION) -> GenerationRequest:
        """The request (`max_duration`: the server's longest clip)."""
        negative = DEFAULT_NEGATIVE_PROMPT if self.negative_prompt is None else self.negative_prompt
        return GenerationRequest(prompt=self.prompt, negative_prompt=negative,
                                 steps=self.steps, guidance=self.guidance,
                                 samples=self.samples, seed=self.seed, duration=self.duration,
                                 window=self.window, overlap=self.overlap,
                                 max_duration=max_duration)


class ProgressOut(BaseModel):
    stage: str | None = Field(description="video (or windows: a clip longer than a window, "
                                          "step = windows read), features, denoise, decode "
                                          "or saving")
    step: int
    total: int = Field(description="0 while not known: the video stage counts the frames "
                                   "decoded so far, of a number only the decoding finds out")


class OutputOut(BaseModel):
    index: int
    wav: str
    mp4: str | None = Field(description="null for text-only jobs")
    spectrogram: str


class JobOut(BaseModel):
    id: str
    state: JobState
    params: JobParams
    progress: ProgressOut
    queue_position: int | None = Field(description="1 = next to run; null unless queued")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None = Field(description="when the results will be deleted")
    outputs: list[OutputOut]

    @classmethod
    def from_record(cls, job: JobRecord, result_ttl_s: float) -> JobOut:
        base = f"{API_PREFIX}/jobs/{job.id}/outputs"
        outputs = [
            OutputOut(index=k, wav=f"{base}/{k}.wav", spectrogram=f"{base}/{k}.png",
                      mp4=f"{base}/{k}.mp4" if o.mp4 else None)
            for k, o in enumerate(job.outputs)
        ]
        expires = (job.finished_at + result_ttl_s
                   if job.finished_at is not None and job.state != JobState.EXPIRED else None)
        return cls(
            id=job.id, state=job.state, params=JobParams.of(job),
            progress=ProgressOut(stage=job.stage, step=job.step, total=job.total),
            queue_position=job.queue_position, error=job.error,
            created_at=datetime.fromtimestamp(job.created_at, UTC),
            started_at=_utc(job.started_at),
            finished_at=_utc(job.finished_at), expires_at=_utc(expires), outputs=outputs,
        )


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="newest first")
    next_cursor: int | None = Field(
        description="pass as `cursor` for the next (older) page; null on the last page")


class ReadyOut(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(
        description="models_loaded, worker_alive, accepting (not shutting down), "
                    "queue_has_room, disk_space: all true when ready")


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    worker_alive: bool = Field(description="every worker thread runs")
    queued: int
    running: int
    max_queue: int
    auth_required: bool


class ModelOut(BaseModel):
    id: str = Field(description="weights directory, hub repo id or 'tiny-random'")
    size: str
    sample_rate: int
    random_weights: bool = Field(description="true: outputs are noise (test model)")
    device: str = Field(description="the first worker's device")
    devices: list[str] = Field(description="every worker's device: one worker per GPU")
    dtype: str
    accel: str


class Defaults(BaseModel):
    steps: int
    guidance: float
    negative_prompt: str


class Limits(BaseModel):
    max_steps: int
    max_samples: int
    min_seconds: float
    max_seconds: float
    max_upload_bytes: int
    max_pixels: int = Field(description="per video frame")
    max_fps: float
    max_frames: int = Field(description="decoded frames per video")
    job_timeout_s: float
    result_ttl_s: float


class ModelsOut(BaseModel):
    models: list[ModelOut]
    defaults: Defaults
    limits: Limits


class ErrorOut(BaseModel):
    detail: str


def openapi_for(schema: dict[str, Any], settings: ServerSettings) -> dict[str, Any]:
    """The generated schema with this server's limits where the form's static bounds are
    wider (samples, duration), so generated clients and fuzzers see the real ones; and the
    bearer token required only when this server has one."""
    fields = schema["components"]["schemas"][JobRequest.__name__]["properties"]
    fields["samples"]["maximum"] = settings.max_samples
    for option in fields["duration"].get("anyOf", [fields["duration"]]):
        if option.get("type") == "number":
            option["maximum"] = settings.video_limits.max_seconds
    if settings.api_token is None:
        schema["components"].pop("securitySchemes", None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                operation["responses"].pop("401", None)
    return schema


def _utc(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)
