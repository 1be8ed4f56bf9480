"""Errors a user can act on.

Every failure that is the user's input, environment or files (rather than a bug of ours) is a
`FoleyError`: its message is a single line that says what is wrong and what to do, and the CLI
prints it without a traceback and exits with `exit_code`; the HTTP API maps it to `http_status`.
Anything else escaping to the top is a bug and keeps its traceback.
"""

from __future__ import annotations


class FoleyError(Exception):
    """Base class: a one-line, user-facing failure."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller passed (e.g. a library error text).
        super().__init__(" ".join(str(message).split()))


class UsageError(FoleyError):
    """A bad option or combination of options."""

    exit_code = 2
    http_status = 422


class InputError(FoleyError):
    """The input video, text or parameters cannot be used."""

    exit_code = 2
    http_status = 422


class MediaError(InputError):
    """A media file is missing, empty, truncated, not a video, or otherwise unreadable."""

    http_status = 415


class OutputError(FoleyError):
    """The output path cannot be written (missing directory, not writable, exists)."""

    exit_code = 2
    http_status = 500


class WeightsError(FoleyError):
    """Model weights are missing, corrupt, or do not fit the model."""

    exit_code = 3
    http_status = 500


class ConfigError(FoleyError):
    """A model or runtime configuration is invalid or unsupported."""

    exit_code = 2
    http_status = 500


class DependencyError(FoleyError):
    """An optional dependency needed for the requested feature is not installed."""

    exit_code = 3
    http_status = 501


class ParallelError(FoleyError):
    """The second process of `--parallel cfg` could not start, or failed during a request
    (it is started afresh for the next one)."""

    exit_code = 1
    http_status = 500


class Cancelled(FoleyError):
    """A generation was cancelled cooperatively (progress callback asked to stop)."""

    exit_code = 130
    http_status = 409
