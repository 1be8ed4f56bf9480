"""Reading a clip: probe and validate it, then decode it once into both model inputs.

The release decodes the file twice (once per frame rate) and keeps every sampled frame at
full resolution before resizing. We decode once, run both tick schedules on the same frames
and resize each sampled frame as soon as it is chosen, so a 15 s 1080p clip never holds more
raw frames than a few chunks being resized. Frames are resized on CPU threads, or on the GPU
with bit-exact equivalents of the release's kernels (`foleyrt.media.resize`). Frame choice and
pixels stay exactly the release's (spec/pipeline.md §2–§4, spec/synchformer.md §6): the parity
fixture E1 checks both, on the device under test.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import av.error
import numpy as np
import torch
from av.stream import Disposition
from PIL import Image
from torch import Tensor

from foleyrt.errors import ConfigError, InputError, MediaError
from foleyrt.lengths import SIGLIP_FPS, SYNC_FPS, SYNC_WINDOW, Windowing
from foleyrt.media.resize import pil_bilinear_resize, torch_bicubic_aa_resize
from foleyrt.request import MAX_DURATION, MIN_SECONDS

# Containers round durations (e.g. to the audio packet grid): a clip this close to a limit is
# treated as being at it.
DURATION_SLACK_S = 0.05
# The release's `end_sec`: frames later than this are never used by a clip taken in one pass
# (a longer clip is decoded whole, in windows).
FRAME_CAP_S = 15.0
SERVER_MAX_SECONDS = 600.0  # the longest clip a server takes unless configured otherwise
# The largest picture decoded without limits (the CLI, batch): past 8K (8192x4320), a frame
# is a media bomb (a few MB of 16000x16000 MJPEG decode to gigabytes a frame).
ANY_MAX_PIXELS = 8192 * 8192

SIGLIP_SIZE = 512
SYNC_SIZE = 224
PREPROCESS_WORKERS = 8

# Frame rates are stored as rounded fractions (60000/1001, 60.02): this close to a limit is at it.
_FPS_SLACK = 1.01
# Decoding may stop this much before the header's end without the file being called truncated
# (variable frame rates, a last frame shorter than its neighbours).
_TRUNCATION_SLACK_S = 0.5
# Demuxers that happily "open" non-videos: still images and text files (FFmpeg's ANSI-art
# `tty` demuxer accepts any .txt).
_NOT_VIDEO_FORMATS = ("image2", "tty")
# Frames a decoder holds back at most to put them in display order (H.264's largest
# decoded picture buffer): how far ahead `display_timed` looks for a frame's time.
REORDER_DEPTH = 16


# --------------------------------------------------------------------------------------------
# Probing and validation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What the header says about a clip that passed validation."""

    path: Path
    duration_s: float
    fps: float | None
    width: int
    height: int
    codec: str
    n_frames: int | None
    has_audio: bool

    def takes_windows(self, windowing: Windowing) -> bool:
        """Whether the clip is longer than `windowing` takes in one pass (within the slack of
        a header's duration)."""
        return self.duration_s > windowing.single_pass_s + DURATION_SLACK_S


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may decode to, so that a small file cannot expand into gigabytes of frames
    (a few MB of PNG frames can hold 16000x16000 pictures). Checked from the header and the
    packet index before anything is decoded, and on every decoded frame, where FFmpeg's own
    `max_pixels` stops a picture larger than allowed before it is allocated (headers can lie).
    The defaults take real uploads: DCI 4K, 60 fps, ten minutes (long clips are generated in
    windows)."""

    max_pixels: int = 4096 * 2160
    max_fps: float = 60.0
    max_seconds: float = SERVER_MAX_SECONDS

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_fps <= 0:
            raise ConfigError("video limits must be positive")
        if not (math.isfinite(self.max_seconds) and self.max_seconds >= MIN_SECONDS):
            raise ConfigError(f"the longest video must be at least {MIN_SECONDS:g} s, got "
                              f"{self.max_seconds:g}")

    @property
    def max_frames(self) -> int:
        """Frames decoded at most: the highest rate over the longest clip, a second spare."""
        return math.ceil(self.max_fps * (self.max_seconds + 1))


def max_pixels(limits: VideoLimits | None) -> int:
    """The largest picture decoded: the limits', else `ANY_MAX_PIXELS`."""
    return ANY_MAX_PIXELS if limits is None else limits.max_pixels


def _codec_options(limits: VideoLimits | None) -> dict[str, str]:
    """FFmpeg's own cap: a larger picture is refused before it is allocated."""
    return {"max_pixels": str(max_pixels(limits))}


@contextmanager
def open_media(
    path: Path, limits: VideoLimits | None = None
) -> Iterator[av.container.InputContainer]:
    """Open a media file for reading (clips here, mux sources in `audio`), turning every way
    it can fail to open into a one-line MediaError naming it. The frames FFmpeg decodes to
    fill in stream parameters are held to `max_pixels(limits)` too."""
    if not path.exists():
        if path.is_symlink():  # exists() follows links: a dangling one or a loop
            raise MediaError(f"{path}: a symbolic link to no file (dangling, or a loop)")
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a video file")
    try:
        if path.stat().st_size == 0:
            raise MediaError(f"{path}: file is empty")
        # Options for every stream, whatever its index (and none for MPEG-PS or FLV, whose
        # streams appear only while they are probed: PyAV refuses per-stream options there).
        container = av.open(str(path), mode="r", options=_codec_options(limits))
    except PermissionError:
        raise MediaError(f"{path}: cannot be read (permission denied)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(
            f"{path}: not a readable media file ({_reason(exc)}); it may be truncated, "
            "corrupt, or not a video"
        ) from None
    try:
        yield container
    finally:
        container.close()


def _reason(exc: BaseException) -> str:
    """FFmpeg's message without the errno prefix and the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() or type(exc).__name__


def first_video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.VideoStream:
    """The stream the release reads (`streams.video[0]`), refusing files that only look like
    videos to FFmpeg."""
    fmt = container.format.name
    if fmt in _NOT_VIDEO_FORMATS or fmt.endswith("_pipe"):
        raise MediaError(f"{path}: is an image or text file ({fmt}), not a video")
    # A music file's cover art is a one-picture "video" stream: not a video.
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        kind = "an audio-only file" if container.streams.audio else "a file without a video"
        raise MediaError(f"{path}: is {kind}; a video with picture is needed")
    return videos[0]


def codec_name(stream: av.video.VideoStream) -> str:
    """The codec of `stream` (`av1`), not the name of the decoder FFmpeg picked for it
    (`libdav1d`)."""
    return stream.codec_context.codec.canonical_name


def probe_video(path: str | Path, limits: VideoLimits | None = None,
                max_seconds: float = MAX_DURATION) -> VideoInfo:
    """Read the header (and the packet timestamps only when it stores no duration) and check
    the clip is one we can use: a video stream lasting MIN_SECONDS to `max_seconds` (a
    request's `max_duration`), and within `limits` when given (their `max_seconds` too)."""
    path = Path(path)
    with open_media(path, limits) as container:
        stream = first_video_stream(container, path)
        duration = _duration(container, stream, path)
        rate = stream.average_rate or stream.guessed_rate
        ctx = stream.codec_context
        info = VideoInfo(
            path=path,
            duration_s=duration,
            fps=float(rate) if rate else None,
            width=ctx.width,
            height=ctx.height,
            codec=codec_name(stream),
            n_frames=stream.frames or None,
            has_audio=bool(container.streams.audio),
        )
    if duration < MIN_SECONDS - DURATION_SLACK_S:
        raise InputError(
            f"{path}: video is {duration:.2f} s long; at least {MIN_SECONDS:g} s is needed"
        )
    limit = max_seconds if limits is None else min(max_seconds, limits.max_seconds)
    if duration > limit + DURATION_SLACK_S:
        raise InputError(f"{path}: video is {duration:.2f} s long; the limit is {limit:g} s, "
                         "trim the clip (or raise the maximum duration)")
    _check_size(info, max_pixels(limits))
    if limits is not None:
        _check_rate(info, limits)
    return info


def _check_size(info: VideoInfo, pixels: int) -> None:
    if info.width * info.height == 0:  # FFmpeg could not decode one within `pixels`
        raise MediaError(f"{info.path}: frames cannot be read within the limit of "
                         f"{pixels:,} pixels per frame")
    if info.width * info.height > pixels:
        raise MediaError(f"{info.path}: frames are {info.width}x{info.height}; the limit is "
                         f"{pixels:,} pixels per frame, scale the video down")


def _check_rate(info: VideoInfo, limits: VideoLimits) -> None:
    if info.fps is not None and info.fps > limits.max_fps * _FPS_SLACK:
        raise MediaError(f"{info.path}: video runs at {info.fps:.4g} fps; the limit is "
                         f"{limits.max_fps:g} fps, convert it to a lower frame rate")


def scan_video(path: str | Path, limits: VideoLimits) -> VideoInfo:
    """`probe_video` within `limits`, then a pass over the packet index (no decoding): more
    frames than the limit, or packets ending well before the header's end (a file cut short
    whose index survived at the front), are refused before any decoding is queued."""
    info = probe_video(path, limits, limits.max_seconds)
    count, end = 0, -math.inf
    with open_media(info.path, limits) as container:
        stream = first_video_stream(container, info.path)
        header_end, start = _header_end(stream), stream_start(stream)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                count += 1
                if count > limits.max_frames:
                    raise MediaError(
                        f"{info.path}: video has more than {limits.max_frames} frames; the "
                        f"limit is {limits.max_fps:g} fps over {limits.max_seconds:g} s")
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts - start + (packet.duration or 0))
                                         * packet.time_base))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{info.path}: video stream cannot be read ({_reason(exc)}); "
                             "the file looks corrupt or truncated") from None
    if count == 0:
        raise MediaError(f"{info.path}: contains no video frames")
    if header_end is not None and end < header_end - _TRUNCATION_SLACK_S:
        raise MediaError(f"{info.path}: video data stops at {max(end, 0):.2f} s but its header "
                         f"says {header_end:.2f} s; the file looks truncated")
    return info


def _duration(
    container: av.container.InputContainer, stream: av.video.VideoStream, path: Path
) -> float:
    """The video stream's own duration if the header has it; else the container's when the
    video is all it holds; else the span of the video packets. (Matroska and WebM store no
    stream durations: their container's is the longest stream's, 10 minutes of sound
    beside 3 s of picture; and with a late start, the end's time.)"""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if (container.duration is not None and not stream_start(stream)
            and len(container.streams) == 1):
        return container.duration / av.time_base
    frame_s = _frame_interval(stream)  # for packets that do not say how long they last
    start, end = math.inf, -math.inf
    try:
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                shown = float(packet.pts * packet.time_base)
                lasts = float(packet.duration * packet.time_base) if packet.duration else frame_s
                start, end = min(start, shown), max(end, shown + lasts)
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path}: video stream cannot be read ({_reason(exc)})") from None
    if end < start:
        raise MediaError(
            f"{path}: video stream has no timestamps (a raw elementary stream?); remux it "
            "into MP4"
        )
    return end - start


def _header_end(stream: av.video.VideoStream) -> float | None:
    """Where the stream's own header says the video ends, from its start (None: it does
    not say)."""
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def stream_start(stream: av.video.VideoStream) -> int:
    """When the stream's first frame is shown, in its time base: 0 for most files, 1.4 s
    for FFmpeg's MPEG-TS, anything for a broadcast capture or a camcorder's .MTS. Frames are
    timed from there, so a clip's sound does not depend on where its timestamps start (the
    release times them from 0 and holds the first frame until its timestamp). A start before
    0 is left alone: the frames before 0 are the hidden ones of an edit list."""
    if stream.start_time is None or stream.time_base is None:
        return 0
    return max(0, stream.start_time)


def stamped_in_decode_order(container: av.container.InputContainer,
                            stream: av.video.VideoStream) -> bool:
    """AVI stores no presentation times: FFmpeg stamps its packets in decode order, so with
    B-frames the decoder's frames come out in display order carrying one another's times
    (and a stream copy of them plays out of order)."""
    return container.format.name == "avi" and stream.codec_context.has_b_frames


def display_timed(frames: Iterable[av.VideoFrame], reorder: bool, start: int = 0
                  ) -> Iterator[tuple[av.VideoFrame, int | None]]:
    """Each decoded frame with its presentation timestamp. With `reorder`
    (`stamped_in_decode_order`), the k-th frame out of the decoder gets the k-th earliest
    of the frames' timestamps (looking `REORDER_DEPTH` frames ahead: the decoder emits
    display order, and the set of times is right, only their order is not), all moved so
    that the first frame is shown at `start` (the stream's; the guessed stamps lag the
    decode order by the reordering delay)."""
    if not reorder:
        yield from ((frame, frame.pts) for frame in frames)
        return
    held: deque[av.VideoFrame] = deque()
    times: list[int] = []
    lag: int | None = None

    def next_out() -> tuple[av.VideoFrame, int]:
        nonlocal lag
        pts = heapq.heappop(times)
        lag = pts - start if lag is None else lag
        return held.popleft(), pts - lag

    for frame in frames:
        if frame.pts is None:
            yield frame, None  # refused by the caller
            return
        heapq.heappush(times, frame.pts)
        held.append(frame)
        if len(held) > REORDER_DEPTH:
            yield next_out()
    while held:
        yield next_out()


# --------------------------------------------------------------------------------------------
# One decode pass, several tick schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """One output frame of one sampling rate: tick `index` of `rate` took decoded frame
    `frame_index` (counted in decoder output order from 0) shown at `time` seconds.
    Ticks of the same source frame share one `rgb` array (H, W, 3) uint8."""

    rate: int
    index: int
    frame_index: int
    time: float
    rgb: np.ndarray


def iter_ticks(
    path: str | Path,
    rates: Sequence[int] = (SIGLIP_FPS, SYNC_FPS),
    *,
    end_s: float = FRAME_CAP_S,
    limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> Iterator[Tick]:
    """Sample the first video stream at every rate in `rates` from a single decode pass.
    `limits`: frames larger or more numerous than allowed stop the decode with a MediaError;
    `on_frame(frames decoded so far)` runs after every frame and may raise to stop it (a
    cancelled or timed-out job).

    The release's rule, per rate: `t_next` starts at 0.0 and grows by repeated float
    addition of 1/rate (so it drifts exactly like the release's and, like it, can miss a
    tick that coincides with a frame time); each decoded frame at `τ` is emitted while
    `τ >= t_next` (forward sample-and-hold). Frames with `τ < 0` are skipped; decoding stops
    at the first frame later than `end_s` (the release decodes on and discards them). `τ` is
    counted from the stream's start (`stream_start`, 0 for most files), in whole timestamps
    first, so a late clip's frames get exactly the times the same clip from 0 gets.
    """
    path = Path(path)
    schedules = [_Schedule(rate) for rate in rates]
    last_end: float | None = None  # when the last frame used stops being shown
    with open_media(path, limits) as container:
        stream = first_video_stream(container, path)
        stream.thread_type = "AUTO"
        origin = stream_start(stream)
        stream.codec_context.options = _codec_options(limits)
        reorder = stamped_in_decode_order(container, stream)
        # closed explicitly on an early stop, before the container it reads from
        with closing(_decoded(container, stream, path, max_pixels(limits))) as frames:
            for frame_index, (frame, pts) in enumerate(display_timed(frames, reorder, origin)):
                _check_frame(path, frame, frame_index, limits)
                if on_frame is not None:
                    on_frame(frame_index + 1)
                if pts is None or frame.time_base is None:
                    raise MediaError(
                        f"{path}: video frames carry no timestamps; remux the file into MP4"
                    )
                tau = float((pts - origin) * frame.time_base)  # `frame.time` from 0
                if tau < 0:
                    continue
                if tau > end_s:
                    break
                due = [(s.rate, n) for s in schedules for n in s.advance(tau)]
                if due:  # convert only frames that some schedule takes
                    rgb = frame.to_ndarray(format="rgb24")
                    for rate, n in due:
                        yield Tick(rate, n, frame_index, tau, rgb)
                last_end = tau + _shown_for(frame, stream)
        _check_complete(path, stream, last_end, end_s)


def _check_frame(path: Path, frame: av.VideoFrame, index: int,
                 limits: VideoLimits | None) -> None:
    """The limits again on what was really decoded (a header may understate either)."""
    if limits is not None and index >= limits.max_frames:
        raise MediaError(f"{path}: video decodes to more than {limits.max_frames} frames; the "
                         f"limit is {limits.max_fps:g} fps over {limits.max_seconds:g} s")
    if frame.width * frame.height > max_pixels(limits):
        raise MediaError(f"{path}: a frame is {frame.width}x{frame.height}; the limit is "
                         f"{max_pixels(limits):,} pixels per frame")


class _Schedule:
    """One rate's tick clock, accumulated by repeated float addition like the release's."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.step = 1.0 / rate
        self.t_next = 0.0
        self.emitted = 0

    def advance(self, tau: float) -> range:
        """Indices of the ticks a frame at `tau` fills (none, one, or several)."""
        first = self.emitted
        while tau >= self.t_next:
            self.t_next += self.step
            self.emitted += 1
        return range(first, self.emitted)


def _decoded(
    container: av.container.InputContainer, stream: av.video.VideoStream, path: Path,
    pixels: int,
) -> Generator[av.VideoFrame, None, None]:
    """Decoded frames in output order; decoder errors become a one-line MediaError (FFmpeg
    refuses a picture over `pixels` that way too, unnamed)."""
    try:
        for packet in container.demux(stream):
            yield from packet.decode()
    except av.error.FFmpegError as exc:
        raise MediaError(
            f"{path}: video cannot be decoded ({_reason(exc)}); the file looks corrupt or "
            f"truncated, or a frame is over the limit of {pixels:,} pixels per frame"
        ) from None


def _shown_for(frame: av.VideoFrame, stream: av.video.VideoStream) -> float:
    """Seconds `frame` stays on screen: its own duration, else the stream's frame interval."""
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    return _frame_interval(stream)


def _frame_interval(stream: av.video.VideoStream) -> float:
    """Seconds between frames at the stream's rate (0 when it states none)."""
    rate = stream.average_rate or stream.guessed_rate
    return 1 / float(rate) if rate else 0.0


def _check_complete(
    path: Path, stream: av.video.VideoStream, last_end: float | None, end_s: float
) -> None:
    """A file cut short keeps its header, so it decodes "successfully" to fewer frames:
    compare the end of the last frame used (its start plus its duration: a 1 fps clip's last
    frame starts a whole second before the end) with the header's end, when the video
    stream records one."""
    if last_end is None:
        raise MediaError(f"{path}: contains no decodable video frames")
    header_end = _header_end(stream)
    if header_end is not None and last_end < min(header_end, end_s) - _TRUNCATION_SLACK_S:
        raise MediaError(
            f"{path}: video stops at {last_end:.2f} s but its header says {header_end:.2f} s; "
            "the file looks truncated"
        )


# --------------------------------------------------------------------------------------------
# Preprocessing (exact release numerics)
# --------------------------------------------------------------------------------------------


def siglip_pixels(rgb: np.ndarray, size: int = SIGLIP_SIZE) -> Tensor:
    """(3, size, size) uint8: Pillow's bilinear (antialiasing) resize to a square, aspect
    ratio not kept; what torchvision's classic `Resize((512, 512))` does with a PIL image."""
    image = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def sync_resize_shape(height: int, width: int, size: int = SYNC_SIZE) -> tuple[int, int]:
    """Shorter side to `size`, the longer one `int(size * long / short)` (torchvision v2)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop(x: Tensor, size: int = SYNC_SIZE) -> Tensor:
    """`[..., H, W]` -> `[..., size, size]`, torchvision's rounding of the offsets."""
    top = int(round((x.shape[-2] - size) / 2))
    left = int(round((x.shape[-1] - size) / 2))
    return x[..., top : top + size, left : left + size]


def sync_pixels_batch(frames: Sequence[np.ndarray], size: int = SYNC_SIZE) -> list[Tensor]:
    """(3, size, size) uint8 per frame: shorter side to `size`, then a center crop. Same-sized
    frames go in one call: the op parallelises over frames and channels, and each frame's
    result is what it would be alone.

    PyTorch's native uint8 antialiased bicubic on the CPU, as torchvision v2 calls it: it
    rounds to uint8 between its two passes, so a float resize (or PIL's) differs by up to
    several levels (spec/synchformer.md §6)."""
    nchw = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    height, width = nchw.shape[-2:]
    resized = torch.nn.functional.interpolate(
        nchw, size=sync_resize_shape(height, width, size), mode="bicubic", antialias=True,
        align_corners=False,
    )
    return list(center_crop(resized, size).contiguous())


def _siglip_batch(frames: Sequence[np.ndarray]) -> list[Tensor]:
    return [siglip_pixels(rgb) for rgb in frames]


def upload_frames(frames: Sequence[np.ndarray], device: torch.device) -> Tensor:
    """Same-sized (H, W, 3) frames -> `[n, 3, H, W]` uint8 on `device`, through one pinned
    staging buffer, so the copy does not hold up the decoder."""
    staging = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8,
                          pin_memory=device.type == "cuda")
    host = staging.numpy()
    for i, rgb in enumerate(frames):
        host[i] = rgb
    return staging.to(device, non_blocking=True).permute(0, 3, 1, 2)


# Per-frame results: a list with a tensor per frame, or one tensor whose rows are the frames.
PerFrame = Sequence[Tensor] | Tensor


@dataclass(frozen=True)
class FramePrep:
    """Where and how a branch's frames are resized: on the CPU (Pillow and PyTorch's native
    kernels, on a thread pool) or on `device` with `foleyrt.media.resize`'s bit-exact
    equivalents (queued by the thread that runs the transform; the GPU runs them while
    decoding goes on)."""

    device: torch.device
    tensor_ops: bool  # resize with `foleyrt.media.resize` on `device`, not on CPU threads

    @classmethod
    def for_device(cls, device: torch.device | None) -> FramePrep:
        device = device or torch.device("cpu")
        return cls(device, tensor_ops=device.type != "cpu")

    @property
    def on_cpu(self) -> bool:
        return not self.tensor_ops

    @property
    def siglip_chunk(self) -> int:
        """Frames per transform call: small on the CPU, where each frame is its own Pillow
        call and chunks only feed the pool; larger on a device, where a call is launches."""
        return 2 if self.on_cpu else 8

    sync_chunk = 16

    def siglip(self, frames: Sequence[np.ndarray]) -> PerFrame:
        """(3, 512, 512) uint8 per frame (a list, or one `[n, 3, 512, 512]` tensor)."""
        if self.on_cpu:
            return _siglip_batch(frames)
        return pil_bilinear_resize(upload_frames(frames, self.device),
                                   (SIGLIP_SIZE, SIGLIP_SIZE))

    def sync(self, frames: Sequence[np.ndarray]) -> PerFrame:
        """(3, 224, 224) uint8 per frame (a list, or one `[n, 3, 224, 224]` tensor)."""
        if self.on_cpu:
            return sync_pixels_batch(frames)
        x = upload_frames(frames, self.device)
        return center_crop(torch_bicubic_aa_resize(x, sync_resize_shape(*x.shape[-2:])))


def to_model_range(u8: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [-1, 1] (`/255`, then mean 0.5 / std 0.5), on u8's device:
    the pipeline ships uint8 to the GPU (4x less traffic) and converts there."""
    return u8.to(torch.float32).div(255).sub(0.5).div(0.5)


# --------------------------------------------------------------------------------------------
# The decoded clip
# --------------------------------------------------------------------------------------------


@dataclass
class DecodedClip:
    """Both model inputs of a clip, uint8 (on the CPU, or on the device that resized them),
    with the source frame of every output frame. `duration_s` (= T25 / 25) is the release's
    `audio_len_in_s`: the length of audio the model is asked for, which may be a little
    shorter than `info.duration_s`."""

    info: VideoInfo
    siglip_u8: Tensor
    sync_u8: Tensor
    siglip_source_index: list[int]
    siglip_source_time: list[float]
    sync_source_index: list[int]
    sync_source_time: list[float]
    duration_s: float


class FrameBranch:
    """Frames of one rate, each source frame transformed once however often it is held.

    New source frames are transformed in chunks while decoding goes on: on `pool` threads
    (Pillow and PyTorch release the GIL; `max_pending` chunks in flight bound the raw frames
    held in memory), or, without a pool, in the caller's thread. What the transform returns
    per source frame is kept: pixels, or an encoder's features."""

    def __init__(self, transform: Callable[[Sequence[np.ndarray]], PerFrame],
                 chunk: int, pool: ThreadPoolExecutor | None = None,
                 max_pending: int = 2) -> None:
        self.transform = transform
        self.pool = pool
        self.chunk = chunk
        self.max_pending = max_pending
        self.done: list[Tensor] = []  # per source frame, in order
        self.jobs: deque[Future[PerFrame]] = deque()
        self.batch: list[np.ndarray] = []
        self.slots: list[int] = []  # per tick: index of its transformed source frame
        self.source_index: list[int] = []
        self.source_time: list[float] = []
        self.n_sources = 0

    def add(self, tick: Tick) -> None:
        held = bool(self.source_index) and self.source_index[-1] == tick.frame_index
        if not held:
            if self.batch and self.batch[0].shape != tick.rgb.shape:
                self.flush()  # a resolution change: batches must hold one frame size
            self.batch.append(tick.rgb)
            self.n_sources += 1
            if len(self.batch) == self.chunk:
                self.flush()
        self.slots.append(self.n_sources - 1)
        self.source_index.append(tick.frame_index)
        self.source_time.append(tick.time)

    def flush(self) -> None:
        """Transform the frames gathered so far (a partial chunk too)."""
        if not self.batch:
            return
        if self.pool is None:
            self.done.extend(self.transform(self.batch))
        else:
            self.jobs.append(self.pool.submit(self.transform, self.batch))
        self.batch = []
        while len(self.jobs) > self.max_pending:
            self.done.extend(self.jobs.popleft().result())

    def finish(self) -> None:
        self.flush()
        while self.jobs:
            self.done.extend(self.jobs.popleft().result())

    def stacked(self) -> Tensor:
        """Every tick's output, `[ticks, ...]`."""
        self.finish()
        return torch.stack([self.done[i] for i in self.slots])

    def __len__(self) -> int:
        return len(self.slots)


def check_sync_length(info: VideoInfo, sync: FrameBranch, sync_fps: int = SYNC_FPS) -> None:
    """Enough Synchformer frames for one window. Frames are sampled only up to the last
    frame's start (the release's rule), so a clip of a few long-held frames (a still picture
    held for seconds) is too short however long its header says it lasts."""
    if len(sync) >= SYNC_WINDOW:
        return
    needed = f"at least {SYNC_WINDOW / sync_fps:.2f} s is needed"
    if not sync.source_time:
        raise MediaError(f"{info.path}: no video frame could be decoded; {needed}")
    raise MediaError(
        f"{info.path}: only {len(sync) / sync_fps:.2f} s of video can be used: frames are "
        f"sampled up to the last frame's start, {sync.source_time[-1]:.2f} s of the "
        f"{info.duration_s:.2f} s the file lasts; {needed}"
    )


def assemble_clip(
    info: VideoInfo,
    ticks: Iterable[Tick],
    siglip_fps: int = SIGLIP_FPS,
    sync_fps: int = SYNC_FPS,
    prep: FramePrep | None = None,
) -> DecodedClip:
    """Preprocess ticks of the two rates as they arrive (see `decode_clip`)."""
    if siglip_fps == sync_fps:
        raise ValueError("the SigLIP2 and Synchformer rates must differ")
    prep = prep or FramePrep.for_device(None)
    # As many threads as PyTorch may use here: a decoding process of a pool is given its
    # share of the cores (`batch.decoders.DecodePool`), and more threads would oversubscribe it.
    workers = max(1, min(PREPROCESS_WORKERS, torch.get_num_threads()))
    threads = (ThreadPoolExecutor(workers, thread_name_prefix="foleyrt-frames") if prep.on_cpu
               else nullcontext(None))
    with threads as pool:
        siglip = FrameBranch(prep.siglip, prep.siglip_chunk, pool, max_pending=2 * workers)
        sync = FrameBranch(prep.sync, prep.sync_chunk, pool)
        branches = {siglip_fps: siglip, sync_fps: sync}
        for tick in ticks:
            branches[tick.rate].add(tick)
        siglip_u8, sync_u8 = siglip.stacked(), sync.stacked()
    check_sync_length(info, sync, sync_fps)
    return DecodedClip(
        info=info,
        siglip_u8=siglip_u8,
        sync_u8=sync_u8,
        siglip_source_index=siglip.source_index,
        siglip_source_time=siglip.source_time,
        sync_source_index=sync.source_index,
        sync_source_time=sync.source_time,
        duration_s=len(sync) / sync_fps,
    )


def decode_clip(
    path: str | Path, *, siglip_fps: int = SIGLIP_FPS, sync_fps: int = SYNC_FPS,
    device: torch.device | None = None, limits: VideoLimits | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> DecodedClip:
    """Validate `path` and decode it once into the SigLIP2 frames (siglip_fps, 512², uint8)
    and the Synchformer frames (sync_fps, 224², uint8), resized on `device` (default: the
    CPU); `limits` and `on_frame` as in `iter_ticks`."""
    info = probe_video(path, limits)
    ticks = iter_ticks(info.path, (siglip_fps, sync_fps), limits=limits, on_frame=on_frame)
    return assemble_clip(info, ticks, siglip_fps, sync_fps, FramePrep.for_device(device))
