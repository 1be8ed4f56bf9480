"""`apply(dit, runtime)`: the transformer as a `Denoiser` for a runtime, built by one ordered
list of recipes.

Each recipe is a small function over the build so far, with its reason beside it; it runs when
the runtime asks for it, and any of them can be switched off by name (`disable=`), so an
ablation is one loop over `RECIPES`. Order matters: quantised GEMMs first (the fused kernels
write their input formats), then the blocks' streaming or fusion, then compilation (it traces
what the blocks are by then), then the CUDA graphs over whole forwards; TensorRT replaces the
PyTorch forward altogether. State lives in what the recipes return (the denoiser and its
caches), never on the module.

Model offloading (`--offload model`) is not a recipe: it moves every network, so the pipeline
places it (`pipeline.models`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from foleyrt.accel import compile as compiled
from foleyrt.accel.cudagraph import GraphedDenoiser
from foleyrt.accel.fused import fuse_blocks
from foleyrt.accel.kernels import triton_available
from foleyrt.accel.offload import StreamedDenoiser, stream_blocks
from foleyrt.accel.quant import quantize_
from foleyrt.accel.runtime import AccelMode, OffloadKind, RuntimeConfig
from foleyrt.accel.tensorrt import EngineDenoiser
from foleyrt.errors import ConfigError
from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.denoiser import Denoiser, ModuleDenoiser

log = logging.getLogger(__name__)


@dataclass
class Build:
    """What the recipes work on: the transformer (transformed in place), the denoiser so far,
    and what the loading stage handed over (fp8-stored weights, preloaded compiled graphs)."""

    model: FoleyDiT
    runtime: RuntimeConfig
    denoiser: Denoiser
    stored_fp8: frozenset[str] = frozenset()
    graphs: compiled.BlockGraphs | None = None
    applied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Recipe:
    name: str
    reason: str
    wanted: Callable[[RuntimeConfig], bool]
    run: Callable[[Build], None]


def _quantize(build: Build) -> None:
    runtime = build.runtime
    assert runtime.precision is not None
    quantize_(build.model, runtime.precision.value, calibration=runtime.calibration,
              prequantized=build.stored_fp8)


def _stream(build: Build) -> None:
    streamer = stream_blocks(build.model, build.runtime.offload.slots, build.runtime.device)
    build.denoiser = StreamedDenoiser(build.model, streamer)


def _fuse(build: Build) -> None:
    fuse_blocks(build.model)


def _compile(build: Build) -> None:
    graphs = build.graphs or compiled.block_graphs(build.runtime.device)
    compiled.compile_blocks(build.model, graphs)


def _graph(build: Build) -> None:
    build.denoiser = GraphedDenoiser(build.model)


def _engine(build: Build) -> None:
    precision = build.runtime.precision
    build.denoiser = EngineDenoiser(build.model, build.runtime.engine,
                                    None if precision is None else precision.value)


def _compiling(runtime: RuntimeConfig) -> bool:
    return runtime.accel is AccelMode.COMPILE


RECIPES: tuple[Recipe, ...] = (
    Recipe("precision", "fp8/int8 GEMMs: half the weight bytes, FP8/INT8 tensor cores",
           lambda rt: rt.quantized, _quantize),
    Recipe("stream-blocks", "--offload blocks:N: blocks stream through N GPU slots, so the GPU "
           "never holds the whole transformer", lambda rt: rt.offload.kind is OffloadKind.BLOCKS,
           _stream),
    Recipe("fusion", "hand-written Triton kernels for the blocks' memory-bound chains, "
           "which Inductor runs at half the bandwidth with dynamic shapes",
           lambda rt: _compiling(rt) and triton_available(), _fuse),
    Recipe("compile", "Inductor-compiled blocks (three graphs serve all 54 blocks, saved on "
           "disk for the next process)", _compiling, _compile),
    Recipe("cuda-graphs", "one graph launch per forward instead of ~2,000 kernel launches; "
           "not with offloading, whose weights move between requests",
           lambda rt: _compiling(rt) and rt.offload.kind is OffloadKind.NONE, _graph),
    Recipe("tensorrt", "the velocity on a TensorRT engine built by `foleyrt export tensorrt`",
           lambda rt: rt.accel is AccelMode.TENSORRT, _engine),
)


def apply(
    dit: FoleyDiT,
    runtime: RuntimeConfig,
    *,
    stored_fp8: frozenset[str] = frozenset(),
    graphs: compiled.BlockGraphs | None = None,
    disable: Collection[str] = (),
) -> Denoiser:
    """`dit` (placed: on its device and compute dtype) transformed by every recipe the runtime
    asks for and `disable` does not name, as the sampler's denoiser. `dit` is the denoiser's
    from then on: apply once per loaded model."""
    unknown = sorted(set(disable) - {r.name for r in RECIPES})
    if unknown:
        raise ConfigError(f"unknown recipe(s) {', '.join(unknown)}; the recipes are "
                          f"{', '.join(r.name for r in RECIPES)}")
    build = Build(dit, runtime, ModuleDenoiser(dit), stored_fp8, graphs)
    for recipe in RECIPES:
        if recipe.wanted(runtime) and recipe.name not in disable:
            recipe.run(build)
            build.applied.append(recipe.name)
    log.debug("transformer recipes: %s", ", ".join(build.applied) or "none")
    return build.denoiser


def preload(runtime: RuntimeConfig) -> compiled.BlockGraphs | None:
    """Where models are about to load: start loading `compile`'s saved block graphs on a
    thread (they are handed to `apply` afterwards); None for other runtimes."""
    if runtime.accel is not AccelMode.COMPILE:
        return None
    graphs = compiled.block_graphs(runtime.device)
    if graphs is not None:
        graphs.load_in_background()
    return graphs
