"""Output files: float WAVs, muxed MP4s (video copied bit-exactly), atomic writes, paths."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch

import foleyrt.media.audio as audio_mod
from foleyrt.errors import OutputError, UsageError
from foleyrt.media.audio import (
    check_output_path,
    fit_length,
    mux_video,
    numbered_paths,
    write_wav,
)
from tests.media.conftest import CLIPS, Media

RATE = 48_000
META = {"comment": "made by a test", "software": "foleyrt-test", "seed": "7"}


def _track(seconds: float, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal((channels, int(seconds * RATE)))).astype(np.float32)


def _video_packets(path: Path) -> list[tuple[bytes, float, float | None]]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [
            (bytes(p), float(p.pts * p.time_base),
             None if p.dts is None else float(p.dts * p.time_base))
            for p in c.demux(stream) if p.size
        ]


def _assert_copied(out: Path, source: Path) -> None:
    """Same bytes, count and presentation times; the same decode times where the source
    has its own (Matroska stores none: the MP4 gets them from the presentation times)."""
    copied, original = _video_packets(out), _video_packets(source)
    assert [p[:2] for p in copied] == [p[:2] for p in original]
    if all(p[2] is not None for p in original):
        assert copied == original


def _frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return sorted(float(f.time) for f in c.decode(video=0))


def _durations(path: Path) -> tuple[float, float]:
    """(video, audio) stream durations as FFmpeg reports them."""
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        return (float(video.duration * video.time_base), float(audio.duration * audio.time_base))


def _listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# --------------------------------------------------------------------------------------------
# MP4
# --------------------------------------------------------------------------------------------


# AV1 is decoded by libdav1d: MP4 takes the codec, whatever the decoder is called.
COPIED = ["h264_3s_30_audio", "vp9_2s_24", "mpeg4_3s_2997", "av1_2s_24", "hevc_2s_25",
          "mjpeg_2s_25", "h264_2s_25_10bit", "h264_2s_25_444"]


@pytest.mark.parametrize("clip", COPIED)
def test_mux_copies_video_and_adds_one_aac_track(media: Media, tmp_path: Path, clip: str) -> None:
    source = media[clip]
    out = tmp_path / "out.mp4"
    # a track ~40 ms short, like the model's: it must come out as long as the picture
    mux_video(source, out, torch.from_numpy(_track(1.96)), RATE, metadata=META)

    _assert_copied(out, source)
    with av.open(str(out)) as c:
        assert c.format.name.startswith("mov,mp4")
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        video, audio = c.streams.video[0], c.streams.audio[0]
        with av.open(str(source)) as s:
            assert video.codec_context.name == s.streams.video[0].codec_context.name
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == RATE
        assert audio.codec_context.channels == 2
        v_s = float(video.duration * video.time_base)
        a_s = float(audio.duration * audio.time_base)
        assert abs(v_s - a_s) <= 0.020, (v_s, a_s)
        assert "made by a test" in c.metadata.get("comment", "")
        assert "seed=7" in c.metadata.get("comment", "")
        decoded = np.concatenate([f.to_ndarray() for f in c.decode(audio)], axis=1)
    assert abs(decoded.shape[1] / RATE - v_s) < 0.030  # decoder-visible length, priming hidden


@pytest.mark.parametrize("clip", ["gif_2s_25", "gif_2s_25_odd", "vp8_2s_24"])
def test_mux_reencodes_what_mp4_cannot_carry(media: Media, tmp_path: Path, clip: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """GIF and VP8 have no place in MP4: the picture is re-encoded to H.264, frame for frame
    at the same times (odd sizes stretched to even), and one log line says so."""
    source = media[clip]
    with caplog.at_level(logging.INFO, logger="foleyrt"):
        out = mux_video(source, tmp_path / "out.mp4", _track(2.0), RATE)
    notes = [r.getMessage() for r in caplog.records if "re-encod" in r.getMessage()]
    assert len(notes) == 1 and str(source) in notes[0], notes
    assert _frame_times(out) == pytest.approx(_frame_times(source), abs=1e-6)
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert video.codec_context.name == "h264" and video.format.name == "yuv420p"
        width, height = CLIPS[clip].size
        assert (video.width, video.height) == (width + width % 2, height + height % 2)
    v_s, a_s = _durations(out)
    assert abs(v_s - a_s) <= 0.020, (v_s, a_s)


def test_mux_variable_frame_rate_audio_ends_with_the_video(media: Media, tmp_path: Path) -> None:
    """Issue 19: a phone-style VFR clip's MP4 had audio lasting longer than FFmpeg said the
    video did (its decode times cover less than its presentation span). The decode times
    are rebuilt: every measure of the video's length then agrees with the audio."""
    source = media["h264_2s_vfr"]
    out = mux_video(source, tmp_path / "out.mp4", _track(2.0), RATE)
    v_s, a_s = _durations(out)
    with av.open(str(out)) as c:
        assert c.duration / av.time_base == pytest.approx(v_s, abs=0.001)  # the edit lists
    assert abs(v_s - a_s) <= 0.020, (v_s, a_s)
    assert _frame_times(out)[-1] < v_s
    assert [p[:2] for p in _video_packets(out)] == [p[:2] for p in _video_packets(source)]


def test_mux_duplicates_mono_and_keeps_timing(media: Media, tmp_path: Path) -> None:
    """A tone starting at 1.0 s is heard at 1.0 s on both channels: the encoder's priming
    delay is compensated. (A tone, not noise: AAC's noise substitution decorrelates noisy
    bands of the two channels, as in the release's ffmpeg encode.)"""
    t = np.arange(3 * RATE) / RATE
    track = (0.3 * np.sin(2 * np.pi * 440 * t) * (t >= 1.0)).astype(np.float32)
    out = mux_video(media["h264_3s_30_audio"], tmp_path / "tone.mp4", track, RATE)
    with av.open(str(out)) as c:
        decoded = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert np.abs(decoded[0] - decoded[1]).max() < 0.01
    onset = int(np.argmax(np.abs(decoded[0]) > 0.1))
    assert abs(onset - RATE) < 0.002 * RATE


def test_mux_refuses_to_replace_its_input(media: Media, tmp_path: Path) -> None:
    source = tmp_path / "in.mp4"
    source.write_bytes(media["h264_1s_30"].read_bytes())
    before = source.read_bytes()
    with pytest.raises(OutputError, match="input"):
        mux_video(source, source, _track(1.0), RATE, overwrite=True)
    assert source.read_bytes() == before
    assert _listing(tmp_path) == {"in.mp4"}


def test_mux_failure_leaves_nothing(media: Media, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(audio_mod, "_encode_audio", broken)
    with pytest.raises(RuntimeError):
        mux_video(media["h264_1s_30"], tmp_path / "out.mp4", _track(1.0), RATE)
    assert _listing(tmp_path) == set()


# --------------------------------------------------------------------------------------------
# WAV
# --------------------------------------------------------------------------------------------


def test_wav_is_float32_48k_with_tags(tmp_path: Path) -> None:
    track = _track(0.5)
    path = write_wav(tmp_path / "a.wav", torch.from_numpy(track), RATE, metadata=META)
    info = soundfile.info(path)
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "FLOAT", RATE, 1)
    data, _ = soundfile.read(path, dtype="float32", always_2d=True)
    assert np.array_equal(data.T, track)  # bit-exact, no normalisation or clipping
    with soundfile.SoundFile(path) as f:
        assert f.comment == "made by a test; seed=7"
        assert f.software.startswith("foleyrt-test")


def test_the_same_wav_twice_is_the_same_bytes(tmp_path: Path) -> None:
    """No PEAK chunk: libsndfile stamps it with the second it was written, so two runs a
    second apart used to differ."""
    track = torch.from_numpy(_track(0.5))
    first = write_wav(tmp_path / "a.wav", track, RATE, metadata=META).read_bytes()
    second = write_wav(tmp_path / "b.wav", track, RATE, metadata=META).read_bytes()
    assert first == second and b"PEAK" not in first


def test_wav_failure_mid_write_leaves_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(self: soundfile.SoundFile, data: np.ndarray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(soundfile.SoundFile, "write", full_disk)
    with pytest.raises(OutputError, match="No space left"):
        write_wav(tmp_path / "a.wav", _track(0.5), RATE)
    assert _listing(tmp_path) == set()


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"old")

    def crash(self: soundfile.SoundFile, data: np.ndarray) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(soundfile.SoundFile, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        write_wav(path, _track(0.5), RATE, overwrite=True)
    assert path.read_bytes() == b"old" and _listing(tmp_path) == {"a.wav"}


def test_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, _track(0.1), RATE)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        write_wav(path, _track(0.2), RATE)
    assert soundfile.info(path).frames == int(0.1 * RATE)
    write_wav(path, _track(0.2), RATE, overwrite=True)
    assert soundfile.info(path).frames == int(0.2 * RATE)
    assert _listing(tmp_path) == {"a.wav"}


# --------------------------------------------------------------------------------------------
# Paths and lengths
# --------------------------------------------------------------------------------------------


def test_check_output_path(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "x.WAV", overwrite=False) == tmp_path / "x.WAV"
    with pytest.raises(UsageError, match=r"\.wav or \.mp4"):
        check_output_path(tmp_path / "x.flac", overwrite=False)
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "nowhere" / "x.wav", overwrite=False)
    existing = tmp_path / "x.mp4"
    existing.touch()
    with pytest.raises(OutputError, match="exists"):
        check_output_path(existing, overwrite=False)
    assert check_output_path(existing, overwrite=True) == existing
    with pytest.raises(OutputError, match="input"):
        check_output_path(existing, overwrite=True, inputs=[tmp_path / "." / "x.mp4"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to any directory")
def test_check_output_path_read_only_dir(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable"):
        check_output_path(locked / "x.wav", overwrite=False)


def test_numbered_paths() -> None:
    assert numbered_paths("out/a.wav", 1) == [Path("out/a.wav")]
    assert numbered_paths("out/a.mp4", 3) == [Path(f"out/a_{k}.mp4") for k in (1, 2, 3)]
    with pytest.raises(ValueError):
        numbered_paths("a.wav", 0)


def test_fit_length() -> None:
    x = torch.ones(2, 1, 5)
    padded = fit_length(x, 8)
    assert padded.shape == (2, 1, 8) and padded[..., 5:].abs().sum() == 0
    assert torch.equal(padded[..., :5], x)
    assert fit_length(np.ones((1, 5), np.float32), 3).shape == (1, 3)
    assert fit_length(np.ones((1, 5), np.float32), 7)[0, 5:].tolist() == [0.0, 0.0]
