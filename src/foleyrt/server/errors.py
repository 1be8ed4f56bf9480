"""Failures that only exist in the service. They extend the `FoleyError` family, so one
exception handler turns every user-facing failure into `{"detail": message}` with its status."""

from __future__ import annotations

from foleyrt.errors import FoleyError


class JobNotFound(FoleyError):
    http_status = 404


class JobConflict(FoleyError):
    """The job is in the wrong state for the request (cancel a finished job, fetch outputs of
    one still running)."""

    http_status = 409


class ResultsExpired(FoleyError):
    http_status = 410


class QueueFull(FoleyError):
    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
