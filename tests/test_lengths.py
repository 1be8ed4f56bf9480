"""Every token count from a duration (`foleyrt.lengths`), against the release's rules."""

from __future__ import annotations

import itertools
import math

import pytest

from foleyrt.lengths import (
    SequenceLengths,
    Windowing,
    WindowPlan,
    latent_frames,
    sync_token_count,
    sync_window_count,
)


@pytest.mark.parametrize("t25", [29, 57, 58, 113, 114, 115, 116, 201, 226, 255])
def test_latent_length_quirk(t25: int) -> None:
    """`int(T25 / 25 * 50)` truncates a float product: one frame fewer than 2·T25."""
    assert latent_frames(t25 / 25) == 2 * t25 - 1


@pytest.mark.parametrize("t25", [25, 50, 100, 199, 200, 249, 376])
def test_latent_length_regular(t25: int) -> None:
    assert latent_frames(t25 / 25) == 2 * t25


def test_sync_windows_and_tokens() -> None:
    assert [sync_window_count(n) for n in (15, 16, 23, 24, 250)] == [0, 1, 1, 2, 30]
    assert sync_token_count(250) == 240


@pytest.mark.parametrize(("seconds", "expected"), [
    (1.0, (8, 25, 16, 50)), (8.0, (64, 200, 192, 400)), (10.0, (80, 250, 240, 500)),
    (3.3, (26, 82, 72, 164)), (15.0, (120, 375, 360, 750)),
])
def test_lengths_of_a_duration(seconds: float, expected: tuple[int, int, int, int]) -> None:
    """A text-only request (or a constant-frame-rate clip) of `seconds`: SigLIP2 frames, 25 fps
    frames, sync tokens, latent frames."""
    n = SequenceLengths.of_duration(seconds)
    assert (n.clip_frames, n.sync_frames, n.sync_tokens, n.latent_frames) == expected
    assert n.audio_seconds == n.sync_frames / 25


W, OVERLAP = 10.0, 2.0
WINDOWING = Windowing(W, OVERLAP)


def _video(seconds: float, fps: int = 30) -> SequenceLengths:
    """The counts of a constant-rate clip of `seconds` (frames at k/fps): ticks n/rate up to
    its last frame."""
    last = math.ceil(seconds * fps - 1e-9) - 1  # index of its last frame
    return SequenceLengths(last * 8 // fps + 1, last * 25 // fps + 1)


@pytest.mark.parametrize(("clip", "starts"), [
    (SequenceLengths.of_duration(W), (0,)),  # W: one window, the clip itself
    (_video(W), (0,)),
    (_video(W + 0.02), (0, 1)),  # one frame more: a second window, one second on
    (SequenceLengths.of_duration(W + OVERLAP), (0, 2)),
    (SequenceLengths.of_duration(2 * W - OVERLAP), (0, 8)),  # two windows, overlapping by OVERLAP
    (_video(2 * W - OVERLAP + 0.02), (0, 8, 9)),
    (SequenceLengths.of_duration(16), (0, 6)),
    (_video(40), (0, 8, 16, 24, 30)),
    (SequenceLengths.of_duration(60), (0, 8, 16, 24, 32, 40, 48, 50)),
])
def test_window_starts_at_and_around_the_boundaries(clip: SequenceLengths,
                                                    starts: tuple[int, ...]) -> None:
    plan = WindowPlan.of(clip, WINDOWING)
    assert plan.starts == starts
    if plan.whole:  # today's single pass: the clip's own counts
        assert plan.window == clip and plan.latent_frames == clip.latent_frames
    else:
        assert plan.window == SequenceLengths.of_duration(W) and plan.taper == 100


@pytest.mark.parametrize("seconds", [10.02, 12, 15.04, 17.98, 18.02, 33.3, 180, 600.5, 1800])
@pytest.mark.parametrize(("window", "overlap"), [(10, 2), (15, 0), (8, 3.5), (1, 0)])
def test_windows_start_on_whole_seconds_and_cover_the_clip(
        seconds: float, window: float, overlap: float) -> None:
    """The alignment rule: every window starts on a frame of all three rates and has the
    counts of a clip of `window` seconds; neighbours overlap by at least `overlap`; the last
    reaches the clip's end at every rate and overhangs it by less than a second."""
    clip = _video(seconds)
    plan = WindowPlan.of(clip, Windowing(window, overlap))
    assert plan.whole == (seconds <= window)
    if plan.whole:
        return
    rate, win = clip.latent_rate, plan.window
    assert win == SequenceLengths.of_duration(window)
    for i, s in enumerate(plan.starts):
        assert (plan.clip_start(i), plan.sync_start(i), plan.latent_start(i)) == (
            8 * s, 25 * s, rate * s)
    for a, b in itertools.pairwise(plan.starts):
        assert 1 <= b - a <= Windowing(window, overlap).stride
        assert (a - b) * rate + win.latent_frames >= overlap * rate
    last = plan.starts[-1]
    assert 8 * last + win.clip_frames >= clip.clip_frames
    assert 25 * last + win.sync_frames >= clip.sync_frames
    assert 0 <= plan.latent_frames - clip.latent_frames < rate
    assert plan.starts[-2] * rate + win.latent_frames < clip.latent_frames  # no spare window


def test_a_clip_that_fits_is_one_window_of_its_own_counts() -> None:
    for seconds in (1, 3.3, 9.96, 10):
        clip = _video(seconds)
        assert WindowPlan.of(clip, WINDOWING) == WindowPlan(clip, clip, (0,))
