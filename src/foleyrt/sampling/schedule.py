"""The release scheduler's tables (spec/pipeline.md §6): sigmas from PyTorch's fp32
`linspace`, optionally shifted, and model timesteps `sigma * 1000`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.config import DiffusionConfig
from foleyrt.errors import InputError

NUM_TRAIN_TIMESTEPS = 1000
FLUX_SHIFT_TOKENS = (256, 4096)


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
