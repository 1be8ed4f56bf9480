"""TensorRT engines from the exported graphs, and the engine behind `--accel tensorrt`.

Build: exported ONNX (`export.onnx`) -> [Q/DQ copy for int8/fp8, `export.qdq`] -> parse -> one
optimisation profile + precision flags + timing cache -> `build_serialized_network` -> plan +
JSON sidecar in the engine cache. Only the last steps need TensorRT (and a GPU); what to build
(`export.build_config`: profiles, precision flags) and which engine that is (`export.engine_cache`:
cache key, sidecar, lookups) are plain functions, tested without it, as is `network_inputs`.

Runtime. `TensorRTDenoiser.model_fn(prepared)` is the eager `(x, t) -> v` call on an engine:
the prepared conditions are flattened by the same function that defines the graph's inputs
(`condition_feeds`), cast to the engine's input types and bound per step; the output is a
fresh tensor per step. No TensorRT number has been measured in this repository.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foleyrt.errors import ConfigError, DependencyError

# DimRange, ProfileSpec and dim_ranges are re-exported: callers import them from here, where
# they lived before `build_config` was split off.
from foleyrt.export.build_config import (  # noqa: F401
    BUILDER_FLAGS,
    QUANTIZED,
    BuildConfig,
    DimRange,
    ProfileSpec,
    Shapes,
    dim_ranges,
    profile_shapes,
)
from foleyrt.export.engine_cache import (
    BuildEnv,
    EngineCache,
    EngineKey,
    EngineSidecar,
    atomic_write,
    config_sha256,
    engine_key,
    select_engine,
    uncovered,
)
from foleyrt.export.graph import AUDIO_LEN, BATCH, TEXT_LEN, VELOCITY, VISUAL_LEN, condition_feeds
from foleyrt.export.onnx import GraphInfo, read_graph
from foleyrt.export.qdq import insert_qdq, read_amax
from foleyrt.models.dit import FoleyDiT, PreparedConditions
from foleyrt.pipeline.sampling import ModelFn

log = logging.getLogger(__name__)

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


def current_env(trt: Any) -> BuildEnv:
    if not torch.cuda.is_available():
        raise ConfigError("TensorRT engines are built for and run on a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability()
    return BuildEnv(f"sm_{major}{minor}", torch.cuda.get_device_name(), trt.__version__)


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
    atomic_write(timing_cache, bytes(cache.serialize()))
    return bytes(plan)


# --------------------------------------------------------------------------------------------
# Runtime: the denoiser call on an engine
# --------------------------------------------------------------------------------------------


def request_dims(prepared: PreparedConditions) -> dict[str, int]:
    """The velocity graph's axes for one request's prepared conditions."""
    return {BATCH: prepared.visual.shape[0], AUDIO_LEN: prepared.audio_len,
            VISUAL_LEN: prepared.visual.shape[1], TEXT_LEN: prepared.text_k[0].shape[2]}


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
