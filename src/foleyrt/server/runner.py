"""Running the app under uvicorn, configured for clients that misbehave and for orderly stops.

uvicorn's own settings carry most of it: `limit_concurrency` caps open connections and
running requests (more get 503), `timeout_keep_alive` drops idle kept-alive connections,
`h11_max_incomplete_event_size` bounds a request's headers, `timeout_graceful_shutdown`
bounds the wait for open requests on SIGTERM. What uvicorn lacks is a deadline for a
request's headers: a client trickling them byte by byte (slowloris) would hold its
connection forever. `_header_deadline_protocol` adds that to uvicorn's h11 protocol (the one
used without httptools), and the upload route has its own deadline between body chunks
(`limits.SubmissionGate`). The socket is bound before the model loads, so a busy port is one
line and not a wasted model load.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
from types import FrameType

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from foleyrt.errors import UsageError
from foleyrt.server.settings import ServerSettings

MAX_HEADER_BYTES = 16 * 1024
KEEP_ALIVE_S = 5
BACKLOG = 256


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port`, or a one-line UsageError."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use; stop what listens "
                             "there or pass another --port") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


def _header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers have not all
    arrived `timeout_s` after it opened (or after its previous response ended)."""

    class HeaderDeadlineH11(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        # uvicorn's own override narrows the transport the same way (and ignores it too)
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request's headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineH11


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT the job service stops taking jobs at once (its worker then finishes
    or re-queues the running job within the shutdown timeout) while uvicorn closes the
    listening socket and waits for open requests."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.foleyrt_app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = getattr(self.foleyrt_app.state, "service", None)
        if service is not None:
            service.drain()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signals it caught once it has stopped (a SIGTERM then kills
        # the process, a SIGINT becomes KeyboardInterrupt); a drained stop is a clean exit.
        self._captured_signals.clear()


def server_for(app: FastAPI, settings: ServerSettings, *,
               access_log: bool = False) -> uvicorn.Server:
    """The uvicorn server of `app`, with the limits above; run it with `.run(sockets=...)`."""
    config = uvicorn.Config(
        app, http=_header_deadline_protocol(settings.client_timeout_s), log_config=None,
        access_log=access_log, limit_concurrency=settings.max_connections,
        timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s), backlog=BACKLOG,
        lifespan="on",
    )
    return _DrainingServer(config, app)
