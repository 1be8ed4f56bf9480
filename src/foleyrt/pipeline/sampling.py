"""Flow-matching Euler sampler with classifier-free guidance (spec/pipeline.md §6).

Pure functions over a `ModelFn` (`(x_rows, t_rows, step) -> raw velocity`), so the eager module, a
compiled graph or an exported engine drop in unchanged. The numbers follow the release: sigmas
from PyTorch's fp32 `linspace`, model timesteps `sigma * 1000`, guidance and the Euler update in
fp32, unconditional rows first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.config import DiffusionConfig
from foleyrt.errors import Cancelled, InputError

NUM_TRAIN_TIMESTEPS = 1000
FLUX_SHIFT_TOKENS = (256, 4096)

# (x_rows, t_rows, step index) -> raw velocity; the index lets an accelerated function use
# work precomputed for the whole schedule.
ModelFn = Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class Schedule:
    """`sigmas` (steps+1, fp32, 1 -> 0 for the release) and model `timesteps` (steps)."""

    sigmas: Tensor
    timesteps: Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(self.sigmas.to(device), self.timesteps.to(device))


def flow_schedule(steps: int, cfg: DiffusionConfig, n_tokens: int | None = None) -> Schedule:
    """The release scheduler's `set_timesteps(steps)` tables."""
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    sigmas = torch.linspace(1, 0, steps + 1)
    if cfg.sample_use_flux_shift:
        if n_tokens is None:
            raise InputError("the flux time shift needs the number of latent tokens")
        (x1, x2), (y1, y2) = FLUX_SHIFT_TOKENS, (cfg.flux_base_shift, cfg.flux_max_shift)
        mu = (y2 - y1) / (x2 - x1) * n_tokens + (y1 - (y2 - y1) / (x2 - x1) * x1)
        sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    elif cfg.sample_flow_shift != 1.0:
        shift = cfg.sample_flow_shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if not cfg.flow_reverse:
        sigmas = 1 - sigmas
    timesteps = (sigmas[:-1] * NUM_TRAIN_TIMESTEPS).to(torch.float32)
    return Schedule(sigmas, timesteps)


@dataclass
class StepEvent:
    """Passed to `on_step` after every step; raise `Cancelled` (or return True) to stop."""

    index: int
    total: int
    timestep: Tensor
    model_out: Tensor  # raw model output of all rows (uncond first)
    guided: Tensor  # velocity used for the update
    latent: Tensor  # latent after the step (fp32)


StepCallback = Callable[[StepEvent], bool | None]


def guidance_active(scale: float) -> bool:
    """CFG runs iff the scale is above 1 (the release's rule)."""
    return scale > 1.0


def denoise(
    model_fn: ModelFn,
    noise: Tensor,
    schedule: Schedule,
    guidance_scale: float,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Integrate from noise (sigma 1) to data (sigma 0). With guidance the model sees
    `[x; x]` (rows for the unconditional branch first) and `v = v_u + s (v_c - v_u)`.

    `noise` is used as given (the release rounds it to the transformer dtype); latents are fp32
    after the first update, as in the release."""
    cfg = guidance_active(guidance_scale)
    sigmas = schedule.sigmas.to(noise.device)
    timesteps = schedule.timesteps.to(noise.device)
    dts = sigmas[1:] - sigmas[:-1]
    x = noise
    rows = 2 * noise.shape[0] if cfg else noise.shape[0]
    for i in range(schedule.steps):
        t = timesteps[i].expand(rows)
        model_out = model_fn(torch.cat([x, x]) if cfg else x, t, i).float()
        if cfg:
            v_uncond, v_cond = model_out.chunk(2)
            guided = v_uncond + guidance_scale * (v_cond - v_uncond)
        else:
            guided = model_out
        x = x.float() + guided * dts[i]
        if on_step is not None and on_step(
            StepEvent(i, schedule.steps, timesteps[i], model_out, guided, x)
        ):
            raise Cancelled("generation cancelled")
    return x
