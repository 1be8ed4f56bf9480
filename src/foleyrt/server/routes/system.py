"""The service itself: `/v1/health` (liveness) and `/v1/ready` (readiness), both open for
load balancers and orchestrators; `/v1/models`; and `/metrics` for Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from foleyrt.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    MAX_STEPS,
    MIN_SECONDS,
)
from foleyrt.server.deps import ServiceDep, require_token
from foleyrt.server.schemas import (
    Defaults,
    ErrorOut,
    HealthOut,
    Limits,
    ModelOut,
    ModelsOut,
    ReadyOut,
)
from foleyrt.version import __version__

router = APIRouter(tags=["service"])
metrics_router = APIRouter(tags=["service"], dependencies=[Depends(require_token)])


@router.get("/health", responses={503: {"model": HealthOut, "description": "worker down"}})
def health(service: ServiceDep, response: Response) -> HealthOut:
    """Liveness: the process answers. 503 when a worker thread is gone (its jobs would queue
    forever, or its GPU idle; a restart is the fix). Never needs the token."""
    queued, running = service.counts()
    alive = service.worker.alive
    if not alive:
        response.status_code = 503
    return HealthOut(
        status="ok" if alive else "unavailable", version=__version__, worker_alive=alive,
        queued=queued, running=running, max_queue=service.settings.max_queue,
        auth_required=service.settings.api_token is not None,
    )


@router.get("/ready", responses={503: {"model": ReadyOut, "description": "not ready"}})
def ready(service: ServiceDep, response: Response) -> ReadyOut:
    """Readiness: a new job would be taken and run now (models loaded, worker alive, not
    shutting down, room in the queue, disk space above the threshold). 503 otherwise, with
    the failing checks false; a load balancer sends work elsewhere meanwhile."""
    checks = service.readiness()
    ok = all(checks.values())
    if not ok:
        response.status_code = 503
    return ReadyOut(ready=ok, checks=checks)


@router.get("/models", dependencies=[Depends(require_token)],
            responses={401: {"model": ErrorOut}})
def models(service: ServiceDep) -> ModelsOut:
    """The loaded model (one per server, kept warm on each worker's device), the defaults and
    the limits of a job."""
    pipe, settings = service.pipelines[0], service.settings
    runtime, video = pipe.runtime, settings.video_limits
    return ModelsOut(
        models=[ModelOut(
            id=pipe.models.source, size=pipe.models.spec.name, sample_rate=pipe.sample_rate,
            random_weights=pipe.models.random_weights, device=str(runtime.device),
            devices=[str(p.runtime.device) for p in service.pipelines],
            dtype=str(runtime.dtype).removeprefix("torch."), accel=runtime.accel,
        )],
        defaults=Defaults(steps=settings.default_steps, guidance=DEFAULT_GUIDANCE,
                          negative_prompt=DEFAULT_NEGATIVE_PROMPT),
        limits=Limits(
            max_steps=MAX_STEPS, max_samples=settings.max_samples, min_seconds=MIN_SECONDS,
            max_seconds=video.max_seconds, max_upload_bytes=settings.max_upload_bytes,
            max_pixels=video.max_pixels, max_fps=video.max_fps, max_frames=video.max_frames,
            job_timeout_s=settings.job_timeout_s, result_ttl_s=settings.result_ttl_s,
        ),
    )


@metrics_router.get("/metrics", response_class=Response,
                    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format: jobs by state, queue depth, job and stage latency histograms,
    GPU memory, refused requests by reason. Needs the token when the server has one."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
