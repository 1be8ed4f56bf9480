"""TensorRT engines from the exported graphs, and the engine behind `--accel tensorrt`.

Build: exported ONNX (`export.onnx`) -> [Q/DQ copy for int8/fp8] -> parse -> one optimisation
profile + precision flags + timing cache -> `build_serialized_network` -> plan + JSON sidecar in
the engine cache. Only the last steps need TensorRT (and a GPU); the profile shapes, flags,
Q/DQ graph, cache key and cache lookup are plain functions (`engine_key`, `network_inputs`,
`EngineCache`), tested without it.

Profiles. Users think in seconds: `ProfileSpec` takes min/opt/max durations and CFG rows, and
the axes of the graph follow from the pipeline's own length rules (`request_lengths`):
`audio_len` (latent frames), `visual_len` (SigLIP2 frames), `text_len` (the CLAP length, fixed),
`batch` (rows: two per sample with guidance). Sync tokens are not an engine axis: `prepare`
resamples them to the audio frames before the loop.

Precision (weakly typed network; TensorRT 10.12+ deprecates this for strong typing, still
supported through 10.x):
    fp32        no flag (TensorRT's default TF32 for matmuls)
    fp16, bf16  that flag: TensorRT picks per layer between it and fp32
    int8, fp8   a Q/DQ copy of the graph from a calibration file (below) + INT8|FP8 and BF16:
                the calibrated GEMMs quantised, everything else bf16 (the release's dtype)

Calibration file (written by `foleyrt calibrate`, read by `--precision int8|fp8`):
    a safetensors file whose header metadata holds `{"format": "foleyrt.amax", "version": "1"}`
    (other metadata keys are free, e.g. the number of calibration samples), and one tensor per
    calibrated GEMM module, keyed by the module's name in `FoleyDiT.named_modules()` (e.g.
    `triple_blocks.0.audio_self_attn_qkv`, `single_blocks.3.linear2.w1`): float32, shape `[]`
    (or `[1]`), positive: the max |x| over the calibration set of the module's input as the
    GEMM sees it (after the module's own cast to its weight dtype). Modules are `Linear`s and
    `TemporalConv`s (a temporal conv's unfolded window has the same range: padding only adds
    zeros). Entries for modules that `prepare` runs once per request (text K/V, visual and
    sync projections) are allowed and ignored: they are not in the step graph. Weights need no
    entry: their scales come from the weights (INT8 per output channel, FP8 per tensor).
    Modules without an entry stay bf16.

Engine cache. An engine is valid for one graph file, precision, calibration, profile, GPU
architecture, TensorRT version and optimisation level: `EngineKey`, whose digest names the
files `<graph>-<precision>-<digest16>.plan|.json` in the cache directory (`FOLEYRT_ENGINE_CACHE`
or `~/.cache/foleyrt/engines`). The sidecar JSON holds the key plus what informs but does not
change the engine (GPU name, build time, model config digest, source); a lookup only trusts a
plan whose sidecar holds the same key. One timing cache per GPU architecture and TensorRT
version sits beside them and is shared by every build.

Runtime. `TensorRTDenoiser.model_fn(prepared)` is the eager `(x, t) -> v` call on an engine:
the prepared conditions are flattened by the same function that defines the graph's inputs
(`condition_feeds`), cast to the engine's input types and bound per step; the output is a
fresh tensor per step. No TensorRT number has been measured in this repository.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from foleyrt import __version__
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.export.onnx import (
    AUDIO_LEN,
    BATCH,
    TEXT_LEN,
    VELOCITY,
    VISUAL_LEN,
    GraphInfo,
    GraphInput,
    condition_feeds,
    insert_qdq,
    read_amax,
    read_graph,
    request_lengths,
)
from foleyrt.models.dit import FoleyDiT, PreparedConditions
from foleyrt.pipeline.sampling import ModelFn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
QUANTIZED = ("fp8", "int8")
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (), "fp16": ("FP16",), "bf16": ("BF16",),
    "fp8": ("FP8", "BF16"), "int8": ("INT8", "BF16"),
}
DEFAULT_CACHE = Path.home() / ".cache" / "foleyrt" / "engines"
OUTPUT = "velocity"


def require_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise DependencyError(
            "TensorRT is not installed: pip install 'foleyrt[tensorrt]' on a machine with an "
            "NVIDIA GPU (the engine is built for, and runs on, that GPU)"
        ) from None
    return tensorrt


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


class DimRange(NamedTuple):
    min: int
    opt: int
    max: int

    def covers(self, value: int) -> bool:
        return self.min <= value <= self.max


def _ordered(name: str, values: Sequence[float]) -> None:
    if len(values) != 3 or not 0 < values[0] <= values[1] <= values[2]:
        raise ConfigError(f"{name} must be three positive values MIN <= OPT <= MAX, "
                          f"got {list(values)}")


@dataclass(frozen=True)
class ProfileSpec:
    """The requests an engine serves: durations in seconds and CFG rows, each min/opt/max."""

    seconds: tuple[float, float, float] = (1.0, 8.0, 15.0)
    rows: tuple[int, int, int] = (1, 2, 8)

    def __post_init__(self) -> None:
        _ordered("profile durations", self.seconds)
        _ordered("profile rows", self.rows)


def dim_ranges(kind: str, spec: ProfileSpec, text_length: int) -> dict[str, DimRange]:
    """Range of every dynamic axis of a `kind` graph (velocity or decoder) for `spec`."""
    lengths = [request_lengths(s) for s in spec.seconds]  # (Nv, Ns, Na) per duration
    ranges = {BATCH: DimRange(*spec.rows), AUDIO_LEN: DimRange(*(n[2] for n in lengths))}
    if kind == VELOCITY:
        ranges[VISUAL_LEN] = DimRange(*(n[0] for n in lengths))
        ranges[TEXT_LEN] = DimRange(text_length, text_length, text_length)
    return ranges


Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def profile_shapes(
    inputs: Iterable[GraphInput], ranges: Mapping[str, DimRange]
) -> dict[str, Shapes]:
    """min/opt/max shape of every graph input (what `IOptimizationProfile.set_shape` takes)."""
    shapes = {}
    for inp in inputs:
        unknown = [d for d in inp.dims if isinstance(d, str) and d not in ranges]
        if unknown:
            raise ConfigError(f"input {inp.name!r} has axis {unknown[0]!r} with no profile range")
        shapes[inp.name] = tuple(  # type: ignore[assignment]
            tuple(ranges[d][i] if isinstance(d, str) else d for d in inp.dims) for i in range(3)
        )
    return shapes


# --------------------------------------------------------------------------------------------
# Build configuration, engine key, sidecar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    precision: str = "bf16"
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    calibration: Path | None = None  # amax file, for int8 / fp8
    optimization_level: int = 3  # TensorRT's builder optimisation level, 0..5
    workspace_gib: float | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None  # None: the engine cache's file for this GPU + TensorRT

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of "
                              f"{', '.join(PRECISIONS)}")
        if (self.precision in QUANTIZED) != (self.calibration is not None):
            raise ConfigError("--calibration is needed by, and only by, int8 and fp8 engines")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimisation level must be 0..5, got {self.optimization_level}")


@dataclass(frozen=True)
class BuildEnv:
    """The GPU and TensorRT an engine is built for (engines are not portable across them)."""

    gpu_arch: str  # e.g. "sm_90"
    gpu_name: str
    tensorrt_version: str


def current_env(trt: Any) -> BuildEnv:
    if not torch.cuda.is_available():
        raise ConfigError("TensorRT engines are built for and run on a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability()
    return BuildEnv(f"sm_{major}{minor}", torch.cuda.get_device_name(), trt.__version__)


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


def file_sha256(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of `paths`, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def config_sha256(config: Mapping[str, Any]) -> str:
    """Digest of a model configuration (as the exported graph's metadata stores it)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def engine_key(info: GraphInfo, build: BuildConfig, env: BuildEnv) -> EngineKey:
    """The key of the engine `build` makes from `info` on `env`. Reads every byte of the graph
    (tens of seconds for an XXL export): the file's name alone would not see a re-export."""
    if info.metadata.get("quantized"):
        raise ConfigError(f"{info.path} is already quantised; give the exported graph, "
                          "--precision int8/fp8 quantises it")
    if build.calibration is not None and not build.calibration.is_file():
        raise ConfigError(f"calibration file not found: {build.calibration}")
    text_length = info.config.get("text_length", 0)
    ranges = dim_ranges(info.kind, build.profile, text_length)
    calibration = file_sha256([build.calibration]) if build.calibration else None
    return EngineKey(
        graph=info.kind, onnx_sha256=file_sha256(info.files),
        weights_sha256=info.metadata.get("weights_sha256", ""), precision=build.precision,
        calibration_sha256=calibration, profile=dict(sorted(ranges.items())),
        gpu_arch=env.gpu_arch, tensorrt_version=env.tensorrt_version,
        optimization_level=build.optimization_level,
    )


@dataclass(frozen=True)
class NetworkInputs:
    """What the TensorRT builder is given."""

    onnx: Path  # the graph to parse (a Q/DQ copy beside the export for int8 / fp8)
    shapes: dict[str, Shapes]
    flags: tuple[str, ...]  # names of `tensorrt.BuilderFlag` members


def network_inputs(info: GraphInfo, build: BuildConfig, key: EngineKey) -> NetworkInputs:
    """Graph, profile shapes and flags for the engine of `key`; for int8 / fp8 this writes the
    Q/DQ copy of the graph (named by the calibration's digest, beside the export)."""
    onnx = info.path
    if build.precision in QUANTIZED:
        if info.kind != VELOCITY:
            raise ConfigError("int8 / fp8 engines are for the transformer's velocity graph")
        assert build.calibration is not None and key.calibration_sha256 is not None
        onnx = info.path.with_name(
            f"{info.path.stem}.{build.precision}-{key.calibration_sha256[:12]}.onnx")
        modules = insert_qdq(info.path, onnx, read_amax(build.calibration), build.precision)
        log.info("%s: %d GEMMs quantised to %s", onnx.name, len(modules), build.precision)
    shapes = profile_shapes(info.inputs, key.profile)
    return NetworkInputs(onnx, shapes, BUILDER_FLAGS[build.precision])


# --------------------------------------------------------------------------------------------
# Engine cache
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


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
        _atomic_write(path, plan)
        _atomic_write(path.with_suffix(".json"), sidecar.to_json())
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


# --------------------------------------------------------------------------------------------
# Build (needs TensorRT and a GPU)
# --------------------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path, build: BuildConfig, cache: EngineCache | None = None,
    *, force: bool = False,
) -> Path:
    """The cached plan for this graph and build, built first if missing (or `force`)."""
    trt = require_tensorrt()
    cache = cache or EngineCache()
    env = current_env(trt)
    info = read_graph(onnx_path)
    key = engine_key(info, build, env)
    if not force and (hit := cache.lookup(key)) is not None:
        log.info("engine cache hit: %s", hit)
        return hit
    network = network_inputs(info, build, key)
    timing_cache = build.timing_cache or cache.timing_cache_path(env)
    start = time.perf_counter()
    plan = serialize_network(trt, network, build, timing_cache)
    sidecar = EngineSidecar(
        key=key, config_sha256=config_sha256(info.config), source=info.metadata.get("source", ""),
        gpu_name=env.gpu_name, built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        build_seconds=round(time.perf_counter() - start, 1),
    )
    return cache.store(plan, sidecar)


def serialize_network(trt: Any, network: NetworkInputs, build: BuildConfig,
                      timing_cache: Path) -> bytes:
    """Parse, configure and build; the timing cache is read first and written back after."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    graph = builder.create_network(0)
    parser = trt.OnnxParser(graph, logger)
    if not parser.parse_from_file(str(network.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {network.onnx}: {errors}")
    config = builder.create_builder_config()
    for flag in network.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.builder_optimization_level = build.optimization_level
    if build.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                     int(build.workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in network.shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch: a foreign cache is an error
    plan = builder.build_serialized_network(graph, config)
    if plan is None:
        raise ConfigError(f"TensorRT could not build an engine from {network.onnx} "
                          "(its log above says why)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(timing_cache, bytes(cache.serialize()))
    return bytes(plan)


# --------------------------------------------------------------------------------------------
# Runtime: the denoiser call on an engine
# --------------------------------------------------------------------------------------------


def request_dims(prepared: PreparedConditions) -> dict[str, int]:
    """The velocity graph's axes for one request's prepared conditions."""
    return {BATCH: prepared.visual.shape[0], AUDIO_LEN: prepared.audio_len,
            VISUAL_LEN: prepared.visual.shape[1], TEXT_LEN: prepared.text_k[0].shape[2]}


def uncovered(key: EngineKey, dims: Mapping[str, int]) -> list[str]:
    """The axes of a request outside an engine's profile, as `name=value (min..max)`."""
    return [f"{name}={dims[name]} ({r.min}..{r.max})" for name, r in key.profile.items()
            if name in dims and not r.covers(dims[name])]


def select_engine(
    cache: EngineCache, env: BuildEnv, config_digest: str, dims: Mapping[str, int],
    precision: str | None = None,
) -> Path:
    """The newest velocity plan for this GPU, TensorRT, model configuration (`config_sha256`)
    and request."""

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


class TensorRTDenoiser:
    """A velocity engine with the eager module's per-step call (`model_fn`)."""

    def __init__(self, plan: str | Path, device: torch.device | str = "cuda") -> None:
        trt = require_tensorrt()
        self.plan = Path(plan)
        self.sidecar = EngineSidecar.read(self.plan.with_suffix(".json"))
        env = current_env(trt)
        key = self.sidecar.key
        if (key.gpu_arch, key.tensorrt_version) != (env.gpu_arch, env.tensorrt_version):
            raise ConfigError(f"{self.plan} was built for {key.gpu_arch} with TensorRT "
                              f"{key.tensorrt_version}, this is {env.gpu_arch} with "
                              f"{env.tensorrt_version}: rebuild it with 'foleyrt export tensorrt'")
        self.device = torch.device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise ConfigError(f"{self.plan}: TensorRT could not load this engine")
        self.context = self.engine.create_execution_context()
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16,
                    trt.bfloat16: torch.bfloat16, trt.int32: torch.int32, trt.int64: torch.int64}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def model_fn(self, prepared: PreparedConditions) -> ModelFn:
        """The sampler's step function for one request: conditions cast once, bound every
        step (the engine computes the timestep work itself, so `step` is not needed)."""
        bad = uncovered(self.sidecar.key, request_dims(prepared))
        if bad:
            raise ConfigError(f"request outside the engine's profile ({', '.join(bad)}): build "
                              "an engine for these lengths with 'foleyrt export tensorrt'")
        conds = {name: t.to(self.device, self.dtypes[name]).contiguous()
                 for name, t in condition_feeds(prepared).items()}
        ctx = self.context

        def fn(x: Tensor, t: Tensor, step: int) -> Tensor:
            feeds = {"x": x.to(self.dtypes["x"]).contiguous(),
                     "t": t.to(self.dtypes["t"]).contiguous(), **conds}
            for name, tensor in feeds.items():
                ctx.set_input_shape(name, tuple(tensor.shape))
                ctx.set_tensor_address(name, tensor.data_ptr())
            out = torch.empty(tuple(ctx.get_tensor_shape(OUTPUT)), dtype=self.dtypes[OUTPUT],
                              device=self.device)
            ctx.set_tensor_address(OUTPUT, out.data_ptr())
            if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.plan.name}")
            return out

        return fn


_denoisers: dict[Path, TensorRTDenoiser] = {}


def engine_model_fn(
    dit: FoleyDiT, prepared: PreparedConditions, *, plan: str | Path | None = None,
    precision: str | None = None, cache: EngineCache | None = None,
) -> ModelFn:
    """`--accel tensorrt`: the step function on `plan`, or on the newest cached engine for
    `dit`'s configuration and this request. Loaded engines are kept for the process (an XXL
    engine takes seconds to deserialise). The engine carries its own copy of the weights:
    the sidecar's `key.weights_sha256` names them."""
    config = config_sha256(dataclasses.asdict(dit.config))
    if plan is None:
        env = current_env(require_tensorrt())
        plan = select_engine(cache or EngineCache(), env, config, request_dims(prepared),
                             precision)
    path = Path(plan).resolve()
    denoiser = _denoisers.get(path)
    if denoiser is None:
        denoiser = _denoisers[path] = TensorRTDenoiser(path, prepared.visual.device)
    if denoiser.sidecar.config_sha256 != config:
        raise ConfigError(f"{path} was exported from another model configuration than the "
                          "loaded transformer's")
    return denoiser.model_fn(prepared)
