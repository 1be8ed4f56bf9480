"""TensorRT engines from the exported graphs (the engine behind `--accel tensorrt` is
`accel.tensorrt`, which reads what this writes).

Build: exported ONNX (`export.onnx`) -> [Q/DQ copy for int8/fp8, `export.qdq`] -> parse -> one
optimisation profile + precision flags + timing cache -> `build_serialized_network` -> plan +
JSON sidecar in the engine cache (`accel.engines`). Only the last steps need TensorRT (and a
GPU); what to build (`export.build_config`: profiles, precision flags) and which engine that is
(`engine_key`) are plain functions, tested without it, as is `network_inputs`.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foleyrt.accel.calibration import read_calibration
from foleyrt.accel.engine_io import VELOCITY
from foleyrt.accel.engines import BuildEnv, EngineCache, EngineKey, EngineSidecar
from foleyrt.accel.tensorrt import current_env, require_tensorrt
from foleyrt.atomic import write_atomic
from foleyrt.config import config_digest
from foleyrt.errors import ConfigError
from foleyrt.export.build_config import (
    BUILDER_FLAGS,
    QUANTIZED,
    BuildConfig,
    Shapes,
    dim_ranges,
    profile_shapes,
)
from foleyrt.export.onnx import GraphInfo, read_graph
from foleyrt.export.qdq import insert_qdq

log = logging.getLogger(__name__)


def file_sha256(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of `paths`, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


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
        modules = insert_qdq(info.path, onnx, read_calibration(build.calibration).amax,
                             build.precision)
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
        key=key, config_sha256=config_digest(info.config), source=info.metadata.get("source", ""),
        gpu_name=env.gpu_name, built_at=datetime.datetime.now(datetime.UTC).isoformat(),
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
    write_atomic(timing_cache, bytes(cache.serialize()))
    return bytes(plan)
