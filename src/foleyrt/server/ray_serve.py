"""A Ray Serve deployment of the pipeline, for serving from a Ray cluster (`foleyrt ray-serve`).

`deploy(config, replicas=N, gpus_per_replica=1)` runs N replicas of `FoleyReplica` behind Ray
Serve's HTTP proxy; Ray places each on a GPU of the cluster, routes requests to them and can
scale them. Each replica loads the model once. The API is synchronous and stateless:

- `POST /v1/generate`: the job form of `foleyrt serve` (a `video` upload, or a `duration` for
  text-only; `prompt`, `negative_prompt`, `steps`, `guidance`, `seed`), less `samples` (send
  one request per track: concurrent requests are batched anyway), plus `format` (`wav`, or
  `mp4` for a video). The answer is the sound itself, its seed in `X-Seed` and the number of
  requests denoised with it in `X-Batch-Requests`; a refusal is `{"detail": one line}` with
  the same statuses as the job API.
- `GET /v1/health`: the replica is up, with its model and device.

Batching is Ray Serve's own `@serve.batch`: the requests waiting at a replica are gathered up
to a row budget (`batch_size_fn` counts transformer rows, two per guided request, not
requests) or for at most `batch_wait_s`; the batch is encoded request by request, denoised in
one `FoleyPipeline.denoise` call per step count (equal shapes share each forward) and finished
request by request. A batch out of GPU memory is retried one request at a time. The job
store, limits, web UI and restart rules of `foleyrt serve` are not part of this form: Ray's
proxies, retries and autoscaling take their place.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import ray
import torch
from fastapi import FastAPI, Form, Response
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import HUB_REPO
from foleyrt.errors import FoleyError, InputError
from foleyrt.media.video import VideoLimits, scan_video
from foleyrt.pipeline.budget import DEFAULT_MAX_ROWS
from foleyrt.pipeline.pipeline import (
    Encoded,
    FoleyPipeline,
    release_cuda_memory,
    together_else_alone,
)
from foleyrt.request import DEFAULT_NEGATIVE_PROMPT, DEFAULT_STEPS, MAX_SEED, GenerationRequest
from foleyrt.server import refusals
from foleyrt.server.errors import NotAccepting
from foleyrt.server.limits import SubmissionGate
from foleyrt.server.schemas import JobRequest
from foleyrt.server.settings import MIB
from foleyrt.server.worker import OOM_MESSAGE
from foleyrt.version import __version__

log = logging.getLogger(__name__)

APP_NAME = "foleyrt"
CLIENT_TIMEOUT_S = 30.0  # an upload silent this long is dropped (408)
_MEDIA_TYPES = {"wav": "audio/wav", "mp4": "video/mp4"}


@dataclass(frozen=True)
class RayServeConfig:
    """What every replica loads and how it batches. The runtime is given in the command
    line's words and built on the replica, whose devices the driver may not have."""

    model: str = HUB_REPO
    size: str = "xxl"
    # `RuntimeConfig.build`'s arguments (`cli.options.runtime_words`; a calibration or engine
    # path must be one every node can read)
    runtime_words: dict[str, Any] = field(default_factory=dict)
    default_steps: int = DEFAULT_STEPS
    batch_rows: int = DEFAULT_MAX_ROWS  # transformer rows a batch may fill
    batch_wait_s: float = 0.0  # how long the first request of a batch waits for more
    video_limits: VideoLimits = field(default_factory=VideoLimits)
    max_upload_bytes: int = 200 * MIB

    def __post_init__(self) -> None:
        if self.batch_rows < 2:
            raise InputError(f"batch rows must be at least 2 (a guided request fills two), "
                             f"got {self.batch_rows}")
        if self.batch_wait_s < 0 or self.max_upload_bytes < 1:
            raise InputError("the batch wait cannot be negative, nor the upload limit below 1")

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig.build(**self.runtime_words)


class GenerateForm(JobRequest):
    """`POST /v1/generate`: the job form, one track per request, and the answer's format."""

    samples: int = Field(1, ge=1, le=1, description="always 1: one request per track")
    format: Literal["wav", "mp4"] = Field(
        "wav", description="the answer: a WAV, or (video requests) the MP4 with the new sound")


@dataclass
class _Request:
    """One request inside a batch: where its upload is and where its answer goes."""

    video: Path | None
    request: GenerationRequest
    output: Path

    @property
    def rows(self) -> int:
        return self.request.rows


def _rows(requests: list[_Request]) -> int:
    return sum(r.rows for r in requests)


@serve.deployment(name="FoleyReplica")
@serve.ingress()
class FoleyReplica:
    """One replica: the pipeline on its device, the HTTP routes, the batcher."""

    def __init__(self, config: RayServeConfig) -> None:
        self.config = config
        self.pipeline = FoleyPipeline.from_pretrained(config.model, config.size,
                                                      config.runtime()).compile_encoders()
        # Ray's batch wrapper carries its setters as attributes.
        self.generate.set_max_batch_size(config.batch_rows)  # type: ignore[attr-defined]
        self.generate.set_batch_wait_timeout_s(config.batch_wait_s)  # type: ignore[attr-defined]
        log.info("replica ready on %s", self.pipeline.runtime.device)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    @serve.batch(max_batch_size=DEFAULT_MAX_ROWS, batch_size_fn=_rows)
    async def generate(self, requests: list[_Request]) -> list[tuple[Path | FoleyError, int]]:
        """A batch of requests -> each one's written answer (or why it has none) and the
        number of requests batched with it. The work runs off the event loop, which
        meanwhile takes the next batch's requests."""
        answers = await asyncio.to_thread(self._run, requests)
        return [(answer, len(requests)) for answer in answers]

    # ---- the batch, on a worker thread -----------------------------------------------------

    def _run(self, requests: list[_Request]) -> list[Path | FoleyError]:
        with torch.inference_mode():
            encoded = [self._attempt(lambda r=r: self.pipeline.encode(
                r.video, r.request, None, self.config.video_limits)) for r in requests]
            latents: list[Any] = list(encoded)  # an error stays in its request's place
            for steps in {e.request.steps for e in encoded if isinstance(e, Encoded)}:
                group = [k for k, e in enumerate(encoded)
                         if isinstance(e, Encoded) and e.request.steps == steps]
                for k, latent in zip(group, self._denoise([encoded[k] for k in group]),
                                     strict=True):
                    latents[k] = latent
            return [
                latent if isinstance(latent, FoleyError) else self._attempt(
                    lambda r=r, e=e, latent=latent: self.pipeline.finish(e, latent).save(
                        r.output)[0])
                for r, e, latent in zip(requests, encoded, latents, strict=True)
            ]

    def _denoise(self, encoded: list[Encoded]) -> list[Any]:
        """The latents of requests of one step count, together; one at a time after running
        out of memory together."""
        return together_else_alone(
            len(encoded),
            lambda: list(self.pipeline.denoise(encoded, max_rows=self.config.batch_rows)),
            lambda k: self._attempt(lambda: self.pipeline.denoise([encoded[k]])[0]), "requests")

    def _attempt(self, work: Any) -> Any:
        """`work()`, or the one-line error its request is answered with."""
        out_of_memory = False
        try:
            return work()
        except FoleyError as exc:
            return exc
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True
        except Exception as exc:
            log.exception("request failed")
            return FoleyError(f"internal error ({type(exc).__name__}); see the replica's log")
        if out_of_memory:  # out of the `except`: its traceback no longer holds the tensors
            release_cuda_memory()
        return NotAccepting(OOM_MESSAGE)


def build_api(replica: FoleyReplica) -> FastAPI:
    """The replica's HTTP routes (built on the replica: no app object at import)."""
    config = replica.config
    app = FastAPI(title="foleyrt (Ray Serve)", version=__version__, redoc_url=None,
                  description="HunyuanVideo-Foley on a Ray cluster: a video (or a text) in, "
                              "its 48 kHz sound track out, in one request.")
    refusals.install(app, "/v1")
    app.add_middleware(SubmissionGate, path="/v1/generate", max_bytes=config.max_upload_bytes,
                       client_timeout_s=CLIENT_TIMEOUT_S)

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        runtime = replica.pipeline.runtime
        return {"status": "ok", "version": __version__, "model": replica.pipeline.models.source,
                "device": str(runtime.device), "accel": runtime.accel.value}

    @app.post("/v1/generate", response_class=Response,
              responses={200: {"content": {t: {} for t in _MEDIA_TYPES.values()}}})
    async def generate(form: Annotated[GenerateForm, Form(media_type="multipart/form-data")]
                       ) -> Response:
        if form.format == "mp4" and form.video is None:
            raise InputError("format mp4 needs a video; text-only requests get a wav")
        seed = form.seed if form.seed is not None else secrets.randbelow(MAX_SEED + 1)
        request = GenerationRequest(
            prompt=form.prompt.strip(),
            negative_prompt=(DEFAULT_NEGATIVE_PROMPT if form.negative_prompt is None
                             else form.negative_prompt),
            steps=form.steps or config.default_steps, guidance=form.guidance, seed=seed,
            duration=form.duration, window=form.window, overlap=form.overlap,
            max_duration=config.video_limits.max_seconds).check_source(form.video is not None)
        with tempfile.TemporaryDirectory(prefix="foleyrt-") as tmp:
            video = None
            if form.video is not None:
                video = Path(tmp) / "input"
                video.write_bytes(await form.video.read())
                name = form.video.filename or "upload"
                try:
                    await asyncio.to_thread(scan_video, video, config.video_limits)
                except FoleyError as exc:
                    raise type(exc)(str(exc).replace(str(video), f"uploaded file {name!r}")
                                    ) from None
            answer, batched = await replica.generate(
                _Request(video, request, Path(tmp) / f"sound.{form.format}"))
            if isinstance(answer, FoleyError):
                if video is not None:
                    answer = type(answer)(str(answer).replace(str(video), "the uploaded video"))
                raise answer
            return Response(answer.read_bytes(), media_type=_MEDIA_TYPES[form.format],
                            headers={"X-Seed": str(seed), "X-Batch-Requests": str(batched)})

    return app


def deploy(config: RayServeConfig, *, replicas: int, gpus_per_replica: float,
           host: str, port: int, address: str | None = None) -> DeploymentHandle:
    """Start (or join, at `address`) a Ray cluster, start Serve's HTTP proxy on `host:port`
    and deploy `replicas` replicas; returns once they are ready."""
    if replicas < 1 or gpus_per_replica < 0:
        raise InputError("replicas must be at least 1 and GPUs per replica not negative")
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    deployment = FoleyReplica.options(  # type: ignore[attr-defined]
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus_per_replica},
        # Requests a replica holds at once: room for a full batch waiting behind the running one.
        max_ongoing_requests=2 * config.batch_rows,
    )
    return serve.run(deployment.bind(config), name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    """Remove the application and leave the cluster (a local one stops with it; on a shared
    cluster Serve and its other applications stay)."""
    serve.delete(APP_NAME)
    ray.shutdown()
