"""Helpers of the server tests: polling, submitting, a slowed pipeline and a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from foleyrt.pipeline.pipeline import FoleyPipeline, Progress, ProgressFn
from foleyrt.server.app import create_app
from foleyrt.server.runner import server_for
from foleyrt.server.service import JobService
from foleyrt.server.settings import ServerSettings

FINAL = {"succeeded", "failed", "cancelled", "expired"}
STEPS = 2  # jobs of these tests: the tiny model at 2 steps takes well under a second


class SlowPipeline:
    """The real pipeline with every progress callback delayed: a job then stays running long
    enough to be cancelled, to time out, to hold the queue full or to meet a shutdown."""

    def __init__(self, pipeline: FoleyPipeline, delay_s: float) -> None:
        self._pipeline = pipeline
        self.delay_s = delay_s

    def _slowed(self, progress: ProgressFn | None) -> ProgressFn:
        def slowed(event: Progress) -> bool | None:
            time.sleep(self.delay_s)
            return progress(event) if progress is not None else None

        return slowed

    def encode(self, video: Any, request: Any, progress: ProgressFn | None = None,
               video_limits: Any = None) -> Any:
        return self._pipeline.encode(video, request, self._slowed(progress), video_limits)

    def denoise(self, encoded: Any, *, progress: ProgressFn | None = None, **kwargs: Any) -> Any:
        return self._pipeline.denoise(encoded, progress=self._slowed(progress), **kwargs)

    def finish(self, encoded: Any, latents: Any, progress: ProgressFn | None = None) -> Any:
        return self._pipeline.finish(encoded, latents, self._slowed(progress))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


def service_of(client: TestClient) -> JobService:
    """The service behind a started test app (to look at its data directory)."""
    service: JobService = client.app.state.service  # type: ignore[attr-defined]
    return service


def wait_for(client: Any, job_id: str, states: set[str] = FINAL,
             timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll a job until its state is one of `states`; its last document."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout_s} s")
        time.sleep(0.05)


def submit_text(client: Any, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    return client.post("/v1/jobs", data={"prompt": "rain on a tin roof", "duration": "1",
                                         **{k: str(v) for k, v in fields.items()}},
                       headers=headers)


def submit_video(client: Any, path: Path, name: str | None = None,
                 headers: dict[str, str] | None = None, **fields: Any) -> Any:
    with path.open("rb") as f:
        return client.post("/v1/jobs", data={"prompt": "footsteps", **fields},
                           files={"video": (name or path.name, f, "video/mp4")},
                           headers=headers)


@contextmanager
def live_server(settings: ServerSettings, pipeline: Any) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = server_for(create_app(settings, [pipeline]), settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
