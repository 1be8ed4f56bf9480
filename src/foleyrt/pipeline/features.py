"""Encoder features of one request (spec/pipeline.md §3-§5), computed once per clip."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from foleyrt.config import SIGLIP_FPS, SYNC_FPS
from foleyrt.media.video import DecodedClip, to_model_range
from foleyrt.models.synchformer import sync_features, sync_token_count
from foleyrt.pipeline.conditions import Conditions
from foleyrt.pipeline.models import FoleyModels


def sync_autocast(device: torch.device):  # type: ignore[no-untyped-def]
    """The release runs Synchformer under CUDA fp16 autocast; we keep its numbers on CUDA."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@contextmanager
def encoder_matmul_precision(fast: bool) -> Iterator[None]:
    """TF32 matmuls for the fp32 encoders when `fast` (the accelerated modes: ~4x faster
    SigLIP2; the bench reports the resulting audio-level distance). The eager mode keeps the
    release's full fp32 matmuls."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if fast else saved)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def video_conditions(
    models: FoleyModels, clip: DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool = False,
) -> Conditions:
    """SigLIP2, Synchformer and CLAP features of a decoded clip, computed on `device` (`fast`:
    see `encoder_matmul_precision`)."""
    with encoder_matmul_precision(fast):
        siglip_px = to_model_range(clip.siglip_u8.to(device, non_blocking=True))
        clip_feat = models.siglip(siglip_px)
        sync_px = to_model_range(clip.sync_u8.to(device, non_blocking=True))
        with sync_autocast(device):
            sync_feat = sync_features(models.synchformer, sync_px).float()
        text, uncond = models.clap(prompt, negative_prompt)
    return Conditions(clip_feat, sync_feat, text, uncond)


def text_only_lengths(duration_s: float) -> tuple[int, int, float]:
    """(SigLIP2 frames, Synchformer tokens, audio seconds) for a text-only request: the lengths
    a constant-frame-rate video of `duration_s` would give."""
    n_sync_frames = int(duration_s * SYNC_FPS)
    return int(duration_s * SIGLIP_FPS), sync_token_count(n_sync_frames), n_sync_frames / SYNC_FPS


def text_only_conditions(
    models: FoleyModels, duration_s: float, prompt: str, negative_prompt: str
) -> tuple[Conditions, float]:
    """Without a video both CFG branches see the learnt "no video" features; guidance then
    acts on the text alone. Returns the conditions and the audio duration they describe."""
    n_clip, n_sync, audio_s = text_only_lengths(duration_s)
    dit = models.dit
    text, uncond = models.clap(prompt, negative_prompt)
    clip_feat = dit.empty_clip(1, n_clip).float()
    sync_feat = dit.empty_sync(1, n_sync).float()
    return Conditions(clip_feat, sync_feat, text, uncond), audio_s
