"""Server settings: one frozen dataclass, validated once at start-up.

The command line fills it; the API token alone comes from the environment
(`FOLEYRT_API_TOKEN`), so it never shows in `ps`, shell history or a unit file's arguments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.batch.local import DEFAULT_DECODE_WORKERS, DecodeIn
from foleyrt.config import HUB_REPO
from foleyrt.errors import ConfigError
from foleyrt.media.video import VideoLimits
from foleyrt.request import DEFAULT_STEPS, MAX_SAMPLES, MAX_STEPS

TOKEN_ENV = "FOLEYRT_API_TOKEN"
MIB = 1024 * 1024
MAX_BATCH_WAIT_S = 10.0  # longer holds a lone job back for little gain

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SHOWN_UNITS = (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0))


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/foleyrt/server`: results outlive the working directory they were
    started from."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "foleyrt" / "server"


def token_from_env() -> str | None:
    """The bearer token, or None (no authentication) when the variable is unset or empty."""
    return os.environ.get(TOKEN_ENV) or None


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `7d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if match is None:
        raise ConfigError(f"invalid duration {text!r}; use e.g. 90s, 30m, 24h or 7d")
    return float(match[1]) * _UNITS[match[2] or "s"]


def format_duration(seconds: float) -> str:
    """Seconds for people: `86400` -> "24 h", `300` -> "5 min", `5400` -> "1.5 h",
    `172800` -> "2 d" (days only from two on: "kept 24 h", not "kept 1 d")."""
    for unit, size in _SHOWN_UNITS:
        if seconds >= (2 * size if unit == "d" else size):
            return f"{round(seconds / size, 1):g} {unit}"
    return f"{seconds:.2g} s"


@dataclass(frozen=True)
class ServerSettings:
    """Everything the service needs besides the host and port (those are uvicorn's)."""

    data_dir: Path = field(default_factory=default_data_dir)
    model: str = HUB_REPO
    size: str = "xxl"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # device, dtype, accel, ...
    max_queue: int = 16  # jobs waiting; the running one is not counted
    max_upload_bytes: int = 2048 * MIB  # a ten-minute 1080p clip with room to spare
    video_limits: VideoLimits = field(default_factory=VideoLimits)
    job_timeout_s: float = 600.0
    result_ttl_s: float = 24 * 3600.0
    record_ttl_s: float = 30 * 86400.0  # expired rows, after their files went
    cleanup_interval_s: float = 60.0
    min_free_bytes: int = 1024 * MIB  # below this, submissions get 507 and /v1/ready says no
    shutdown_timeout_s: float = 30.0  # SIGTERM: finish or re-queue the running job by then
    client_timeout_s: float = 30.0  # a client silent this long mid-request is dropped
    max_connections: int = 64  # open HTTP connections; more get 503
    default_steps: int = DEFAULT_STEPS
    max_samples: int = 6  # the release's UI offers 1-6
    api_token: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names taken without a token, besides localhost
    # One worker (a pipeline and its thread) per device; () : one, on the runtime's device.
    devices: tuple[torch.device, ...] = ()
    batch_rows: int | None = None  # transformer rows a batch may fill; None: the row budget
    batch_wait_s: float = 0.0  # how long a batch's first job waits for companions
    # Video jobs' clips: decoded by the worker (threads), or in processes ahead of their claim
    # (`server.prefetch`); None: `DecodeIn.default_for(runtime)`, processes on a GPU.
    decode_in: DecodeIn | None = None
    decode_workers: int = DEFAULT_DECODE_WORKERS  # decoding processes

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.decode_in is None:
            object.__setattr__(self, "decode_in", DecodeIn.default_for(self.runtime))
        if self.decode_workers < 1:
            raise ConfigError(f"decode workers must be at least 1, got {self.decode_workers}")
        if self.max_queue < 1:
            raise ConfigError(f"max queue must be at least 1, got {self.max_queue}")
        if self.max_upload_bytes < 1:
            raise ConfigError("max upload size must be positive")
        if self.min_free_bytes < 0 or self.max_connections < 1:
            raise ConfigError("free-space threshold and connection cap must be positive")
        for name in ("job_timeout_s", "result_ttl_s", "record_ttl_s", "cleanup_interval_s",
                     "shutdown_timeout_s", "client_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1 <= self.default_steps <= MAX_STEPS:
            raise ConfigError(f"default steps must be between 1 and {MAX_STEPS}")
        if not 1 <= self.max_samples <= MAX_SAMPLES:
            raise ConfigError(f"max samples must be between 1 and {MAX_SAMPLES}")
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ConfigError(f"batch rows must be at least 1, got {self.batch_rows}")
        if not 0.0 <= self.batch_wait_s <= MAX_BATCH_WAIT_S:
            raise ConfigError(f"batch wait must be between 0 and {MAX_BATCH_WAIT_S * 1000:g} ms, "
                              f"got {self.batch_wait_s * 1000:g} ms")
        gpus = [d for d in self.devices if d.type == "cuda"]
        if len(set(gpus)) < len(gpus):
            raise ConfigError("a GPU is listed twice: each runs one worker (list each once)")

    @property
    def runtimes(self) -> tuple[RuntimeConfig, ...]:
        """The runtime of each worker: the configured one, on each device in turn."""
        if not self.devices:
            return (self.runtime,)
        return tuple(replace(self.runtime, device=device) for device in self.devices)
