"""Every refusal is `{"detail": "<one line>"}` with its status: the service's own errors,
FastAPI's parameter validation (reworded: one line, field names shortened, no input echoed,
so neither a huge value nor an upload's temporary file shows), and Starlette's HTTP errors,
with the methods a path really allows on 405 and in the answer to OPTIONS. A path under the
API's prefix that no route has is a 404 saying so (not the static files' answer), with the
path to use when only a trailing slash was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from foleyrt.errors import FoleyError

MAX_SHOWN_FIELD = 40  # characters of a client's field name shown back
MAX_LISTED_ERRORS = 3
MAX_SHOWN_PATH = 80  # characters of a request's path named in a refusal
STATIC_METHODS = ("GET", "HEAD")
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def error_response(exc: FoleyError) -> JSONResponse:
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": str(exc)}, status_code=exc.http_status, headers=headers)


def install(app: FastAPI, api_prefix: str) -> None:
    """One-line refusals for `app`, whose API lives under `api_prefix` (e.g. "/v1")."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        if ((path == api_prefix or path.startswith(f"{api_prefix}/"))
                and not route_methods(request.app, request.scope)):
            return JSONResponse({"detail": _no_api_path(request)}, status_code=404)
        return await _http_error(request, exc)

    app.add_exception_handler(FoleyError, _foley_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, http_error)


def _no_api_path(request: Request) -> str:
    """`no API path /v1/jobs/; use /v1/jobs (no trailing slash)`, the paths named only when
    short and printable."""
    path = request.url.path
    trimmed = path.rstrip("/")
    if (trimmed != path and _showable(path)
            and route_methods(request.app, {**request.scope, "path": trimmed})):
        return f"no API path {path}; use {trimmed} (no trailing slash)"
    shown = f" {path}" if _showable(path) else ""
    return f"no API path{shown}; the API is listed at /docs"


def _showable(text: str) -> bool:
    return len(text) <= MAX_SHOWN_PATH and text.isprintable()


async def _foley_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FoleyError)
    return error_response(exc)


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """`steps: must be >= 1; stepz: unknown field` from pydantic's error list."""
    parts = [_one_error(e) for e in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    return "; ".join(parts) or "invalid request"


def _one_error(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "header",
                                                                         "path")]
    field = ".".join(loc) if loc else "request"
    if len(field) > MAX_SHOWN_FIELD or not field.isprintable():
        field = "".join(c for c in field if c.isprintable())[:MAX_SHOWN_FIELD] + "..."
    kind = error.get("type")
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    if kind == "missing":
        return f"{field}: required"
    cause = error.get("ctx", {}).get("error") if kind == "value_error" else None
    # a validator's own ValueError, without pydantic's "Value error, " in front
    message = str(cause) if cause is not None else str(error.get("msg", "invalid"))
    return f"{field}: {message[0].lower()}{message[1:]}" if message else field


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = allowed_methods(request.app, request.scope)
        headers["Allow"] = ", ".join(allowed)
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=headers)
        detail = f"{request.method[:16]} is not allowed here; use {', '.join(allowed)}"
    else:
        detail = " ".join(str(exc.detail).split())
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """The methods of this request's path (`route_methods`, HEAD wherever GET is:
    `http.HeadAsGet`), the static files' when no route has it. OPTIONS is always
    answered."""
    methods = route_methods(app, scope)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted((methods or set(STATIC_METHODS)) | {"OPTIONS"})


def route_methods(app: Starlette, scope: Scope) -> set[str]:
    """The methods some route (not the static files) fully matches for this request's path,
    found by asking each route with each method."""
    return {
        method for method in PROBED_METHODS
        if any(not isinstance(route, Mount) and route.matches({**scope, "method": method})[0]
               is Match.FULL for route in app.routes)
    }
