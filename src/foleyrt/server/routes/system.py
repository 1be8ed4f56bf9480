"""`/v1/health` (open, for load balancers and start-up scripts) and `/v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from foleyrt.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    MAX_SECONDS,
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
)
from foleyrt.version import __version__

router = APIRouter(tags=["service"])


@router.get("/health", responses={503: {"model": HealthOut, "description": "worker down"}})
def health(service: ServiceDep, response: Response) -> HealthOut:
    """Never needs the token. 503 when the worker thread is gone (jobs would queue forever)."""
    queued, running = service.counts()
    alive = service.worker.alive
    if not alive:
        response.status_code = 503
    return HealthOut(
        status="ok" if alive else "unavailable", version=__version__, worker_alive=alive,
        queued=queued, running=running, max_queue=service.settings.max_queue,
        auth_required=service.settings.api_token is not None,
    )


@router.get("/models", dependencies=[Depends(require_token)],
            responses={401: {"model": ErrorOut}})
def models(service: ServiceDep) -> ModelsOut:
    """The loaded model (one per server, kept warm), the defaults and the limits of a job."""
    pipe, settings = service.pipeline, service.settings
    runtime = pipe.runtime
    return ModelsOut(
        models=[ModelOut(
            id=pipe.models.source, size=pipe.models.spec.name, sample_rate=pipe.sample_rate,
            random_weights=pipe.models.random_weights, device=str(runtime.device),
            dtype=str(runtime.dtype).removeprefix("torch."), accel=runtime.accel,
        )],
        defaults=Defaults(steps=settings.default_steps, guidance=DEFAULT_GUIDANCE,
                          negative_prompt=DEFAULT_NEGATIVE_PROMPT),
        limits=Limits(
            max_steps=MAX_STEPS, max_samples=settings.max_samples, min_seconds=MIN_SECONDS,
            max_seconds=MAX_SECONDS, max_upload_bytes=settings.max_upload_bytes,
            job_timeout_s=settings.job_timeout_s, result_ttl_s=settings.result_ttl_s,
        ),
    )
