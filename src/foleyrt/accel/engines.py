"""Where TensorRT engines are kept: the cache key, the JSON sidecar beside a plan, and the
engine cache with its lookups (by key for a build, by request for a run). The builder
(`export.tensorrt`) writes it, the engine denoiser (`accel.tensorrt`) reads it.

An engine is valid for one graph file, precision, calibration, profile, GPU architecture,
TensorRT version and optimisation level: `EngineKey`, whose digest names the files
`<graph>-<precision>-<digest16>.plan|.json` in the cache directory (`FOLEYRT_ENGINE_CACHE` or
`~/.cache/foleyrt/engines`). The sidecar JSON holds the key plus what informs but does not
change the engine (GPU name, build time, model config digest, source); a lookup only trusts a
plan whose sidecar holds the same key. One timing cache per GPU architecture and TensorRT
version sits beside them and is shared by every build. None of this needs TensorRT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from foleyrt.accel.engine_io import VELOCITY
from foleyrt.atomic import write_atomic
from foleyrt.errors import ConfigError
from foleyrt.version import __version__

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "foleyrt" / "engines"


class DimRange(NamedTuple):
    """min / opt / max of one dynamic axis in an engine's optimisation profile."""

    min: int
    opt: int
    max: int

    def covers(self, value: int) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class BuildEnv:
    """The GPU and TensorRT an engine is built for (engines are not portable across them)."""

    gpu_arch: str  # e.g. "sm_90"
    gpu_name: str
    tensorrt_version: str


@dataclass(frozen=True)
class EngineKey:
    """Everything that changes the engine; its digest is the cache key."""

    graph: str
    onnx_sha256: str  # the graph file and its external data
    weights_sha256: str  # of the source weights, as recorded at export
    precision: str
    calibration_sha256: str | None
    profile: dict[str, DimRange]
    gpu_arch: str
    tensorrt_version: str
    optimization_level: int

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EngineKey:
        profile = {k: DimRange(*v) for k, v in values["profile"].items()}
        return cls(**{**values, "profile": profile})


@dataclass(frozen=True)
class EngineSidecar:
    """The JSON beside a plan: its key, plus what informs but does not change it."""

    key: EngineKey
    config_sha256: str  # the model configuration the graph was exported from
    source: str  # where the exported weights came from
    gpu_name: str
    built_at: str  # UTC, ISO 8601
    build_seconds: float
    foleyrt_version: str = __version__

    def to_json(self) -> str:
        return json.dumps({"cache_key": self.key.digest(), **dataclasses.asdict(self)}, indent=2,
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineSidecar:
        values = json.loads(text)
        digest = values.pop("cache_key")
        sidecar = cls(**{**values, "key": EngineKey.from_dict(values["key"])})
        if sidecar.key.digest() != digest:
            raise ValueError("cache key does not match the sidecar's fields")
        return sidecar

    @classmethod
    def read(cls, path: Path) -> EngineSidecar:
        try:
            return cls.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid engine sidecar ({exc})") from None


class EngineCache:
    """Plans and sidecars in one directory, named by their key's digest."""

    def __init__(self, root: str | Path | None = None) -> None:
        default = os.environ.get("FOLEYRT_ENGINE_CACHE") or DEFAULT_CACHE
        self.root = Path(root or default).expanduser()

    def plan_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.graph}-{key.precision}-{key.digest()[:16]}.plan"

    def timing_cache_path(self, env: BuildEnv) -> Path:
        return self.root / f"timing-{env.gpu_arch}-trt{env.tensorrt_version}.cache"

    def lookup(self, key: EngineKey) -> Path | None:
        """The plan built for `key`, if present and its sidecar agrees."""
        plan = self.plan_path(key)
        sidecar = plan.with_suffix(".json")
        if not (plan.is_file() and sidecar.is_file()):
            return None
        try:
            stored = EngineSidecar.read(sidecar)
        except ConfigError as exc:
            log.warning("ignoring cached engine: %s", exc)
            return None
        return plan if stored.key == key else None

    def store(self, plan: bytes, sidecar: EngineSidecar) -> Path:
        """Write the plan, then its sidecar (a plan without one is never used)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.plan_path(sidecar.key)
        write_atomic(path, plan)
        write_atomic(path.with_suffix(".json"), sidecar.to_json())
        return path

    def find(self, match: Callable[[EngineSidecar], bool]) -> Path | None:
        """The most recently built plan whose sidecar satisfies `match`."""
        best: tuple[str, Path] | None = None
        for sidecar_path in self.root.glob("*.json"):
            plan = sidecar_path.with_suffix(".plan")
            try:
                sidecar = EngineSidecar.read(sidecar_path)
            except ConfigError:
                continue
            usable = plan.is_file() and plan == self.plan_path(sidecar.key) and match(sidecar)
            if usable and (best is None or sidecar.built_at > best[0]):
                best = (sidecar.built_at, plan)
        return best[1] if best else None


def uncovered(key: EngineKey, dims: Mapping[str, int]) -> list[str]:
    """The axes of a request outside an engine's profile, as `name=value (min..max)`."""
    return [f"{name}={dims[name]} ({r.min}..{r.max})" for name, r in key.profile.items()
            if name in dims and not r.covers(dims[name])]


def select_engine(
    cache: EngineCache, env: BuildEnv, config_digest: str, dims: Mapping[str, int],
    precision: str | None = None,
) -> Path:
    """The newest velocity plan for this GPU, TensorRT, model configuration
    (`config.config_digest`) and request."""

    def match(s: EngineSidecar) -> bool:
        k = s.key
        return (k.graph == VELOCITY and s.config_sha256 == config_digest
                and (k.gpu_arch, k.tensorrt_version) == (env.gpu_arch, env.tensorrt_version)
                and precision in (None, k.precision) and not uncovered(k, dims))

    plan = cache.find(match)
    if plan is None:
        shape = ", ".join(f"{k}={v}" for k, v in dims.items())
        raise ConfigError(f"no TensorRT engine in {cache.root} fits this model on "
                          f"{env.gpu_arch} with TensorRT {env.tensorrt_version} for {shape}; "
                          "build one with 'foleyrt export tensorrt'")
    return plan
