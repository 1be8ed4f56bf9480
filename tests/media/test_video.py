"""Probing, validation, release frame sampling and preprocessing (spec/pipeline.md §2–§4)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from foleyrt.errors import InputError, MediaError
from foleyrt.media.video import (
    decode_clip,
    iter_ticks,
    probe_video,
    to_model_range,
)
from foleyrt.verify import run_manifest
from tests.media.conftest import CLIPS, Media


def _counts(path: Path, rates: tuple[int, ...] = (8, 25)) -> tuple[int, ...]:
    seen = Counter(tick.rate for tick in iter_ticks(path, rates))
    return tuple(seen[r] for r in rates)


# --------------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "t8", "t25"),
    [
        ("h264_8s_30", 64, 200),  # spec table
        ("h264_8s_25", 64, 199),
        ("h264_10s_24", 80, 249),
        ("h264_1s_30", 8, 25),
        ("h264_5s_25", 40, 124),  # the 125th tick accumulates to 4.9600000000000035 > 4.96
        ("h264_2s_60", 16, 50),
        ("mpeg4_3s_2997", 24, 75),
        ("vp9_2s_24", 16, 49),
    ],
)
def test_tick_counts(media: Media, clip: str, t8: int, t25: int) -> None:
    assert _counts(media[clip]) == (t8, t25)


def test_frame_cap_at_15s(media: Media) -> None:
    """Beyond 15 s nothing is used (and decoding stops): 121 / 376 frames, the maximum."""
    ticks = list(iter_ticks(media["h264_16s_30"]))
    assert Counter(t.rate for t in ticks) == {8: 121, 25: 376}
    assert max(t.time for t in ticks) == 15.0


@pytest.mark.parametrize("clip", ["mpeg4_3s_2997", "vp9_2s_24", "h264_2s_60"])
def test_sample_and_hold(media: Media, clip: str) -> None:
    """Tick n (accumulated time t_n) takes the first decoded frame at or after t_n."""
    path = media[clip]
    times = [t.time for t in iter_ticks(path, (1000,))]  # every frame, once at least
    frame_times = sorted(set(times))
    for rate in (8, 25):
        t_next = 0.0
        for tick in iter_ticks(path, (rate,)):
            assert tick.time >= t_next
            earlier = [t for t in frame_times if t < tick.time]
            assert not earlier or earlier[-1] < t_next
            t_next += 1.0 / rate


def test_one_pass_gives_both_rates_in_time_order(media: Media) -> None:
    ticks = list(iter_ticks(media["h264_1s_30"], (8, 25)))
    assert [t.time for t in ticks] == sorted(t.time for t in ticks)
    for rate in (8, 25):
        assert [t.index for t in ticks if t.rate == rate] == list(range(8 if rate == 8 else 25))
    # a frame taken by both schedules is converted once
    shared = [t for t in ticks if t.frame_index == 0]
    assert len(shared) == 2 and shared[0].rgb is shared[1].rgb


# --------------------------------------------------------------------------------------------
# Decoded clip and preprocessing
# --------------------------------------------------------------------------------------------


def test_decode_clip_shapes(media: Media) -> None:
    clip = decode_clip(media["h264_10s_24"])
    assert clip.siglip_u8.shape == (80, 3, 512, 512) and clip.siglip_u8.dtype == torch.uint8
    assert clip.sync_u8.shape == (249, 3, 224, 224) and clip.sync_u8.dtype == torch.uint8
    assert type(clip.duration_s) is float and clip.duration_s == 249 / 25
    assert len(clip.sync_source_index) == len(clip.sync_source_time) == 249
    assert len(clip.siglip_source_index) == len(clip.siglip_source_time) == 80
    assert clip.info.duration_s == pytest.approx(10.0)
    # 24 fps under 25 ticks/s: some frames are held twice, with identical pixels
    index = clip.sync_source_index
    held = [k for k in range(1, len(index)) if index[k] == index[k - 1]]
    assert held and all(torch.equal(clip.sync_u8[k], clip.sync_u8[k - 1]) for k in held)


def test_portrait_is_center_cropped(media: Media) -> None:
    clip = decode_clip(media["h264_2s_30_portrait"])
    assert clip.sync_u8.shape[1:] == (3, 224, 224)
    assert clip.siglip_u8.shape[1:] == (3, 512, 512)
    assert clip.info.width == 48 and clip.info.height == 64


def test_to_model_range() -> None:
    x = to_model_range(torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert x.tolist() == pytest.approx([-1.0, -0.6, 1.0])


def test_reference_fixture_e(fixtures_dir: Path) -> None:
    results = list(run_manifest(fixtures_dir, only=["E"]))
    assert results and all(r.passed for r in results), [r.line() for r in results]


# --------------------------------------------------------------------------------------------
# Probing and validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "codec", "fps", "size", "has_audio"),
    [
        ("h264_3s_30_audio", "h264", 30.0, (64, 48), True),
        ("vp9_2s_24", "vp9", 24.0, (64, 48), False),
        ("mpeg4_3s_2997", "mpeg4", 30000 / 1001, (64, 48), False),
        ("av1_2s_24", "av1", 24.0, (64, 64), False),  # the codec, not its decoder (libdav1d)
    ],
)
def test_probe(media: Media, clip: str, codec: str, fps: float, size: tuple[int, int],
               has_audio: bool) -> None:
    info = probe_video(media[clip])
    assert (info.codec, info.width, info.height, info.has_audio) == (codec, *size, has_audio)
    assert info.fps == pytest.approx(fps)
    assert info.duration_s == pytest.approx(CLIPS[clip].seconds, abs=0.01)


BAD_MEDIA = [
    ("missing.mp4", MediaError, "no such file"),
    ("empty.mp4", MediaError, "empty"),
    ("notes.txt", MediaError, "not a video"),
    ("image.png", MediaError, "not a video"),
    ("truncated.mp4", MediaError, "truncated"),
    ("truncated_faststart.mp4", MediaError, "truncated"),
    ("audio.m4a", MediaError, "audio-only"),
    ("audio_cover.m4a", MediaError, "audio-only"),
    ("audio.wav", MediaError, "audio-only"),
    ("h264_0p5s_30", InputError, "at least 1 s"),
    ("h264_3s_still", MediaError, "up to the last frame's start, 0.00 s of the 3.00 s"),
]


@pytest.mark.parametrize(("name", "error", "words"), BAD_MEDIA)
def test_bad_inputs(media: Media, tmp_path: Path, name: str, error: type, words: str) -> None:
    path = tmp_path / name if name == "missing.mp4" else media[name]
    with pytest.raises(error) as info:
        decode_clip(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message
    if error is InputError:  # a usable file of the wrong length is not a media problem
        assert not isinstance(info.value, MediaError)


def test_slow_clip_is_not_truncated(media: Media) -> None:
    """Issue 19: a 3 s clip at 1 fps ends one second after its last frame starts; it was
    refused as truncated. Its frames are all used, each held for 25 sync ticks."""
    clip = decode_clip(media["h264_3s_1"])
    assert sorted(set(clip.sync_source_time)) == [0.0, 1.0, 2.0]
    assert clip.info.duration_s == 3.0


def test_too_long_message_names_the_limit(media: Media) -> None:
    """Longer clips are taken (in windows) up to a request's maximum duration."""
    assert probe_video(media["h264_16s_30"]).duration_s == 16
    with pytest.raises(InputError, match="the limit is 15 s") as info:
        probe_video(media["h264_16s_30"], max_seconds=15)
    assert "trim" in str(info.value) and not isinstance(info.value, MediaError)
