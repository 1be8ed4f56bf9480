"""The door of the upload route: what is refused before or while a body arrives.

Before a byte is read: a submission the service could not queue (shutting down, queue full,
disk nearly full) and an announced `Content-Length` over the limit. While it streams: a body
past the limit (counted, so a chunked upload is never spooled to disk whole) and a client
that goes quiet for `client_timeout_s` (a slow upload holds a connection and a temp file).
(FastAPI's own `max_body_size` answers with a plain-text body that cannot carry our
message, hence this small middleware.)
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foleyrt.errors import FoleyError
from foleyrt.server.refusals import error_response

# Room for the form fields and multipart framing around the video itself.
FORM_OVERHEAD_BYTES = 64 * 1024


class SubmissionGate:
    """ASGI middleware in front of `POST {path}`. `admit()` raises the FoleyError that
    refuses a submission now (it reads the service when called, once the app has started)."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int, client_timeout_s: float,
                 admit: Callable[[], None]) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes
        self.client_timeout_s = client_timeout_s
        self.admit = admit
        self.message = (f"upload too large: the limit is {max_bytes / 1024 ** 2:g} MiB per "
                        "video; trim or re-encode the clip")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == self.path):
            await self.app(scope, receive, send)
            return
        try:
            self.admit()
        except FoleyError as exc:
            await error_response(exc)(scope, receive, send)
            return
        limit = self.max_bytes + FORM_OVERHEAD_BYTES
        announced = _content_length(scope)
        if announced is not None and announced > limit:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def guarded() -> Message:
            # An HTTPException passes through FastAPI's form parsing untouched.
            nonlocal seen
            with anyio.move_on_after(self.client_timeout_s) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise HTTPException(408, f"the upload stalled: nothing arrived for "
                                         f"{self.client_timeout_s:g} s")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, guarded, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
