"""The picture of an MP4 result: the source's video stream copied packet for packet when MP4
can carry its codec (and its packets carry their presentation times: not AVI's with
B-frames), otherwise re-encoded to H.264 with the same frames and timestamps.

Either way the packets' decode timestamps are rebuilt from their presentation times (the
n-th packet in decode order gets the n-th earliest presentation time, less one constant
delay) and the last frame gets its own duration. A variable-frame-rate source's own decode
times often leave the track's sample durations adding up to less than its presentation
span (FFmpeg then reports the video shorter than it plays, and a sound track cut
to the span looks too long); rebuilt, the two agree. A constant-rate source's decode times
already follow that rule and come out unchanged.

A copied picture is read twice: once for its timestamps (to rebuild them), then packet by
packet while the output is written, so a long video's packets never sit in memory together.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Final

import av
import av.container

from foleyrt.errors import MediaError
from foleyrt.media.video import (
    codec_name,
    display_timed,
    first_video_stream,
    open_media,
    stamped_in_decode_order,
    stream_start,
)

log = logging.getLogger(__name__)

# Codecs (by codec, not decoder: libdav1d decodes av1, libvpx vp8) that MP4 carries and
# common players play; the others (GIF, VP8, ProRes, ...) are re-encoded.
MP4_VIDEO_CODECS = frozenset(
    {"h264", "hevc", "av1", "vp9", "mpeg4", "mjpeg", "mpeg1video", "mpeg2video"}
)
REENCODE_CODEC: Final = "libx264"
# Visually transparent for a sound-design preview, and fast on a CPU.
REENCODE_OPTIONS = {"crf": "18", "preset": "veryfast"}
REENCODE_PIX_FMT = "yuv420p"  # what every player decodes; it needs even dimensions


@dataclass
class VideoTrack:
    """The output's video packets, in decode order (read as they are muxed), and what they
    span."""

    packets: Iterator[av.Packet]
    seconds: float  # first frame shown to the end of the last one


@dataclass
class Timing:
    """A packet's timestamps, kept without its data (what `retime` reads and rewrites)."""

    pts: int | None
    dts: int | None
    duration: int


def add_video_track(
    out: av.container.OutputContainer, source: av.video.VideoStream, path: Path
) -> VideoTrack:
    """Add `source`'s picture to `out`: copied if MP4 carries its codec, else re-encoded to
    H.264 (said in one log line). The timestamps are read before returning; a copy's packets
    are read again from `path` while they are muxed."""
    codec = codec_name(source)
    reorder = stamped_in_decode_order(_input(source), source)
    if codec in MP4_VIDEO_CODECS and not reorder:
        stream = out.add_stream_from_template(source, opaque=True)
        if codec == "hevc":  # Apple's players want `hvc1`, FFmpeg's MP4 default is `hev1`
            stream.codec_context.codec_tag = "hvc1"
        read: Iterable[av.Packet] = _with_data(source)
        packets: Iterable[av.Packet] = _copied(path)
    else:
        why = ("its AVI stores no presentation times for the B-frames of its" if reorder
               else "MP4 cannot carry its")
        log.info("%s: %s %s video; re-encoding the picture to H.264", path, why, codec)
        stream, encoded = _reencode(out, source, path, reorder)
        read = packets = encoded
    timings, time_base = [], None
    for p in read:
        timings.append(Timing(p.pts, p.dts, p.duration or 0))
        time_base = time_base or p.time_base
    if not timings or time_base is None:
        raise MediaError(f"{path}: has no video to write")
    if any(t.pts is None for t in timings):
        raise MediaError(f"{path}: video packets carry no timestamps; remux the file into MP4")
    _start_at_zero(timings, stream_start(source))
    seconds = float(retime(timings) * time_base)
    return VideoTrack(_retimed(packets, timings, stream, path), seconds)


def _start_at_zero(timings: Sequence[Timing], start: int) -> None:
    """Shift the picture's timestamps so its first frame is shown at 0, where the sound
    starts (`start`: `stream_start`, in the packets' time base, the source's)."""
    for timing in timings:
        assert timing.pts is not None
        timing.pts -= start
        if timing.dts is not None:
            timing.dts -= start


def _with_data(source: av.video.VideoStream) -> Iterator[av.Packet]:
    return (p for p in _input(source).demux(source) if p.size)


def _copied(path: Path) -> Iterator[av.Packet]:
    """The first video stream's packets of `path` again, in decode order."""
    with open_media(path) as container:
        yield from _with_data(first_video_stream(container, path))


def _retimed(packets: Iterable[av.Packet], timings: Sequence[Timing],
             stream: av.video.VideoStream, path: Path) -> Iterator[av.Packet]:
    try:
        for packet, timing in zip(packets, timings, strict=True):
            packet.pts, packet.dts = timing.pts, timing.dts
            packet.duration, packet.stream = timing.duration, stream
            yield packet
    except ValueError:  # the second read found another number of packets
        raise MediaError(f"{path}: the video changed while it was being written") from None


def retime(packets: Sequence[Timing]) -> int:
    """Rebuild the decode timestamps of `packets` (one stream, in decode order) and give each
    packet its presentation duration; return the span from the first frame shown (at 0 or
    later) to the end of the last one, in the packets' time base. See the module docstring
    for why.

    The delay is the source's own first-packet offset where that keeps every decode time at
    or before its presentation time, else the smallest that does. The last frame lasts as
    long as the source says, else as long as the typical frame."""
    shown = sorted(packets, key=_pts)
    _shown_in_turn(shown)
    times = [_pts(p) for p in shown]
    steps = [b - a for a, b in pairwise(times)]
    last = shown[-1].duration or (round(statistics.median(steps)) if steps else 0)
    first = packets[0]
    lead = _pts(first) - first.dts if first.dts is not None else 0
    delay = max(lead, *(t - _pts(p) for t, p in zip(times, packets, strict=True)))
    for packet, t in zip(packets, times, strict=True):
        packet.dts = t - delay
    for packet, step in zip(shown, steps, strict=False):  # the last has no step
        packet.duration = step
    # The muxer writes the track's length as the decode span plus the last decoded packet's
    # duration: that packet gets the last frame's.
    shown[-1].duration = packets[-1].duration = last
    # Frames before 0 are an edit list's hidden ones (a stream-copied cut): not played.
    return times[-1] + last - max(times[0], 0)


def _shown_in_turn(shown: Sequence[Timing]) -> None:
    """Presentation times that strictly increase (`shown`: sorted by them): MP4 needs it of
    the decode times rebuilt from them. A frame stamped with an earlier frame's time is
    moved one tick past it, as FFmpeg's own remuxing moves such a decode time."""
    moved = 0
    for before, timing in pairwise(shown):
        if _pts(timing) <= _pts(before):
            timing.pts = _pts(before) + 1
            moved += 1
    if moved:
        log.info("%d video frame(s) repeat an earlier frame's time; each is shown one tick "
                 "later", moved)


def _pts(timing: Timing) -> int:
    assert timing.pts is not None  # add_video_track refuses packets without
    return timing.pts


def _input(source: av.video.VideoStream) -> av.container.InputContainer:
    """The container `source` is read from (PyAV types a stream's container as the base)."""
    container = source.container
    assert isinstance(container, av.container.InputContainer)
    return container


def _even(n: int) -> int:
    return n + n % 2


def _reencode(
    out: av.container.OutputContainer, source: av.video.VideoStream, path: Path,
    reorder: bool,
) -> tuple[av.video.VideoStream, list[av.Packet]]:
    """Decode `source` and encode every frame at its own timestamp (`display_timed`), with
    its own duration; odd sizes are stretched by a pixel to the even size 4:2:0 needs, and
    the source's display rotation and pixel aspect ratio are kept."""
    time_base = source.time_base or Fraction(1, 90_000)
    stream = out.add_stream(REENCODE_CODEC, rate=source.average_rate or source.guessed_rate,
                            options=REENCODE_OPTIONS)
    ctx = source.codec_context
    stream.width, stream.height = _even(ctx.width), _even(ctx.height)
    stream.pix_fmt = REENCODE_PIX_FMT
    aspect = source.sample_aspect_ratio or ctx.sample_aspect_ratio
    if aspect:  # non-square pixels (DV, SD broadcast, anamorphic): shown as wide as before
        stream.codec_context.sample_aspect_ratio = aspect
    stream.time_base = stream.codec_context.time_base = time_base
    durations: dict[int, int] = {}
    packets: list[av.Packet] = []
    source.thread_type = "AUTO"
    for frame, pts in display_timed(_input(source).decode(source), reorder,
                                    stream_start(source)):
        if pts is None:
            raise MediaError(f"{path}: video frames carry no timestamps; remux the file into MP4")
        if not durations and frame.rotation:
            stream.set_display_rotation(frame.rotation)
        durations[pts] = frame.duration
        picture = frame.reformat(width=stream.width, height=stream.height,
                                 format=REENCODE_PIX_FMT)
        picture.pts, picture.time_base = pts, time_base
        packets.extend(stream.encode(picture))
    packets.extend(stream.encode(None))
    for packet in packets:
        packet.duration = 0 if packet.pts is None else durations.get(packet.pts, 0)
    return stream, packets
