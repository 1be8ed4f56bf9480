"""Issue 19's done-when: every kind of clip users bring gives a valid 48 kHz WAV and a playable
MP4 whose audio ends with the picture, through the whole pipeline (tiny random model, 2
steps, one pipeline for all clips as the server and batch hold it)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.media.synthetic import ClipSpec, encode_clip, encode_tone, picture
from foleyrt.media.video import codec_name, decode_clip, probe_video
from foleyrt.media.video_track import Timing, retime
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import GenerationRequest
from tests.media.conftest import Media

RATE = 48_000
TOLERANCE_S = 0.020
COPY, REENCODE = "copy", "re-encode"
# clip -> how its MP4 gets the picture
UNUSUAL = {
    "gif_2s_25": REENCODE,
    "gif_2s_25_odd": REENCODE,
    "vp8_2s_24": REENCODE,
    "vp9_2s_24": COPY,
    "vp9_2s_24_odd": COPY,
    "av1_2s_24": COPY,
    "hevc_2s_25": COPY,
    "h264_2s_25_10bit": COPY,
    "h264_2s_25_444": COPY,
    "mjpeg_2s_25": COPY,
    "mpeg2_2s_25_ps": COPY,
    "h264_2s_25_flv": COPY,
    "h264_3s_1": COPY,
    "h264_1p5s_120": COPY,
    "h264_2s_vfr": COPY,
    "h264_2s_25_two_audio": COPY,
    "h264_2s_30_rotated": COPY,
}


@pytest.fixture(scope="module")
def pipeline() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cpu"))


def _picture(path: Path) -> tuple[str, list[bytes], list[float], int]:
    """(codec, packet bytes, sorted frame times, display rotation) of the first video."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [bytes(p) for p in c.demux(stream) if p.size]
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return (stream.codec_context.codec.canonical_name, packets,
            sorted(float(f.time) for f in frames), frames[0].rotation)


@pytest.mark.parametrize("clip", list(UNUSUAL))
def test_unusual_clip_gives_a_wav_and_a_playable_mp4(
    pipeline: FoleyPipeline, media: Media, tmp_path: Path, clip: str
) -> None:
    source = media[clip]
    result = pipeline.generate(source, GenerationRequest(prompt="footsteps", steps=2, seed=7))
    (wav,) = result.save(tmp_path / "out.wav")
    (mp4,) = result.save(tmp_path / "out.mp4")

    info = soundfile.info(str(wav))
    assert (info.samplerate, info.subtype) == (RATE, "FLOAT")
    assert abs(info.duration - probe_video(source).duration_s) <= TOLERANCE_S

    with av.open(str(mp4)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", RATE, 2)
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
        assert sum(f.samples for f in c.decode(audio)) > 0  # the sound track decodes
    assert abs(video_s - audio_s) <= TOLERANCE_S, (video_s, audio_s)

    codec, packets, times, rotation = _picture(mp4)  # the picture decodes, every frame
    src_codec, src_packets, src_times, src_rotation = _picture(source)
    # (a late-starting source's picture is moved to start at 0, with the sound)
    shown_from_0 = [t - max(src_times[0], 0) for t in src_times]
    assert times == pytest.approx(shown_from_0, abs=1e-6) and rotation == src_rotation
    if UNUSUAL[clip] == COPY:
        assert (codec, packets) == (src_codec, src_packets)
    else:
        assert codec == "h264"


LATE_S = 10  # where a late clip's timestamps start (FFmpeg's MPEG-TS adds 1.4 s of its own)


def _remuxed_later(source: Path, out: Path, seconds: float) -> Path:
    """`source`'s picture, packet for packet, its timestamps `seconds` later (what a cut
    from a broadcast capture or a camcorder's .MTS looks like)."""
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = src.streams.video[0]
        copy = dst.add_stream_from_template(stream)
        assert stream.time_base is not None
        shift = round(seconds / stream.time_base)
        for packet in src.demux(stream):
            if packet.dts is None:  # the demuxer's empty end-of-stream packet
                continue
            assert packet.pts is not None
            packet.pts, packet.dts, packet.stream = packet.pts + shift, packet.dts + shift, copy
            dst.mux(packet)
    return out


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_a_clip_whose_timestamps_start_late_sounds_as_one_from_zero(
    pipeline: FoleyPipeline, media: Media, tmp_path: Path, suffix: str
) -> None:
    """Frames are timed from the stream's start: the length and the sound of the same clip
    stamped from 0 (not its first frame held for 10 s), and an MP4 whose picture starts at
    0 with its sound."""
    zero = media["h264_2s_25_two_audio"]
    late = _remuxed_later(zero, tmp_path / f"late{suffix}", LATE_S)
    assert probe_video(late).duration_s == pytest.approx(probe_video(zero).duration_s, abs=0.05)
    request = GenerationRequest(prompt="footsteps", steps=2, seed=7)
    result = pipeline.generate(late, request)
    assert torch.equal(result.audio, pipeline.generate(zero, request).audio)

    (mp4,) = result.save(tmp_path / "out.mp4")
    with av.open(str(mp4)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert next(c.decode(video)).time == pytest.approx(0.0, abs=1e-3)
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    assert video_s == pytest.approx(2.0, abs=TOLERANCE_S)
    assert audio_s == pytest.approx(video_s, abs=TOLERANCE_S)


def test_an_edit_list_s_hidden_frames_do_not_lengthen_the_sound() -> None:
    """A stream-copied cut keeps the frames before the cut at negative times, hidden by an
    edit list: the track the sound is fitted to spans the frames shown (0 on), not those."""
    # 25 fps in 1/100 s: two hidden frames, then three shown, decode order = display order
    packets = [Timing(pts=t, dts=t, duration=4) for t in (-8, -4, 0, 4, 8)]
    assert retime(packets) == 12  # 0.12 s: three frames, not five
    assert [p.dts for p in packets] == [-8, -4, 0, 4, 8]


def test_frames_stamped_with_one_time_are_shown_one_after_the_other() -> None:
    """Two frames with one timestamp made decode times that did not increase, which MP4
    refuses (the clip wrote a WAV but no MP4): the second moves one tick later, as FFmpeg
    moves such a time when it remuxes."""
    packets = [Timing(pts=t, dts=t, duration=40) for t in (0, 40, 80, 80, 160)]
    assert retime(packets) == 200
    assert [p.pts for p in packets] == [0, 40, 80, 81, 160]
    assert [p.dts for p in packets] == [0, 40, 80, 81, 160]


def test_a_clip_with_a_repeated_timestamp_makes_its_mp4(
    pipeline: FoleyPipeline, tmp_path: Path
) -> None:
    source = tmp_path / "repeated.mkv"
    times = [0, 40, 80, 120, 120, *range(200, 2000, 40)]  # a frame repeats 120 ms, then a gap
    with av.open(str(source), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(i, 64, 48),
                                                                   format="rgb24")):
                packet.pts = packet.dts = t
                out.mux(packet)
    result = pipeline.generate(source, GenerationRequest(steps=2, seed=1))
    (mp4,) = result.save(tmp_path / "out.mp4")
    with av.open(str(mp4)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert codec_name(video) == "mjpeg" and video.frames == len(times)
        video_s = float(video.duration * video.time_base)
        assert float(audio.duration * audio.time_base) == pytest.approx(video_s, abs=TOLERANCE_S)


def test_a_matroska_clip_lasts_as_long_as_its_picture_not_its_sound(tmp_path: Path) -> None:
    """Matroska stores no stream durations and its container's is the longest stream's: 2 s
    of picture beside 6 s of sound is a 2 s clip (it was taken for 6 s and made 6 s of
    audio, most of it over a held last frame)."""
    spec = ClipSpec("mpeg4", ".mkv", Fraction(25), 2)  # no B-frames: timestamps from 0
    path = encode_clip(tmp_path / "short_picture.mkv", spec)
    with av.open(str(path)) as src, av.open(str(tmp_path / "long_sound.mkv"), "w") as dst:
        copy = dst.add_stream_from_template(src.streams.video[0])
        sound = dst.add_stream("aac", rate=48_000, layout="mono")
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = copy
                dst.mux(packet)
        encode_tone(dst, sound, 6.0)
    with av.open(str(tmp_path / "long_sound.mkv")) as c:
        assert c.duration / av.time_base > 5.9 and c.streams.video[0].duration is None
    assert probe_video(tmp_path / "long_sound.mkv").duration_s == pytest.approx(2.0, abs=0.05)


def test_a_re_encoded_picture_keeps_its_pixel_aspect_ratio(
    pipeline: FoleyPipeline, tmp_path: Path
) -> None:
    """PAL DV (MP4 cannot carry it: re-encoded) has 16:15 pixels; with square ones its
    picture played squeezed."""
    source = tmp_path / "pal.avi"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("dvvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 720, 576, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(16, 15)
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(picture(i, 720, 576), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    result = pipeline.generate(source, GenerationRequest(steps=2, seed=1))
    (mp4,) = result.save(tmp_path / "out.mp4")
    with av.open(str(mp4)) as c:
        video = c.streams.video[0]
        assert codec_name(video) == "h264"
        assert video.sample_aspect_ratio == Fraction(16, 15)


def test_an_avi_with_b_frames_is_timed_and_written_in_display_order(
    pipeline: FoleyPipeline, tmp_path: Path
) -> None:
    """AVI stores no presentation times: with B-frames FFmpeg's stamps follow decode order,
    the decoder's frames came out carrying one another's times (features sampled out of
    order) and a stream copy played them out of order, a frame late."""
    spec = ClipSpec("libx264", ".avi", Fraction(25), 2, options={"bf": "2"})
    source = encode_clip(tmp_path / "b_frames.avi", spec)
    same_in_mp4 = encode_clip(tmp_path / "b_frames.mp4", replace(spec, suffix=".mp4"))
    clip, expected = decode_clip(source), decode_clip(same_in_mp4)
    assert clip.sync_source_time == expected.sync_source_time
    assert clip.siglip_source_time == expected.siglip_source_time
    assert clip.sync_source_index == expected.sync_source_index

    (mp4,) = pipeline.generate(source, GenerationRequest(steps=2, seed=1)).save(tmp_path / "o.mp4")
    with av.open(str(source)) as a, av.open(str(mp4)) as b:
        shown = [f.to_ndarray(format="rgb24").astype(int) for f in a.decode(video=0)]
        written = list(b.decode(video=0))
    assert [f.time for f in written] == pytest.approx([k / 25 for k in range(50)])
    # the same pictures in the same order (re-encoded: close, not equal)
    errors = [np.abs(f.to_ndarray(format="rgb24") - s).mean()
              for f, s in zip(written, shown, strict=True)]
    assert max(errors) < 4
