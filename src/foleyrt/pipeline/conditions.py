"""Conditions of one request and their classifier-free-guidance rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.models.dit import FoleyDiT, PreparedConditions


@dataclass
class Conditions:
    """Encoder outputs for one clip: one row each (the samples of a request share them)."""

    clip_feat: Tensor  # [1, Nv, clip_dim] SigLIP2 per-frame features
    sync_feat: Tensor  # [1, Ns, sync_dim] Synchformer tokens
    text_feat: Tensor  # [1, L, text_dim] CLAP hidden states of the prompt
    uncond_text_feat: Tensor  # [1, L, text_dim] CLAP hidden states of the negative prompt

    def to(self, device: torch.device | str) -> Conditions:
        return Conditions(*(t.to(device) for t in (
            self.clip_feat, self.sync_feat, self.text_feat, self.uncond_text_feat)))


def cfg_rows(
    dit: FoleyDiT, cond: Conditions, n_samples: int, guidance: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The model rows of a request as features `(clip, text, sync)`: with guidance
    `[uncond x n; cond x n]`, where the unconditional rows see the learnt empty visual features
    and the negative prompt (the release's order and contents), else just `cond x n`."""

    def rows(t: Tensor) -> Tensor:
        return t.expand(n_samples, *t.shape[1:])

    clip, sync, text = rows(cond.clip_feat), rows(cond.sync_feat), rows(cond.text_feat)
    if guidance:
        clip = torch.cat([dit.empty_clip(n_samples, clip.shape[1]).to(clip.dtype), clip])
        sync = torch.cat([dit.empty_sync(n_samples, sync.shape[1]).to(sync.dtype), sync])
        text = torch.cat([rows(cond.uncond_text_feat), text])
    return clip, text, sync


def prepare_rows(
    dit: FoleyDiT, cond: Conditions, n_samples: int, guidance: bool, audio_len: int
) -> PreparedConditions:
    """`cfg_rows`, prepared once for the whole loop."""
    return dit.prepare(*cfg_rows(dit, cond, n_samples, guidance), audio_len)
