"""Every token count from a duration (`foleyrt.lengths`), against the release's rules."""

from __future__ import annotations

import pytest

from foleyrt.lengths import SequenceLengths, latent_frames, sync_token_count, sync_window_count


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
