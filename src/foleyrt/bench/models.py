"""Real-size models with random weights and random conditions, for measurements."""

from __future__ import annotations

import torch
from torch import Tensor

from foleyrt.config import ModelSpec
from foleyrt.lengths import SequenceLengths
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import randomize_
from foleyrt.sampling.conditions import Conditions

TEXT_TOKENS = 16  # a short prompt, padded like the release pads [negative, prompt]


@torch.no_grad()
def random_dit(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> FoleyDiT:
    """Built on meta and given values drawn on `device` in `dtype` by the one random rule
    (`randomize_`): billions of parameters in seconds on a GPU, allocated once."""
    with torch.device("meta"):
        dit = FoleyDiT(spec.dit).to(dtype)
    return randomize_(dit, seed, device=device).eval().requires_grad_(False)


def random_conditions(spec: ModelSpec, duration_s: float, device: torch.device,
                      seed: int) -> tuple[Conditions, int]:
    """Conditions of a clip of `duration_s` (random features of the right lengths) and its
    latent length."""
    lengths = SequenceLengths.of_duration(duration_s)
    g = torch.Generator(device).manual_seed(seed)
    cfg = spec.dit

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, device=device)

    cond = Conditions(rnd(1, lengths.clip_frames, cfg.clip_dim),
                      rnd(1, lengths.sync_tokens, cfg.sync_feat_dim),
                      rnd(1, TEXT_TOKENS, cfg.text_dim), rnd(1, TEXT_TOKENS, cfg.text_dim))
    return cond, lengths.latent_frames
