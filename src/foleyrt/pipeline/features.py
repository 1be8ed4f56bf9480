"""Encoder features of one request (spec/pipeline.md §3-§5), computed once per clip.

On a GPU the clip is decoded, resized and encoded at once (`_stream_video`): the decoding
thread uploads each new source frame, queues its exact resize on the GPU, and queues SigLIP2
on every few frames and Synchformer on every few complete windows, so the encoders run while
the CPU decodes and only the last chunk is left when decoding ends. Small chunks also bound
the encoders' activation memory, which otherwise sets the whole pipeline's peak. On the CPU
the frames are resized on threads and encoded afterwards (`video_conditions`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from foleyrt.config import SIGLIP_FPS, SYNC_FPS, SYNC_STRIDE, SYNC_WINDOW
from foleyrt.media.video import (
    DecodedClip,
    FrameBranch,
    FramePrep,
    VideoInfo,
    check_sync_length,
    decode_clip,
    iter_ticks,
    probe_video,
    to_model_range,
)
from foleyrt.models.synchformer import Synchformer, sync_features, sync_token_count
from foleyrt.pipeline.conditions import Conditions
from foleyrt.pipeline.models import FoleyModels

SIGLIP_CHUNK = 16  # frames per streamed SigLIP2 call
SYNC_GROUP = 6  # windows per streamed Synchformer call


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


@dataclass
class EncodedClip:
    """A clip's conditions. `duration_s` is the audio length the model is asked for (T25 /
    25), `info.duration_s` the length the audio is fitted to; `decode_s`: wall time until the
    last frame was decoded (features computed after it: the rest of the stage)."""

    info: VideoInfo
    conditions: Conditions
    duration_s: float
    decode_s: float


def encode_video(
    models: FoleyModels, path: str | Path, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool = False,
) -> EncodedClip:
    """Decode `path` once and compute its SigLIP2, Synchformer and CLAP features on `device`
    (`fast`: see `encoder_matmul_precision`)."""
    if device.type == "cpu":
        t0 = time.perf_counter()
        clip = decode_clip(path)
        decode_s = time.perf_counter() - t0
        cond = video_conditions(models, clip, prompt, negative_prompt, device, fast)
        return EncodedClip(clip.info, cond, clip.duration_s, decode_s)
    return _stream_video(models, probe_video(path), prompt, negative_prompt, device, fast)


def video_conditions(
    models: FoleyModels, clip: DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool = False,
) -> Conditions:
    """SigLIP2, Synchformer and CLAP features of a decoded clip, computed on `device`."""
    with encoder_matmul_precision(fast):
        siglip_px = to_model_range(clip.siglip_u8.to(device, non_blocking=True))
        clip_feat = models.siglip(siglip_px)
        sync_px = to_model_range(clip.sync_u8.to(device, non_blocking=True))
        with sync_autocast(device):
            sync_feat = sync_features(models.synchformer, sync_px).float()
        text, uncond = models.clap(prompt, negative_prompt)
    return Conditions(clip_feat, sync_feat, text, uncond)


def _stream_video(
    models: FoleyModels, info: VideoInfo, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool,
) -> EncodedClip:
    t0 = time.perf_counter()
    prep = FramePrep.for_device(device)
    with encoder_matmul_precision(fast):
        text, uncond = models.clap(prompt, negative_prompt)  # the GPU starts on it meanwhile

        def siglip_rows(pixels: Sequence[Tensor]) -> Tensor:
            batch = pixels if isinstance(pixels, Tensor) else torch.stack(list(pixels))
            return models.siglip(to_model_range(batch))[0]

        siglip = FrameBranch(prep.siglip, SIGLIP_CHUNK, consume=siglip_rows)
        sync = FrameBranch(prep.sync, prep.sync_chunk)
        windows = _SyncWindows(models.synchformer, device)
        for tick in iter_ticks(info.path, (SIGLIP_FPS, SYNC_FPS)):
            if tick.rate == SIGLIP_FPS:
                siglip.add(tick)
            else:
                sync.add(tick)
                windows.encode_ready(sync)
        decode_s = time.perf_counter() - t0
        check_sync_length(info, len(sync))
        clip_feat = siglip.stacked()[None]
        sync.finish()
        sync_feat = windows.encode_ready(sync, final=True)
    cond = Conditions(clip_feat, sync_feat, text, uncond)
    return EncodedClip(info, cond, len(sync) / SYNC_FPS, decode_s)


class _SyncWindows:
    """Synchformer over the clip's 16-frame windows (stride 8), `SYNC_GROUP` windows per call
    as soon as their frames are resized. Windows are separate batch items, so grouping them
    differently from the release's one call changes nothing but kernel shapes."""

    def __init__(self, model: Synchformer, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.outputs: list[Tensor] = []
        self.encoded = 0  # windows done

    def encode_ready(self, frames: FrameBranch, final: bool = False) -> Tensor:
        """Encode the complete windows whose frames are all resized (every window when
        `final`, after `frames.finish()`); returns the tokens so far, `[1, 8 * S, D]`."""
        ready_ticks = bisect.bisect_left(frames.slots, len(frames.done))
        available = _windows_in(ready_ticks)
        while available - self.encoded >= (1 if final else SYNC_GROUP):
            take = min(SYNC_GROUP, available - self.encoded)
            first = self.encoded * SYNC_STRIDE
            last = (self.encoded + take - 1) * SYNC_STRIDE + SYNC_WINDOW
            pixels = torch.stack([frames.done[frames.slots[i]] for i in range(first, last)])
            with sync_autocast(self.device):
                self.outputs.append(sync_features(self.model, to_model_range(pixels)).float())
            self.encoded += take
        return torch.cat(self.outputs, dim=1) if self.outputs else torch.empty(0)


def _windows_in(n_frames: int) -> int:
    return (n_frames - SYNC_WINDOW) // SYNC_STRIDE + 1 if n_frames >= SYNC_WINDOW else 0


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
