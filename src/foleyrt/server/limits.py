"""The request body limit of the upload route (413 with a message that says the limit).

An announced `Content-Length` over the limit is refused before a byte is read; a body
without one (chunked) is counted as it streams and refused once past the limit, so an
oversized upload is never spooled to disk whole. (FastAPI's own `max_body_size` answers the
first case with a plain-text body that cannot carry our message, hence this small one.)
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the form fields and multipart framing around the video itself.
FORM_OVERHEAD_BYTES = 64 * 1024


class UploadLimit:
    """ASGI middleware limiting the body of `POST {path}` to `max_bytes` + form overhead."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes
        self.message = (f"upload too large: the limit is {max_bytes / 1024 ** 2:g} MiB per "
                        "video; trim or re-encode the clip")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == self.path):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes + FORM_OVERHEAD_BYTES
        announced = _content_length(scope)
        if announced is not None and announced > limit:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's form parsing untouched.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
