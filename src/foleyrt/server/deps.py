"""Typed dependencies of the routes: the running service and the optional bearer token."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
    """401 unless the request carries the server's token (when it has one). Compared in
    constant time, so response timing does not leak how much of a guess was right."""
    expected = settings.api_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "missing or wrong API token: send the header 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
