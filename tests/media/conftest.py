"""Test media made on the fly with PyAV: small clips of several codecs, containers, rates and
durations, and the broken inputs users actually send. Built once per session, on first use."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from av.stream import Disposition
from PIL import Image

from foleyrt.media.synthetic import AUDIO_RATE, ClipSpec, encode_clip, encode_tone, picture

_VP9 = {"deadline": "realtime", "cpu-used": "8"}
_X265 = {"x265-params": "log-level=error"}


def _dropped_frames(seconds: float) -> tuple[Fraction, ...]:
    """Frames every 40 ms with every fifth held for 160 ms, as a phone dropping frames
    stamps them: x264's decode times for these leave the track's sample durations 120 ms
    short of its presentation span."""
    times, t = [], Fraction(0)
    while t < seconds:
        times.append(t)
        t += Fraction(160 if len(times) % 5 == 0 else 40, 1000)
    return tuple(times)


CLIPS: dict[str, ClipSpec] = {
    "h264_8s_30": ClipSpec("libx264", ".mp4", Fraction(30), 8),
    "h264_8s_25": ClipSpec("libx264", ".mp4", Fraction(25), 8),
    "h264_1s_30": ClipSpec("libx264", ".mp4", Fraction(30), 1),
    "h264_10s_24": ClipSpec("libx264", ".mp4", Fraction(24), 10),
    "h264_5s_25": ClipSpec("libx264", ".mp4", Fraction(25), 5),
    "h264_2s_60": ClipSpec("libx264", ".mp4", Fraction(60), 2),
    "h264_3s_30_audio": ClipSpec("libx264", ".mp4", Fraction(30), 3, audio_tracks=1),
    "h264_2s_30_portrait": ClipSpec("libx264", ".mp4", Fraction(30), 2, size=(48, 64)),
    "h264_16s_30": ClipSpec("libx264", ".mp4", Fraction(30), 16),
    "h264_0p5s_30": ClipSpec("libx264", ".mp4", Fraction(30), 0.5),
    # one picture shown for 3 s: long by its header, a single frame to sample
    "h264_3s_still": ClipSpec("libx264", ".mp4", Fraction(1, 3), 3),
    "h264_4s_30_faststart": ClipSpec(
        "libx264", ".mp4", Fraction(30), 4, container_options={"movflags": "faststart"}
    ),
    "vp9_2s_24": ClipSpec("libvpx-vp9", ".webm", Fraction(24), 2, options=_VP9),
    "mpeg4_3s_2997": ClipSpec("mpeg4", ".mov", Fraction(30000, 1001), 3),
    # What users bring besides: codecs MP4 cannot carry, codecs whose decoder has another
    # name, pixel formats, containers, sizes, rates and streams of every kind.
    "gif_2s_25": ClipSpec("gif", ".gif", Fraction(25), 2, pix_fmt="rgb8"),
    "gif_2s_25_odd": ClipSpec("gif", ".gif", Fraction(25), 2, size=(65, 49), pix_fmt="rgb8"),
    "vp8_2s_24": ClipSpec("libvpx", ".webm", Fraction(24), 2),
    "vp9_2s_24_odd": ClipSpec("libvpx-vp9", ".webm", Fraction(24), 2, size=(65, 49),
                              options=_VP9),
    "av1_2s_24": ClipSpec("libsvtav1", ".mp4", Fraction(24), 2, size=(64, 64)),
    "hevc_2s_25": ClipSpec("libx265", ".mkv", Fraction(25), 2, options=_X265),
    "h264_2s_25_10bit": ClipSpec("libx264", ".mp4", Fraction(25), 2, pix_fmt="yuv420p10le"),
    "h264_2s_25_444": ClipSpec("libx264", ".mp4", Fraction(25), 2, pix_fmt="yuv444p"),
    "mjpeg_2s_25": ClipSpec("mjpeg", ".avi", Fraction(25), 2, pix_fmt="yuvj420p"),
    # Containers whose streams appear only while FFmpeg probes them (no per-stream options)
    "mpeg2_2s_25_ps": ClipSpec("mpeg2video", ".mpg", Fraction(25), 2),
    "h264_2s_25_flv": ClipSpec("libx264", ".flv", Fraction(25), 2, audio_tracks=1),
    "h264_3s_1": ClipSpec("libx264", ".mp4", Fraction(1), 3),
    "h264_1p5s_120": ClipSpec("libx264", ".mp4", Fraction(120), 1.5),
    "h264_2s_vfr": ClipSpec("libx264", ".mp4", Fraction(25), 2, frame_times=_dropped_frames(2)),
    "h264_2s_25_two_audio": ClipSpec("libx264", ".mp4", Fraction(25), 2, audio_tracks=2),
    "h264_2s_30_rotated": ClipSpec("libx264", ".mp4", Fraction(30), 2, size=(48, 64),
                                   rotation=90),
}


def _empty(path: Path) -> Path:
    path.touch()
    return path


def _text(path: Path) -> Path:
    path.write_text("not a video\n" * 50)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (64, 48), "red").save(path)
    return path


def _wav(path: Path) -> Path:
    soundfile.write(path, np.zeros(AUDIO_RATE, np.float32), AUDIO_RATE)
    return path


def _audio_only_m4a(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        encode_tone(out, out.add_stream("aac", rate=AUDIO_RATE, layout="mono"), 2.0)
    return path


def _audio_with_cover_m4a(path: Path) -> Path:
    """Music files carry cover art as a one-picture video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        cover.disposition = Disposition.attached_pic
        art = av.VideoFrame.from_ndarray(picture(0, 64, 48), format="rgb24")
        art = art.reformat(format="yuvj420p")
        art.pts = 0
        out.mux(list(cover.encode(art)) + list(cover.encode(None)))
        encode_tone(out, audio, 2.0)
    return path


def _truncated(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Media:
    """`media["name"]` -> path of a generated file (clips of CLIPS and the bad inputs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}
        self._bad: dict[str, Callable[[Path], Path]] = {
            "empty.mp4": _empty,
            "notes.txt": _text,
            "image.png": _png,
            "audio.m4a": _audio_only_m4a,
            "audio_cover.m4a": _audio_with_cover_m4a,
            "audio.wav": _wav,
            # moov atom at the end: half a file has no index at all
            "truncated.mp4": lambda p: _truncated(self["h264_8s_30"], p),
            # moov atom first: the header is intact, the frames stop half-way
            "truncated_faststart.mp4": lambda p: _truncated(self["h264_4s_30_faststart"], p),
        }

    def __getitem__(self, name: str) -> Path:
        if name not in self._made:
            if name in CLIPS:
                spec = CLIPS[name]
                if spec.codec not in av.codecs_available:
                    pytest.skip(f"this FFmpeg has no {spec.codec} encoder")
                self._made[name] = encode_clip(self.root / f"{name}{spec.suffix}", spec)
            else:
                self._made[name] = self._bad[name](self.root / name)
        return self._made[name]


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return Media(tmp_path_factory.mktemp("media"))
