"""Encoder features of one request (spec/pipeline.md §3-§5), computed once per clip.

On a GPU the clip is decoded, resized and encoded at once (`_stream_video`): the decoding
thread hands each chunk of new source frames to one feeding thread, which uploads them,
queues their exact resize on the GPU, and queues SigLIP2 on every 16 frames and Synchformer
on every 6 complete windows. The GPU encodes while the CPU decodes, the decoding thread
never waits for the GPU, and only the last chunk is left when decoding ends. Small chunks also bound
the encoders' activation memory, which otherwise sets the whole pipeline's peak. On the CPU
the frames are resized on threads and encoded afterwards (`video_conditions`).
"""

from __future__ import annotations

import bisect
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from foleyrt.accel.process import encoder_matmul_precision
from foleyrt.lengths import (
    SIGLIP_FPS,
    SYNC_FPS,
    SYNC_STRIDE,
    SYNC_WINDOW,
    SequenceLengths,
    sync_window_count,
)
from foleyrt.media.video import (
    DecodedClip,
    FrameBranch,
    FramePrep,
    PerFrame,
    VideoInfo,
    VideoLimits,
    check_sync_length,
    decode_clip,
    iter_ticks,
    probe_video,
    to_model_range,
)
from foleyrt.models.synchformer import Synchformer, sync_features
from foleyrt.pipeline.models import FoleyModels
from foleyrt.sampling.conditions import Conditions

SIGLIP_CHUNK = 16  # frames per streamed SigLIP2 call
SYNC_GROUP = 6  # windows per streamed Synchformer call
STREAM_PENDING = 4  # chunks per branch queued for the feeding thread (bounds raw frames held)
STREAM_SWITCH_INTERVAL_S = 2e-4  # see `quick_gil_handover`


def sync_autocast(device: torch.device) -> AbstractContextManager[object]:
    """The release runs Synchformer under CUDA fp16 autocast; we keep its numbers on CUDA."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


@dataclass
class EncodedClip:
    """A clip's conditions. `lengths` are what the model sees (its audio is the span of the
    25 fps frames), `info.duration_s` the length the audio is fitted to; `decode_s`: wall time
    until the last frame was decoded (features computed after it: the rest of the stage)."""

    info: VideoInfo
    conditions: Conditions
    lengths: SequenceLengths
    decode_s: float


def encode_video(
    models: FoleyModels, path: str | Path | DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool = False, limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> EncodedClip:
    """Decode `path` once and compute its SigLIP2, Synchformer and CLAP features on `device`
    (`fast`: see `encoder_matmul_precision`; `limits`, `on_frame`: see `iter_ticks`); a
    `DecodedClip` (decoded elsewhere, e.g. by a Ray CPU task) is only encoded."""
    if isinstance(path, DecodedClip):
        return _decoded_features(models, path, prompt, negative_prompt, device, fast, 0.0)
    if device.type == "cpu":
        t0 = time.perf_counter()
        clip = decode_clip(path, limits=limits, on_frame=on_frame)
        return _decoded_features(models, clip, prompt, negative_prompt, device, fast,
                                 time.perf_counter() - t0)
    return _stream_video(models, probe_video(path, limits), prompt, negative_prompt, device,
                         fast, limits, on_frame)


def _decoded_features(
    models: FoleyModels, clip: DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool, decode_s: float,
) -> EncodedClip:
    cond = video_conditions(models, clip, prompt, negative_prompt, device, fast)
    lengths = SequenceLengths(clip.siglip_u8.shape[0], clip.sync_u8.shape[0])
    return EncodedClip(clip.info, cond, lengths, decode_s)


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
    device: torch.device, fast: bool, limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> EncodedClip:
    t0 = time.perf_counter()
    prep = FramePrep.for_device(device)
    # The feeding thread queues on the caller's stream (batch mode gives each decoder its own).
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    with encoder_matmul_precision(fast), quick_gil_handover(), ThreadPoolExecutor(
        1, thread_name_prefix="foleyrt-gpu-feed"
    ) as feeder:
        text, uncond = models.clap(prompt, negative_prompt)  # the GPU starts on it meanwhile
        # (`windows` is bound before the first job runs: it reads the branch's tick list)
        sync = FrameBranch(_in_inference(lambda frames: windows.add(prep.sync(frames)), stream),
                           prep.sync_chunk, feeder, max_pending=STREAM_PENDING)
        windows = _SyncWindows(models.synchformer, device, sync.slots)

        def siglip_rows(frames: Sequence[np.ndarray]) -> Tensor:
            return models.siglip(to_model_range(_as_batch(prep.siglip(frames))))[0]

        siglip = FrameBranch(_in_inference(siglip_rows, stream), SIGLIP_CHUNK, feeder,
                             max_pending=STREAM_PENDING)
        for tick in iter_ticks(info.path, (SIGLIP_FPS, SYNC_FPS), limits=limits,
                               on_frame=on_frame):
            (siglip if tick.rate == SIGLIP_FPS else sync).add(tick)
        decode_s = time.perf_counter() - t0
        check_sync_length(info, len(sync))
        clip_feat = siglip.stacked()[None]
        sync.finish()
        windows.encode_ready(final=True)
        sync_feat = windows.tokens()
    cond = Conditions(clip_feat, sync_feat, text, uncond)
    return EncodedClip(info, cond, SequenceLengths(len(siglip), len(sync)), decode_s)


@contextmanager
def quick_gil_handover() -> Iterator[None]:
    """A 0.2 ms GIL switch interval while streaming (the default is 5 ms). The decoding thread
    drops the GIL at every FFmpeg call and then waits for it while the feeding thread queues
    encoder kernels, a wait the default interval makes long (`scripts/profile_media.py`;
    docs/benchmarks.md). Process-wide, hence restored right after (batch mode holds it for its
    whole run, so its decoders' nested uses restore what they found)."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(STREAM_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


def _in_inference(fn: Callable[[Sequence[np.ndarray]], PerFrame],
                  stream: torch.cuda.Stream | None,
                  ) -> Callable[[Sequence[np.ndarray]], PerFrame]:
    """`fn` under inference mode on `stream`: a worker thread inherits neither from the
    caller."""
    def run(frames: Sequence[np.ndarray]) -> PerFrame:
        with torch.inference_mode(), torch.cuda.stream(stream):
            return fn(frames)
    return run


def _as_batch(pixels: PerFrame) -> Tensor:
    return pixels if isinstance(pixels, Tensor) else torch.stack(list(pixels))


class _SyncWindows:
    """Synchformer over the clip's 16-frame windows (stride 8), `SYNC_GROUP` windows per call
    as soon as their frames are resized. Windows are separate batch items, so grouping them
    differently from the release's one call changes nothing but kernel shapes.

    `add` runs on the feeding thread, in chunk order; `slots` (tick -> source frame) is the
    branch's list, which the decoding thread appends to: the ticks whose frames are resized
    are a prefix of it."""

    def __init__(self, model: Synchformer, device: torch.device, slots: list[int]) -> None:
        self.model = model
        self.device = device
        self.slots = slots
        self.pixels: list[Tensor] = []  # per source frame
        self.outputs: list[Tensor] = []
        self.encoded = 0  # windows done

    def add(self, pixels: PerFrame) -> PerFrame:
        self.pixels.extend(pixels)
        self.encode_ready()
        return pixels

    def encode_ready(self, final: bool = False) -> None:
        """Encode the complete windows whose frames are all resized (every window left when
        `final`)."""
        ready_ticks = bisect.bisect_left(self.slots, len(self.pixels))
        available = sync_window_count(ready_ticks)
        while available - self.encoded >= (1 if final else SYNC_GROUP):
            take = min(SYNC_GROUP, available - self.encoded)
            first = self.encoded * SYNC_STRIDE
            last = (self.encoded + take - 1) * SYNC_STRIDE + SYNC_WINDOW
            frames = torch.stack([self.pixels[self.slots[i]] for i in range(first, last)])
            with sync_autocast(self.device):
                self.outputs.append(sync_features(self.model, to_model_range(frames)).float())
            self.encoded += take

    def tokens(self) -> Tensor:
        """The clip's sync tokens, `[1, 8 * S, D]` (after the final `encode_ready`)."""
        return torch.cat(self.outputs, dim=1)


def text_only_conditions(
    models: FoleyModels, lengths: SequenceLengths, prompt: str, negative_prompt: str
) -> Conditions:
    """Without a video both CFG branches see the learnt "no video" features (as long as a clip
    of the requested duration would have); guidance then acts on the text alone."""
    dit = models.dit
    text, uncond = models.clap(prompt, negative_prompt)
    clip_feat = dit.empty_clip(1, lengths.clip_frames).float()
    sync_feat = dit.empty_sync(1, lengths.sync_tokens).float()
    return Conditions(clip_feat, sync_feat, text, uncond)
