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
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from foleyrt.accel.process import encoder_matmul_precision
from foleyrt.errors import UsageError
from foleyrt.lengths import (
    SIGLIP_FPS,
    SYNC_FPS,
    SYNC_STRIDE,
    SYNC_WINDOW,
    SequenceLengths,
    Windowing,
    WindowPlan,
    sync_window_count,
)
from foleyrt.media.video import (
    FRAME_CAP_S,
    DecodedClip,
    FrameBranch,
    FramePrep,
    PerFrame,
    VideoInfo,
    VideoLimits,
    assemble_clip,
    check_sync_length,
    iter_ticks,
    probe_video,
    to_model_range,
)
from foleyrt.models.synchformer import Synchformer, sync_features
from foleyrt.pipeline.models import FoleyModels
from foleyrt.request import DEFAULT_WINDOWING, MAX_DURATION
from foleyrt.sampling.conditions import Conditions

log = logging.getLogger(__name__)

SIGLIP_CHUNK = 16  # frames per streamed SigLIP2 call
SYNC_GROUP = 6  # windows per streamed Synchformer call
STREAM_PENDING = 4  # chunks per branch queued for the feeding thread (bounds raw frames held)
STREAM_SWITCH_INTERVAL_S = 2e-4  # see `quick_gil_handover`


def sync_autocast(device: torch.device) -> AbstractContextManager[object]:
    """The release runs Synchformer under CUDA fp16 autocast; we keep its numbers on CUDA."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def siglip_autocast(device: torch.device, fast: bool) -> AbstractContextManager[object]:
    """SigLIP2 under CUDA fp16 autocast in the fast modes (the release runs it in fp32). Its
    GEMMs then read inputs with TF32's 10-bit mantissa at twice TF32's rate, while autocast
    keeps norms, softmax and the residual sums in fp32: the features differ from fp32 about
    as much as TF32's do (docs/benchmarks.md §6). `EncodedClip.checked` redoes a clip whose
    fp16 features overflowed in fp32."""
    return sync_autocast(device) if fast else nullcontext()


@dataclass
class EncodedClip:
    """A clip's conditions. `lengths` are what the model sees (its audio is the span of the
    25 fps frames), `info.duration_s` the length the audio is fitted to; `decode_s`: wall time
    until the last frame was decoded (features computed after it: the rest of the stage).
    A clip longer than a window (`plan` not whole) has `windows`, the conditions of each of
    its windows; `conditions` and `lengths` are then its first window's."""

    info: VideoInfo
    conditions: Conditions
    lengths: SequenceLengths
    decode_s: float
    plan: WindowPlan | None = None
    windows: tuple[Conditions, ...] = ()
    fallback: Callable[[], EncodedClip] | None = None  # fp32 encoding, while fp16 is unchecked

    def siglip_finite(self) -> bool:
        """Whether every SigLIP2 feature is finite (waits for the GPU's work on them)."""
        feats = [c.clip_feat for c in (self.conditions, *self.windows)]
        return bool(torch.stack([torch.isfinite(f).all() for f in feats]).all())

    def checked(self) -> EncodedClip:
        """This clip once its fp16 SigLIP2 features are known to be finite (the check waits
        for the GPU), or the clip encoded again in fp32 where they overflowed."""
        if self.fallback is None:
            return self
        if self.siglip_finite():
            return replace(self, fallback=None)
        log.warning("%s: SigLIP2 overflowed in fp16; encoding the clip again in fp32",
                    self.info.path)
        return self.fallback()


def encode_video(
    models: FoleyModels, path: str | Path | DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool = False, limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None, windowing: Windowing = DEFAULT_WINDOWING,
    max_seconds: float = MAX_DURATION, on_window: Callable[[int, int], None] | None = None,
    check_now: bool = True,
) -> EncodedClip:
    """Decode `path` once and compute its SigLIP2, Synchformer and CLAP features on `device`
    (`fast`: see `encoder_matmul_precision` and `siglip_autocast`; `limits`, `on_frame`: see
    `iter_ticks`; `max_seconds`: the longest clip taken). A clip longer than `windowing`'s
    window is streamed in windows, reported to `on_window` (see `_Windows`) instead of
    `on_frame`. A `DecodedClip` (decoded elsewhere, e.g. by a Ray CPU task) is only encoded,
    in one pass (one of a clip longer than a pass is refused). `check_now=False` leaves the
    fp16 overflow check to the caller (`EncodedClip.checked`): it waits for the GPU."""
    encode = partial(_encode_video, models, path, prompt, negative_prompt, device,
                     limits=limits, on_frame=on_frame, windowing=windowing,
                     max_seconds=max_seconds, on_window=on_window)
    clip = encode(fast)
    if fast:
        clip.fallback = partial(encode, False)
    return clip.checked() if check_now else clip


def _encode_video(
    models: FoleyModels, path: str | Path | DecodedClip, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool, *, limits: VideoLimits | None,
    on_frame: Callable[[int], None] | None, windowing: Windowing, max_seconds: float,
    on_window: Callable[[int, int], None] | None,
) -> EncodedClip:
    if isinstance(path, DecodedClip):
        if path.info.takes_windows(windowing):
            # Its frames stop at one pass: the audio would be made from its start only.
            raise UsageError(f"{path.info.path}: a decoded clip is one pass, and this one lasts "
                             f"{path.info.duration_s:.2f} s; pass its path to generate it in "
                             "windows")
        return _decoded_features(models, path, prompt, negative_prompt, device, fast, 0.0)
    info = probe_video(path, limits, max_seconds)
    if info.takes_windows(windowing):
        return _stream_video(models, info, prompt, negative_prompt, device, fast, limits,
                             on_frame, _Windows(windowing, info.duration_s, on_window))
    if device.type == "cpu":
        t0 = time.perf_counter()
        clip = assemble_clip(info, iter_ticks(info.path, limits=limits, on_frame=on_frame))
        return _decoded_features(models, clip, prompt, negative_prompt, device, fast,
                                 time.perf_counter() - t0)
    return _stream_video(models, info, prompt, negative_prompt, device, fast, limits, on_frame)


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
    """SigLIP2, Synchformer and CLAP features of a decoded clip, computed on `device`: the
    encoders on the current stream, the uploads and the text encoder on a side stream (see
    `side_stream`), so that none of it waits for work queued before it."""
    with encoder_matmul_precision(fast):
        with side_stream(device, after_current=models.offloader is not None) as hand_over:
            siglip_u8 = hand_over(clip.siglip_u8.to(device))
            sync_u8 = hand_over(clip.sync_u8.to(device))
            text, uncond = map(hand_over, models.clap(prompt, negative_prompt))
        with siglip_autocast(device, fast):
            clip_feat = models.siglip(to_model_range(siglip_u8))
        with sync_autocast(device):
            sync_feat = sync_features(models.synchformer, to_model_range(sync_u8)).float()
    return Conditions(clip_feat, sync_feat, text, uncond)


@contextmanager
def side_stream(device: torch.device, after_current: bool = False
                ) -> Iterator[Callable[[Tensor], Tensor]]:
    """Run the block's GPU work on a side stream, then make the current stream wait for it.

    For work that waits for its stream to drain: a copy from pageable memory does, and so
    does the text encoder (its mask check reads a GPU value). Batch mode queues a group's
    denoising on the current stream and encodes the next clips behind it; on the side stream
    such work waits for nothing queued, and the GPU thread goes on queueing. Pass each tensor
    the block makes for the current stream through the yielded `hand_over`: the allocator
    then keeps its memory until the current stream is done with it. `after_current`: start
    after the current stream's work (an offloader's weight uploads are queued there). The
    side stream has the current stream's priority: the text encoder's wait on it must not
    queue behind the kernels that the current stream's priority puts it ahead of."""
    if device.type != "cuda":
        yield lambda t: t
        return
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device, priority=current.priority)
    if after_current:
        side.wait_stream(current)
    made: list[Tensor] = []

    def hand_over(t: Tensor) -> Tensor:
        made.append(t)
        return t

    with torch.cuda.stream(side):
        yield hand_over
    current.wait_stream(side)
    for t in made:
        t.record_stream(current)


@dataclass
class _Windows:
    """What streaming a long clip needs besides the clip: its windowing, and `on_window(ready,
    windows)`, told at every 25 fps tick how many windows have all their frames, of how many
    the header's duration makes (the last, overhanging window completes at the end)."""

    windowing: Windowing
    header_s: float
    on_window: Callable[[int, int], None] | None = None
    ends: list[int] = field(default_factory=list)  # 25 fps ticks that complete each window
    ready: int = 0

    def __post_init__(self) -> None:
        plan = WindowPlan.of(SequenceLengths.of_duration(self.header_s), self.windowing)
        self.ends = [plan.sync_start(i) + plan.window.sync_frames
                     for i in range(len(plan.starts))]

    def tick(self, sync_ticks: int) -> None:
        while self.ready < len(self.ends) and self.ends[self.ready] <= sync_ticks:
            self.ready += 1
        if self.on_window is not None:
            self.on_window(self.ready, len(self.ends))


def _stream_video(
    models: FoleyModels, info: VideoInfo, prompt: str, negative_prompt: str,
    device: torch.device, fast: bool, limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None, windows: _Windows | None = None,
) -> EncodedClip:
    t0 = time.perf_counter()
    prep = FramePrep.for_device(device)
    if windows is not None:
        on_frame = None  # `windows.tick` reports (and may stop) at every 25 fps tick instead
    # The feeding thread queues on the caller's stream (batch mode gives each decoder its own).
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    with encoder_matmul_precision(fast), quick_gil_handover(), ThreadPoolExecutor(
        1, thread_name_prefix="foleyrt-gpu-feed"
    ) as feeder:
        text, uncond = models.clap(prompt, negative_prompt)  # the GPU starts on it meanwhile
        # (`tokens` is bound before the first job runs: it reads the branch's tick list)
        sync = FrameBranch(_in_inference(lambda frames: tokens.add(prep.sync(frames)), stream),
                           prep.sync_chunk, feeder, max_pending=STREAM_PENDING)
        tokens = _SyncTokens(models.synchformer, device, sync.slots,
                             None if windows is None else windows.windowing)

        def siglip_rows(frames: Sequence[np.ndarray]) -> Tensor:
            pixels = to_model_range(_as_batch(prep.siglip(frames)))
            with siglip_autocast(device, fast):  # autocast is per thread: this is the feeder
                return models.siglip(pixels)[0]

        siglip = FrameBranch(_in_inference(siglip_rows, stream), SIGLIP_CHUNK, feeder,
                             max_pending=STREAM_PENDING)
        end_s = FRAME_CAP_S if windows is None else math.inf
        for tick in iter_ticks(info.path, (SIGLIP_FPS, SYNC_FPS), end_s=end_s, limits=limits,
                               on_frame=on_frame):
            (siglip if tick.rate == SIGLIP_FPS else sync).add(tick)
            if windows is not None and tick.rate == SYNC_FPS:
                windows.tick(len(sync))
        decode_s = time.perf_counter() - t0
        check_sync_length(info, sync)
        clip_feat = siglip.stacked()[None]
        sync.finish()
        lengths = SequenceLengths(len(siglip), len(sync))
        if windows is None:
            tokens.finish()
            cond = Conditions(clip_feat, tokens.clip(), text, uncond)
            return EncodedClip(info, cond, lengths, decode_s)
        plan = WindowPlan.of(lengths, windows.windowing)
        if plan.whole:
            tokens.finish()
            cond = Conditions(clip_feat, tokens.clip(len(sync)), text, uncond)
            return EncodedClip(info, cond, lengths, decode_s, plan, (cond,))
        tokens.finish(plan.sync_start(len(plan.starts) - 1))
        conds = tuple(Conditions(_held(clip_feat, plan.clip_start(i), plan.window.clip_frames),
                                 tokens.window(plan.sync_start(i)), text, uncond)
                      for i in range(len(plan.starts)))
    return EncodedClip(info, conds[0], plan.window, decode_s, plan, conds)


def _held(frames: Tensor, start: int, count: int) -> Tensor:
    """`count` rows of `frames [1, T, ...]` from `start`, the last row repeated past the end
    (the still picture a window overhanging the clip's end sees)."""
    index = torch.arange(start, start + count, device=frames.device).clamp_(max=frames.shape[1] - 1)
    return frames.index_select(1, index)


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


class _SyncTokens:
    """Synchformer tokens of a clip decoded in a stream, computed as soon as their frames are
    resized, with resized frames dropped once nothing ahead needs them.

    A whole clip's 16-frame windows start on every 8th frame (its "grid"); they are encoded
    `SYNC_GROUP` at a time. Windows are separate batch items, so grouping them differently
    from the release's one call changes nothing but kernel shapes. A long clip's window that
    starts on the grid (25·s a multiple of 8: every 8 s) uses the grid's; one that does not
    is encoded from its own frames once they are all resized. The last window is known only
    at the end: the last window's worth of frames is kept for it (`finish`).

    `add` runs on the feeding thread, in chunk order; `slots` (tick -> source frame) is the
    branch's list, which the decoding thread appends to: the ticks whose frames are resized
    are a prefix of it."""

    def __init__(self, model: Synchformer, device: torch.device, slots: list[int],
                 windowing: Windowing | None = None) -> None:
        self.model = model
        self.device = device
        self.slots = slots
        self.pixels: dict[int, Tensor] = {}  # per source frame still needed
        self.resized = 0  # source frames resized so far
        self.grid: dict[int, Tensor] = {}  # grid window index -> its 8 tokens [1, 8, D]
        self.next_grid = 0  # grid windows before this one are encoded or not needed
        self.anchors: dict[int, Tensor] = {}  # off-grid window start -> its tokens
        self.stride = 0 if windowing is None else windowing.stride * SYNC_FPS
        self.frames = 0 if windowing is None else windowing.window().sync_frames
        self.per_window = sync_window_count(self.frames)

    def add(self, pixels: PerFrame) -> PerFrame:
        for p in pixels:
            self.pixels[self.resized] = p
            self.resized += 1
        self._encode_ready(bisect.bisect_left(self.slots, self.resized), final=False)
        return ()

    def finish(self, last_start: int | None = None) -> None:
        """Encode what is left (after the branch's `finish`): the rest of the grid and, for
        a long clip, its last window from `last_start` (past the end: the last frame held)."""
        ticks = len(self.slots)
        self._encode_ready(ticks, final=True)
        if (last_start is not None and last_start not in self.anchors
                and not self._on_grid(last_start, ticks)):
            self.anchors[last_start] = self._encode_span(last_start, ticks)

    def clip(self, ticks: int | None = None) -> Tensor:
        """A whole clip's tokens `[1, 8 * S, D]` (S windows of its `ticks` frames; None: every
        grid window encoded)."""
        count = len(self.grid) if ticks is None else sync_window_count(ticks)
        return torch.cat([self.grid[m] for m in range(count)], dim=1)

    def window(self, start: int) -> Tensor:
        """The tokens of the long clip's window whose first frame is `start`."""
        if start in self.anchors:
            return self.anchors[start]
        first = start // SYNC_STRIDE
        return torch.cat([self.grid[m] for m in range(first, first + self.per_window)], dim=1)

    # ---- while decoding ----------------------------------------------------------------------

    def _grid_needed(self, m: int) -> bool:
        """Whether grid window `m` belongs to some window of the clip that starts on the grid
        (a whole clip: every one)."""
        if not self.stride:
            return True
        start, reach = m * SYNC_STRIDE, (self.per_window - 1) * SYNC_STRIDE
        first = max(0, -(-(start - reach) // self.stride))
        return any((i * self.stride) % SYNC_STRIDE == 0
                   for i in range(first, start // self.stride + 1))

    def _on_grid(self, start: int, ticks: int) -> bool:
        first = start // SYNC_STRIDE
        return start % SYNC_STRIDE == 0 and all(
            m in self.grid for m in range(first, first + self.per_window)) and (
            start + self.frames <= ticks)

    def _encode_ready(self, ready_ticks: int, final: bool) -> None:
        available = sync_window_count(ready_ticks)
        while True:
            while self.next_grid < available and not self._grid_needed(self.next_grid):
                self.next_grid += 1
            run = 0
            while (run < SYNC_GROUP and self.next_grid + run < available
                   and self._grid_needed(self.next_grid + run)):
                run += 1
            gap = self.next_grid + run < available  # the run stops at a window not needed
            if run == 0 or not (run == SYNC_GROUP or final or gap):
                break
            first = self.next_grid * SYNC_STRIDE
            last = (self.next_grid + run - 1) * SYNC_STRIDE + SYNC_WINDOW
            out = self._tokens(range(first, last))
            for j in range(run):
                self.grid[self.next_grid + j] = out[:, j * 8:(j + 1) * 8]
            self.next_grid += run
        if self.stride:
            anchor = 0
            while anchor + self.frames <= ready_ticks:
                if anchor % SYNC_STRIDE and anchor not in self.anchors:
                    self.anchors[anchor] = self._encode_span(anchor, ready_ticks)
                anchor += self.stride
        self._drop_unneeded(ready_ticks)

    def _encode_span(self, start: int, ticks: int) -> Tensor:
        """A window's tokens from its own frames `[start, start + frames)`, the clip's last
        frame held past its `ticks` frames."""
        return self._tokens(min(t, ticks - 1) for t in range(start, start + self.frames))

    def _tokens(self, ticks: Iterable[int]) -> Tensor:
        frames = torch.stack([self.pixels[self.slots[t]] for t in ticks])
        with sync_autocast(self.device):
            return sync_features(self.model, to_model_range(frames), SYNC_GROUP).float()

    def _drop_unneeded(self, ready_ticks: int) -> None:
        """Forget resized frames that no window ahead needs (a long clip keeps the last
        window's worth and a second, where its last window may start)."""
        keep = min(self.next_grid * SYNC_STRIDE, ready_ticks)
        if self.stride:
            pending = next((a for a in range(0, ready_ticks + 1, self.stride)
                            if a % SYNC_STRIDE and a not in self.anchors), ready_ticks)
            keep = min(keep, pending, max(0, ready_ticks - self.frames - SYNC_FPS))
        if keep >= len(self.slots):
            return
        for source in [s for s in self.pixels if s < self.slots[keep]]:
            del self.pixels[source]


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
