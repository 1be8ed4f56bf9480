"""Typed dependencies of the routes: the running service and the optional bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from foleyrt.server.errors import Unauthorized
from foleyrt.server.service import JobService
from foleyrt.server.settings import TOKEN_ENV, ServerSettings


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def get_service(request: Request) -> JobService:
    return request.app.state.service


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
ServiceDep = Annotated[JobService, Depends(get_service)]

_bearer = HTTPBearer(auto_error=False, description=f"the server's {TOKEN_ENV}, when it has one")


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the server's token (when it has one)."""
    check_token(settings.api_token, credentials.credentials if credentials is not None else "")


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header ("" for none), as HTTPBearer
    reads it: for the upload route's door, which checks it before the body is read."""
    scheme, token = get_authorization_scheme_param(authorization)
    return token if scheme.lower() == "bearer" else ""


def check_token(expected: str | None, given: str) -> None:
    """Raise Unauthorized unless `given` is the server's token (no token: anyone passes).
    Compared in constant time, so response timing does not leak how much of a guess was
    right."""
    if expected is not None and not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("missing or wrong API token: send the header "
                           "'Authorization: Bearer <token>'")
