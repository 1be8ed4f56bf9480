"""ASGI middleware around every request: its id, the security headers, counted refusals,
HEAD answered wherever GET is, and, on a server without a token, the Host and Origin checks
that keep other web pages out.

Pure ASGI (not Starlette's BaseHTTPMiddleware), so uploads stream through untouched.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from foleyrt.server.logs import request_id
from foleyrt.server.metrics import Metrics
from foleyrt.server.refusals import route_methods

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own request id is kept if it looks like one; anything else gets ours.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# The web UI and the API docs load only from this server; media and pictures may be blobs
# (the UI fetches outputs with the token and plays them from memory). Swagger UI sets inline
# styles, nothing inline runs as script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOOPBACK_NAMES = frozenset({"localhost"})


class RequestContext:
    """Gives each request an id (the client's `X-Request-ID` if sane), visible to the logs
    written while serving it; adds it and the security headers to the response, and counts
    every error status in the metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id.set(rid)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                self.metrics.count_refusal(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id.reset(token)


class HeadAsGet:
    """HEAD on a GET route is served as that GET without its body: its status and headers
    (length and type of a download). FastAPI, unlike Starlette, gives its GET routes no
    HEAD, so HEAD fell through to the web UI's files and their 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "HEAD"
                and "GET" in route_methods(scope["app"], scope)):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class SameSiteGuard:
    """Without a token anyone who can reach the port may use the API, so at least other web
    sites must not do it through a visitor's browser: a Host that is neither an IP address,
    `localhost` nor an allowed name is refused (DNS rebinding), and so is a state-changing
    request from another origin (a cross-site form or fetch). Clients that are not browsers
    send no Origin and pass; pages served by this server pass."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                await JSONResponse({"detail": problem}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._host_allowed(host):
            return ("this server answers only to its IP address or localhost (set "
                    "FOLEYRT_API_TOKEN, or pass --allowed-host, to serve it under a name)")
        if scope["method"] in _SAFE_METHODS:
            return None
        origin = headers.get("origin")
        cross_site = headers.get("sec-fetch-site") == "cross-site"
        if cross_site or (origin is not None and _netloc(origin) != host.lower()):
            return "requests from other web sites are refused; use this server's own page"
        return None

    def _host_allowed(self, host: str) -> bool:
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.allowed_hosts


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return None
