"""Synthetic clips made with PyAV: test inputs for the test-suite, the benchmark and smoke
runs, so no media has to be downloaded or committed for them."""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 48_000
# Variable-rate clips are stamped in milliseconds, like most phone recordings.
VFR_TIME_BASE = Fraction(1, 1000)


@dataclass(frozen=True)
class ClipSpec:
    codec: str
    suffix: str
    rate: Fraction
    seconds: float
    size: tuple[int, int] = (64, 48)  # width, height
    audio_tracks: int = 0
    options: dict[str, str] = field(default_factory=dict)
    container_options: dict[str, str] = field(default_factory=dict)
    pix_fmt: str = "yuv420p"
    rotation: int = 0  # display rotation, degrees counter-clockwise (a phone held upright)
    # Presentation times in seconds for a variable frame rate; None: frame i at i / rate.
    frame_times: tuple[Fraction, ...] | None = None

    @property
    def n_frames(self) -> int:
        if self.frame_times is not None:
            return len(self.frame_times)
        return round(self.seconds * self.rate)


def picture(i: int, width: int, height: int) -> np.ndarray:
    """A frame that changes every time (moving bar, shifting tint) so encoders code motion."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (i * 7) % 256
    img[..., 2] = 255 - (i * 3) % 256
    img[:, (i * 3) % width] = 255
    return img


def encode_clip(path: Path, spec: ClipSpec) -> Path:
    with av.open(str(path), "w", options=spec.container_options) as out:
        video = out.add_stream(spec.codec, rate=spec.rate, options=spec.options)
        assert isinstance(video, av.VideoStream)  # PyAV types a codec named at run time loosely
        video.width, video.height = spec.size
        video.pix_fmt = spec.pix_fmt
        if spec.rotation:
            video.set_display_rotation(spec.rotation)
        time_base = None
        if spec.frame_times is not None:
            time_base = video.time_base = video.codec_context.time_base = VFR_TIME_BASE
        audio = [out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
                 for _ in range(spec.audio_tracks)]
        for i in range(spec.n_frames):
            frame = av.VideoFrame.from_ndarray(picture(i, *spec.size), format="rgb24")
            if time_base is None:
                frame.pts = i
            else:
                assert spec.frame_times is not None
                frame.pts, frame.time_base = round(spec.frame_times[i] / time_base), time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for stream in audio:
            encode_tone(out, stream, spec.seconds)
    return path


def encode_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    """A quiet 440 Hz tone on `stream` (the clip's own sound, which outputs must drop)."""
    n = int(seconds * AUDIO_RATE)
    tone = (0.1 * np.sin(np.arange(n) * 2 * np.pi * 440 / AUDIO_RATE)).astype(np.float32)
    for start in range(0, n, 1024):
        frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp",
                                           layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_test_clip(path: str | Path, seconds: float, *, width: int = 320, height: int = 240,
                    fps: int = 30) -> Path:
    """An H.264 MP4 of `seconds` at `fps` and `width` x `height`."""
    return encode_clip(Path(path), ClipSpec("libx264", ".mp4", Fraction(fps), seconds,
                                            size=(width, height)))


def write_test_clips(folder: Path, count: int, seconds: float, *, width: int = 320,
                     height: int = 240, fps: int = 30) -> list[Path]:
    """`count` copies of one `write_test_clip` (distinct names: one output each), encoded
    once; clips already in `folder` are kept, so several runs can measure the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [folder / f"clip_{k:04d}.mp4" for k in range(count)]
    if not clips[0].is_file():
        write_test_clip(clips[0], seconds, width=width, height=height, fps=fps)
    for clip in clips[1:]:
        if not clip.is_file():
            shutil.copyfile(clips[0], clip)
    return clips


def png_frame(width: int, height: int) -> bytes:
    """A black RGB PNG, compressed row by row: a 8192x8192 picture (200 MB decoded) is a few
    hundred kB, the stuff of media bombs."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte + pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def png_movie(path: Path, sizes: list[tuple[int, int]], fps: int = 2, *,
              audio_first: bool = False) -> Path:
    """A QuickTime file of PNG frames of the given sizes, muxed without decoding them; its
    header states the first frame's size. `audio_first`: a sound track is stream 0."""
    frames = {size: png_frame(*size) for size in set(sizes)}
    with av.open(str(path), "w", format="mov") as out:
        audio = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio_first else None
        stream = out.add_stream("png", rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "rgb24"
        for k, size in enumerate(sizes):
            packet = av.Packet(frames[size])
            packet.stream = stream
            packet.pts = packet.dts = k
            packet.duration = 1
            packet.time_base = Fraction(1, fps)
            out.mux(packet)
        if audio is not None:
            encode_tone(out, audio, len(sizes) / fps)
    return path
