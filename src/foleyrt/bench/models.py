"""Real-size models with random weights and random conditions, for measurements."""

from __future__ import annotations

import torch
from torch import Tensor

from foleyrt.config import ModelSpec
from foleyrt.lengths import SequenceLengths
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import random_transformer
from foleyrt.sampling.conditions import Conditions

TEXT_TOKENS = 16  # a short prompt, padded like the release pads [negative, prompt]


def random_dit(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> FoleyDiT:
    """`spec`'s transformer with random weights filled on `device` (`random_transformer`)."""
    return random_transformer(spec.dit, device, dtype, seed)


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
