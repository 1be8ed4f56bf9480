"""The door of the upload route: what is refused before or while a body arrives.

Before a byte is read: a submission without the server's token, one the service could not
queue (shutting down, queue full, disk nearly full), a body that is not a form, and an
announced `Content-Length` over the limit. While it streams: a body past the limit
(counted, so a chunked upload is never spooled to disk whole), a client that goes quiet for
`client_timeout_s` (a slow upload holds a connection and a temp file), and a multipart body
that ends without its closing boundary (cut short: the form parser would drop its last field
silently). Every refusal closes the connection (`Connection: close`): the rest of the body
is never read. (FastAPI's own `max_body_size` answers with a plain-text body that cannot
carry our message, hence this small middleware.)
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foleyrt.errors import FoleyError
from foleyrt.server.errors import UploadTooLarge
from foleyrt.server.refusals import error_response

# Room for the form fields and multipart framing around the video itself (the video's own
# size is held to the limit exactly as it is stored: `JobService`).
FORM_OVERHEAD_BYTES = 64 * 1024
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# A refused body is not read on: the connection ends with the answer.
CLOSE = {"Connection": "close"}
CUT_SHORT = ("the multipart body ends without its closing boundary: the upload was cut "
             "short; send it again")
EMPTY = "the body is empty; send the job as a multipart form"


class SubmissionGate:
    """ASGI middleware in front of `POST {path}`. `admit(headers)`, if given, raises the
    FoleyError that refuses a submission now (it reads the service when called, once the app
    has started)."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int, client_timeout_s: float,
                 admit: Callable[[Headers], None] | None = None) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes
        self.client_timeout_s = client_timeout_s
        self.admit = admit
        self.message = str(UploadTooLarge(max_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == self.path):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if self.admit is not None:
                self.admit(headers)
        except FoleyError as exc:
            refusal = error_response(exc)
            refusal.headers.update(CLOSE)
            await refusal(scope, receive, send)
            return
        kind, _, params = headers.get("content-type", "").partition(";")
        if kind.strip().lower() not in FORM_TYPES:
            shown = kind.strip()[:60] or "none"
            await _refuse(400, f"send the job as a multipart form (Content-Type: "
                               f"multipart/form-data); got {shown!r}", scope, receive, send)
            return
        limit = self.max_bytes + FORM_OVERHEAD_BYTES
        announced = _content_length(scope)
        if announced is not None and announced > limit:
            await _refuse(413, self.message, scope, receive, send)
            return
        closing = _closing_delimiter(params) if kind.strip().lower() == FORM_TYPES[0] else None
        seen, tail, closed = 0, b"", closing is None

        async def guarded() -> Message:
            # An HTTPException passes through FastAPI's form parsing untouched.
            nonlocal seen, tail, closed
            with anyio.move_on_after(self.client_timeout_s) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise HTTPException(408, f"the upload stalled: nothing arrived for "
                                         f"{self.client_timeout_s:g} s", headers=CLOSE)
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                if seen > limit:
                    raise HTTPException(413, self.message, headers=CLOSE)
                if closing is not None and not closed:
                    window = tail + body
                    closed = closing in window
                    tail = window[-len(closing):]
                if not message.get("more_body", False) and not closed:
                    raise HTTPException(400, CUT_SHORT if seen else EMPTY, headers=CLOSE)
            return message

        await self.app(scope, guarded, send)


async def _refuse(status: int, detail: str, scope: Scope, receive: Receive,
                  send: Send) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=CLOSE)(
        scope, receive, send)


def _closing_delimiter(params: str) -> bytes | None:
    """`--BOUNDARY--`, the end of a multipart body (None: no boundary given; the form
    parser refuses that itself)."""
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return b"--" + value.strip().strip('"').encode("latin-1") + b"--"
    return None


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
