"""Failures that only exist in the service. They extend the `FoleyError` family, so one
exception handler turns every user-facing failure into `{"detail": message}` with its status."""

from __future__ import annotations

from foleyrt.errors import FoleyError


class Unauthorized(FoleyError):
    """The server has a token and the request did not bring it (answered with
    `WWW-Authenticate: Bearer`)."""

    http_status = 401


class JobNotFound(FoleyError):
    http_status = 404


class JobConflict(FoleyError):
    """The job is in the wrong state for the request (cancel a finished job, fetch outputs of
    one still running), or an Idempotency-Key was reused with another request."""

    http_status = 409


class ResultsGone(FoleyError):
    """Expired, or deleted from the disk by someone else."""

    http_status = 410


class UploadTooLarge(FoleyError):
    http_status = 413

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"upload too large: the limit is {max_bytes / 1024 ** 2:g} MiB per "
                         "video; trim or re-encode the clip")


class QueueFull(FoleyError):
    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotAccepting(FoleyError):
    """The server is shutting down (or its worker died): try another instance or later. A
    `retry_after_s` marks a refusal that passes by itself (answered with Retry-After); one
    without it (a dead worker) lasts until someone restarts the server, so clients stop
    retrying it."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DiskFull(FoleyError):
    http_status = 507
