"""Acceleration recipes: functions that transform a built model or wrap its step function,
never branches inside the model.

Modes:
- `eager`: the module as written (explicit-dtype PyTorch ops; step-invariant work already
  hoisted by `FoleyDiT.prepare`).
- `compile`: Inductor-compiled blocks (dynamic lengths, caches on disk) + a CUDA graph over
  each whole velocity evaluation. Needs CUDA; elsewhere it says so and runs eager.
- `tensorrt`: the velocity on a TensorRT engine built by `foleyrt export tensorrt` (optional
  extra; never a silent fallback).
"""

from __future__ import annotations

import logging

from torch import nn

from foleyrt.config import OffloadPlan, RuntimeConfig, check_accel_mode
from foleyrt.models.dit import FoleyDiT, PreparedConditions
from foleyrt.pipeline.sampling import ModelFn, Schedule

log = logging.getLogger(__name__)


def _effective(mode: str, model: nn.Module) -> str:
    from foleyrt.accel.compile import compile_supported

    check_accel_mode(mode)
    device = next(model.parameters()).device
    if mode == "compile" and not compile_supported(device):
        log.warning("--accel compile needs a CUDA device (have %s): running eager", device)
        return "eager"
    return mode


def preload_compiled(runtime: RuntimeConfig) -> None:
    """Where models are about to load: start loading `compile`'s saved block graphs in the
    background (nothing for other modes, off CUDA, or with streamed blocks, which run eager)."""
    from foleyrt.accel.compile import compile_supported, preload_block_graphs

    if (runtime.accel == "compile" and compile_supported(runtime.device)
            and OffloadPlan.parse(runtime.offload).kind != "blocks"):
        preload_block_graphs(runtime.device)


def apply_accel(model: nn.Module, mode: str) -> nn.Module:
    """Prepare `model` for `mode` in place (compiled blocks for `compile`)."""
    if _effective(mode, model) == "compile" and isinstance(model, FoleyDiT):
        from foleyrt.accel.compile import compile_blocks

        compile_blocks(model)
    return model


def model_fn(
    dit: FoleyDiT, prepared: PreparedConditions, runtime: RuntimeConfig, schedule: Schedule
) -> ModelFn:
    """The per-step velocity function the sampler calls, for the runtime's acceleration."""
    if runtime.accel == "tensorrt":
        from foleyrt.export.tensorrt import engine_model_fn

        return engine_model_fn(dit, prepared, plan=runtime.engine, precision=runtime.precision)
    mode = _effective(runtime.accel, dit)
    offload = OffloadPlan.parse(runtime.offload).kind
    if mode == "compile" and offload == "blocks":
        # Streaming swaps the blocks' weights in hooks that a compiled graph cannot contain.
        log.warning("--offload blocks streams weights between blocks: running eager")
        mode = "eager"
    if mode == "compile":
        from foleyrt.accel.compile import compile_blocks

        compile_blocks(dit)
    # With offloading the weights come back to the GPU at new addresses for every request; a
    # captured graph would replay stale pointers. Compiled blocks, launched per step, are safe.
    if mode == "eager" or offload != "none":
        return lambda x, t, step: dit.velocity(x, t, prepared)
    from foleyrt.accel.cudagraph import GraphCache

    # Kept on the model itself, so the captured graphs and their memory die with it (a
    # registry keyed by the model would keep every model alive through the cache's reference).
    cache = getattr(dit, "_foleyrt_graphs", None)
    if cache is None:
        cache = dit._foleyrt_graphs = GraphCache(dit)  # type: ignore[assignment]
    return cache.model_fn(prepared, schedule.timesteps.to(prepared.visual.device))
