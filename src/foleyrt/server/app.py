"""The application factory: routes, the upload limit, error mapping and the web UI, with the
pipeline and the job service started in the lifespan (never at import)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from foleyrt.errors import FoleyError
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.errors import QueueFull
from foleyrt.server.limits import UploadLimit
from foleyrt.server.routes import jobs, system
from foleyrt.server.schemas import API_PREFIX
from foleyrt.server.service import JobService
from foleyrt.server.settings import ServerSettings
from foleyrt.version import __version__

STATIC_DIR = Path(__file__).parent / "static"


def load_pipeline(settings: ServerSettings) -> FoleyPipeline:
    """The one pipeline of the server, on the configured device, with its acceleration."""
    return FoleyPipeline.from_pretrained(settings.model, settings.size, settings.runtime)


def create_app(settings: ServerSettings, pipeline: FoleyPipeline | None = None) -> FastAPI:
    """`pipeline`: an already loaded one (the CLI loads it first, so a bad model path is a
    one-line error rather than a failed start-up; tests share one); else loaded at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipe = pipeline if pipeline is not None else await run_in_threadpool(
            load_pipeline, settings)
        service = await run_in_threadpool(JobService.start, settings, pipe)
        app.state.service = service
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(
        title="foleyrt", version=__version__, lifespan=lifespan,
        description="HunyuanVideo-Foley as a service: a video (or a text) in, a synchronised "
                    "48 kHz sound track out. Jobs run one at a time on the server's GPU.",
    )
    app.state.settings = settings
    app.add_middleware(UploadLimit, path=f"{API_PREFIX}/jobs",
                       max_bytes=settings.max_upload_bytes)
    app.add_exception_handler(FoleyError, _foley_error)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(system.router, prefix=API_PREFIX)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
    return app


async def _foley_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FoleyError)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.http_status, headers=headers)
