"""A clip's conditions and the transformer rows they become under classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.models.dit import FoleyDiT


@dataclass
class Conditions:
    """Encoder outputs for one clip (or one window of a long clip): one row each, shared by
    the request's samples."""

    clip_feat: Tensor  # [1, Nv, clip_dim] SigLIP2 per-frame features
    sync_feat: Tensor  # [1, Ns, sync_dim] Synchformer tokens
    text_feat: Tensor  # [1, L, text_dim] CLAP hidden states of the prompt
    uncond_text_feat: Tensor  # [1, L, text_dim] CLAP hidden states of the negative prompt

    def to(self, device: torch.device | str) -> Conditions:
        return Conditions(*(t.to(device) for t in self.tensors))

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return (self.clip_feat, self.sync_feat, self.text_feat, self.uncond_text_feat)

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        """Made on one CUDA stream (an encoder's), read on `stream` from now on: the caching
        allocator must not hand their memory back to the maker's stream, once they are
        freed, before the work queued on `stream` is done."""
        for t in self.tensors:
            t.record_stream(stream)


@dataclass
class ConditionRows:
    """The conditions of every row of one forward: `clip [B, Nv, D]`, `text [B, L, D]`,
    `sync [B, Ns, D]`, for latents of `audio_len` frames. `guided`: the rows are two equal
    halves, unconditional rows first (what a CFG-parallel denoiser splits). `text_mask [B, L]`:
    the text positions each row attends to, when rows of texts of other lengths were padded
    to share this forward (None: all of them)."""

    clip: Tensor
    text: Tensor
    sync: Tensor
    audio_len: int
    guided: bool = False
    text_mask: Tensor | None = None

    @property
    def rows(self) -> int:
        return self.clip.shape[0]

    def halves(self) -> tuple[ConditionRows, ConditionRows]:
        """Guided rows as their unconditional and conditional halves, each a plain forward's
        rows (what the two ranks of CFG-parallel prepare)."""
        if not self.guided:
            raise ValueError("only guided rows come in halves")
        clip, text, sync = (t.chunk(2) for t in (self.clip, self.text, self.sync))
        mask = (None, None) if self.text_mask is None else self.text_mask.chunk(2)
        return (ConditionRows(clip[0], text[0], sync[0], self.audio_len, text_mask=mask[0]),
                ConditionRows(clip[1], text[1], sync[1], self.audio_len, text_mask=mask[1]))

    @classmethod
    def cat(cls, parts: list[ConditionRows]) -> ConditionRows:
        """Several blocks of rows as one forward's; guided blocks keep the halves layout
        (every block's unconditional rows, then every block's conditional rows). Texts of
        other lengths are padded with zeros to the longest, and masked."""
        first = parts[0]
        if len(parts) == 1:
            return first
        if any((p.audio_len, p.guided) != (first.audio_len, first.guided) for p in parts):
            raise ValueError("rows of one forward need one latent length and one CFG layout")
        length = max(p.text.shape[1] for p in parts)
        padded = [p.pad_text(length) for p in parts]

        def stack(tensors: list[Tensor]) -> Tensor:
            if not first.guided:
                return torch.cat(tensors)
            halves = [t.chunk(2) for t in tensors]
            return torch.cat([h[0] for h in halves] + [h[1] for h in halves])

        masks = [p.text_mask for p in padded]
        mask = None if all(m is None for m in masks) else stack(
            [p.key_mask() for p in padded])
        return cls(stack([p.clip for p in padded]), stack([p.text for p in padded]),
                   stack([p.sync for p in padded]), first.audio_len, first.guided, mask)

    def key_mask(self) -> Tensor:
        """`text_mask`, or all positions when there is none."""
        if self.text_mask is not None:
            return self.text_mask
        return torch.ones(self.text.shape[:2], dtype=torch.bool, device=self.text.device)

    def pad_text(self, length: int) -> ConditionRows:
        """These rows with their text padded to `length` positions, the padding masked."""
        extra = length - self.text.shape[1]
        if extra == 0:
            return self
        text = torch.nn.functional.pad(self.text, (0, 0, 0, extra))
        mask = torch.nn.functional.pad(self.key_mask(), (0, extra), value=False)
        return ConditionRows(self.clip, text, self.sync, self.audio_len, self.guided, mask)


def cfg_rows(
    dit: FoleyDiT, cond: Conditions, n_samples: int, guidance: bool, audio_len: int
) -> ConditionRows:
    """The rows of `n_samples` samples of one clip: with guidance `[uncond x n; cond x n]`,
    where the unconditional rows see the learnt empty visual features and the negative prompt
    (the release's order and contents), else just `cond x n`."""

    def rows(t: Tensor) -> Tensor:
        return t.expand(n_samples, *t.shape[1:])

    clip, sync, text = rows(cond.clip_feat), rows(cond.sync_feat), rows(cond.text_feat)
    if guidance:
        clip = torch.cat([dit.empty_clip(n_samples, clip.shape[1]).to(clip.dtype), clip])
        sync = torch.cat([dit.empty_sync(n_samples, sync.shape[1]).to(sync.dtype), sync])
        text = torch.cat([rows(cond.uncond_text_feat), text])
    return ConditionRows(clip, text, sync, audio_len, guidance)
