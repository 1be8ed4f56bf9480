"""Latents to audio with the VAE, in overlapping chunks when the latent is long.

The decoder is convolutional: each output sample depends on the latent frames within about
11 frames of its own (its receptive field, measured with an impulse through the released
layout). A latent of at most `DECODE_CHUNK` frames (15 s: every clip taken in one pass) is
decoded whole, as the release does. A longer one is decoded `DECODE_CHUNK` frames at a time:
each chunk's outer `DECODE_CONTEXT` frames are decoded as context only and dropped (so what
is kept is what the whole decode gives, up to rounding), and neighbours are cross-faded over
the `DECODE_FADE` frames they share with the sampler's raised-cosine ramps and running
weighted mean (`blend_in`). The decoder's memory is then that of a 15 s clip, however long
the latent; the audio is assembled on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from foleyrt.models.dac_vae import DACVAE
from foleyrt.sampling.loop import blend_in, blend_ramp

DECODE_CHUNK = 750  # latent frames decoded at once (15 s)
DECODE_CONTEXT = 16  # frames of context each side of a chunk, dropped (the field is ~11)
DECODE_FADE = 8  # frames over which neighbouring chunks are cross-faded


def chunk_spans(frames: int, chunk: int = DECODE_CHUNK, context: int = DECODE_CONTEXT,
                fade: int = DECODE_FADE) -> list[tuple[slice, slice]]:
    """`(decoded, kept)` latent frame spans covering `[0, frames)`: each chunk decodes at
    most `chunk` frames and keeps all but its inner edges' `context`; kept spans of
    neighbours overlap by `fade`."""
    if frames <= chunk:
        return [(slice(0, frames), slice(0, frames))]
    step = chunk - 2 * context - fade
    spans = []
    for start in range(0, frames, step):
        stop = min(start + chunk, frames)
        spans.append((slice(start, stop),
                      slice(start + context if start else 0,
                            stop if stop == frames else stop - context)))
        if stop == frames:
            return spans
    raise AssertionError("unreachable: the last chunk ends the latent")


@torch.inference_mode()
def decode_latents(vae: DACVAE, latents: Tensor, device: torch.device,
                   on_chunk: Callable[[int, int], None] | None = None) -> Tensor:
    """Latents `[n, C, Na]` -> audio `[n, 1, hop * Na]` float32 on the CPU
    (`on_chunk(done, chunks)` after each chunk)."""
    dtype = next(vae.parameters()).dtype
    spans = chunk_spans(latents.shape[-1])
    if len(spans) == 1:
        return vae.decode(latents.to(device, dtype)).float().cpu()
    n, frames, hop = latents.shape[0], latents.shape[-1], vae.hop_length
    audio = torch.zeros(n, 1, frames * hop)
    total = torch.zeros(frames, dtype=torch.float64)
    for done, (decoded, kept) in enumerate(spans, 1):
        out = vae.decode(latents[..., decoded].to(device, dtype)).float().cpu()
        part = out[..., (kept.start - decoded.start) * hop:(kept.stop - decoded.start) * hop]
        blend_in(_by_frame(audio, hop), total, kept, _by_frame(part, hop),
                 blend_ramp(kept.stop - kept.start, DECODE_FADE))
        if on_chunk is not None:
            on_chunk(done, len(spans))
    return audio


def _by_frame(audio: Tensor, hop: int) -> Tensor:
    """`[n, 1, hop * T]` as a view `[n, 1, hop, T]`: latent frames on the last axis."""
    return audio.unflatten(-1, (-1, hop)).transpose(-1, -2)
