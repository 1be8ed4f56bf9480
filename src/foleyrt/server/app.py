"""The application factory: routes, the middleware around them (request ids, security
headers, same-site checks, the upload door), one-line refusals, the docs page and the web
UI, with the pipeline and the job service started in the lifespan (never at import)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server import refusals
from foleyrt.server.deps import bearer_token, check_token
from foleyrt.server.docs import add_docs
from foleyrt.server.files import DataDir
from foleyrt.server.http import HeadAsGet, RequestContext, SameSiteGuard
from foleyrt.server.limits import SubmissionGate
from foleyrt.server.metrics import Metrics
from foleyrt.server.recovery import open_data
from foleyrt.server.routes import jobs, system
from foleyrt.server.schemas import API_PREFIX, openapi_for
from foleyrt.server.service import JobService
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobStore
from foleyrt.version import __version__

STATIC_DIR = Path(__file__).parent / "static"


def load_pipelines(settings: ServerSettings) -> list[FoleyPipeline]:
    """The server's pipelines, one per worker's device, with their acceleration (loaded one
    after the other: the weights are read from disk once per device)."""
    return [FoleyPipeline.from_pretrained(settings.model, settings.size,
                                          runtime).compile_encoders()
            for runtime in settings.runtimes]


def create_app(settings: ServerSettings, pipelines: Sequence[FoleyPipeline] | None = None,
               data: tuple[DataDir, JobStore] | None = None) -> FastAPI:
    """`pipelines`: already loaded ones, one per worker (the CLI loads them first, so a bad
    model path is a one-line error rather than a failed start-up; tests share one); else
    loaded at start-up. `data`: the data directory and job store, already opened and checked
    (the CLI does that before loading the model); else opened at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipes = list(pipelines) if pipelines is not None else await run_in_threadpool(
            load_pipelines, settings)
        files, store = data if data is not None else await run_in_threadpool(
            open_data, settings)
        service = JobService(settings, pipes, files, store, app.state.metrics)
        service.start()
        app.state.service = service
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            if pipelines is None:  # ours: end their second processes (--parallel cfg)
                for pipe in pipes:
                    pipe.close()

    app = FastAPI(
        title="foleyrt", version=__version__, lifespan=lifespan, docs_url=None,
        redoc_url=None,
        description="HunyuanVideo-Foley as a service: a video (or a text) in, a synchronised "
                    "48 kHz sound track out. Queued jobs that fit together run as one batch on "
                    "one of the server's GPUs.",
    )
    app.state.settings = settings
    app.state.metrics = Metrics()

    def admit(headers: Headers) -> None:
        check_token(settings.api_token, bearer_token(headers.get("authorization")))
        app.state.service.admit()

    # Added innermost first: requests pass RequestContext, HeadAsGet, SameSiteGuard,
    # SubmissionGate.
    app.add_middleware(SubmissionGate, path=f"{API_PREFIX}/jobs",
                       max_bytes=settings.max_upload_bytes,
                       client_timeout_s=settings.client_timeout_s, admit=admit)
    if settings.api_token is None:
        app.add_middleware(SameSiteGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    refusals.install(app, API_PREFIX)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(system.router, prefix=API_PREFIX)
    app.include_router(system.metrics_router)
    add_docs(app)
    base_openapi = app.openapi
    # FastAPI's documented way to extend the schema; its types declare a plain method
    app.openapi = lambda: openapi_for(base_openapi(), settings)  # type: ignore[method-assign]
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app
