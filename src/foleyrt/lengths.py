"""Every sequence length of a request, derived from its duration in one place.

The release samples a clip at two frame rates: SigLIP2 sees 8 fps frames, Synchformer 25 fps
frames in 16-frame windows at a stride of 8, each window giving 8 tokens; the audio latent
runs at 50 frames per second of the 25 fps frames' span (spec/pipeline.md §2-§4). A text-only
request of `d` seconds gets the lengths a constant-frame-rate clip of `d` seconds would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGLIP_FPS = 8
SYNC_FPS = 25
SYNC_WINDOW = 16  # frames per Synchformer window
SYNC_STRIDE = 8  # windows overlap by half
SYNC_TOKENS_PER_WINDOW = 8
LATENT_RATE = 50  # audio latent frames per second (48 kHz / the VAE's hop of 960)
SECONDS_SLACK = 1e-9  # float error allowed when seconds are compared on the whole-second grid


def sync_window_count(sync_frames: int) -> int:
    """Complete windows in `sync_frames` 25 fps frames (not positive below one window)."""
    return (sync_frames - SYNC_WINDOW) // SYNC_STRIDE + 1


def sync_token_count(sync_frames: int) -> int:
    """Synchformer tokens of `sync_frames` 25 fps frames: 8 per complete window."""
    return SYNC_TOKENS_PER_WINDOW * sync_window_count(sync_frames)


def latent_frames(audio_s: float, rate: int = LATENT_RATE) -> int:
    """The release's latent length `int(audio_s * rate)`: a float product truncated, so some
    frame counts give one latent frame fewer than 2·T25 (spec/pipeline.md §2.3); kept for
    parity."""
    return int(audio_s * rate)


@dataclass(frozen=True)
class SequenceLengths:
    """The token counts the transformer sees for one clip: SigLIP2 frames (`clip_frames`),
    25 fps frames (`sync_frames`, of which the Synchformer tokens and the audio follow)."""

    clip_frames: int
    sync_frames: int
    latent_rate: int = LATENT_RATE

    @classmethod
    def of_duration(cls, seconds: float, latent_rate: int = LATENT_RATE) -> SequenceLengths:
        """The lengths of a constant-frame-rate clip (or a text-only request) of `seconds`."""
        return cls(int(seconds * SIGLIP_FPS), int(seconds * SYNC_FPS), latent_rate)

    @property
    def sync_tokens(self) -> int:
        return sync_token_count(self.sync_frames)

    @property
    def audio_seconds(self) -> float:
        """The audio the model is asked for: the span of the 25 fps frames."""
        return self.sync_frames / SYNC_FPS

    @property
    def latent_frames(self) -> int:
        return latent_frames(self.audio_seconds, self.latent_rate)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _last_start(clip: SequenceLengths, window: SequenceLengths) -> int:
    """The first whole second from which windows of `window`'s counts reach `clip`'s end
    (0: the clip fits one)."""
    return max(0, _ceil_div(clip.clip_frames - window.clip_frames, SIGLIP_FPS),
               _ceil_div(clip.sync_frames - window.sync_frames, SYNC_FPS),
               _ceil_div(clip.latent_frames - window.latent_frames, clip.latent_rate))


@dataclass(frozen=True)
class Windowing:
    """Windows of `window_s` seconds, neighbours overlapping by at least `overlap_s`, for what
    is longer than `one_pass_s` (a request's `window` and `overlap`; what fits `one_pass_s`,
    by default one window, runs in one pass, as the release runs it)."""

    window_s: float
    overlap_s: float
    one_pass_s: float | None = None

    @property
    def single_pass_s(self) -> float:
        """The longest clip taken in one pass."""
        return self.window_s if self.one_pass_s is None else self.one_pass_s

    @property
    def stride(self) -> int:
        """Whole seconds from one inner window's start to the next (at least one)."""
        return max(1, math.floor(self.window_s - self.overlap_s + SECONDS_SLACK))

    def window(self, latent_rate: int = LATENT_RATE) -> SequenceLengths:
        return SequenceLengths.of_duration(self.window_s, latent_rate)


@dataclass(frozen=True)
class WindowPlan:
    """How a request's latent is covered by windows the model takes in one pass.

    The alignment rule: windows start on whole seconds. A second holds exactly 8 SigLIP2
    frames, 25 Synchformer frames and 50 latent frames, so a window starting at second `s`
    takes the clip's own 8 fps and 25 fps frames from ticks 8·s and 25·s on, its latent starts
    at frame 50·s, and its Synchformer windows are the 16-frame windows (stride 8) of its own
    frames from its first one: what a clip cut at that second shows the model, by the same
    tick clocks. Every window has the counts of a clip of `window` seconds
    (`SequenceLengths.of_duration`), so all windows are rows of one shape.

    Inner windows advance by floor(window − overlap) whole seconds (so they overlap by at
    least `overlap`); the last one starts on the first whole second from which it reaches the
    end. It may run less than a second past the end: there it sees the last frame held (a
    still picture, as a player shows it) and the audio made there is cut off. A clip that fits
    one pass (`Windowing.one_pass_s`) is planned as itself: its own counts, one window
    (today's single-pass path).
    """

    clip: SequenceLengths  # the whole clip's (or text-only duration's) own counts
    window: SequenceLengths  # each window's counts
    starts: tuple[int, ...]  # whole seconds
    taper: int = 0  # latent frames over which a window's blend weight ramps from its edges

    @classmethod
    def of(cls, clip: SequenceLengths, windowing: Windowing) -> WindowPlan:
        one_pass = SequenceLengths.of_duration(windowing.single_pass_s, clip.latent_rate)
        if _last_start(clip, one_pass) == 0:
            return cls(clip, clip, (0,))
        window = windowing.window(clip.latent_rate)
        last = _last_start(clip, window)
        starts = (*range(0, last, windowing.stride), last)
        return cls(clip, window, starts, round(windowing.overlap_s * clip.latent_rate))

    @property
    def whole(self) -> bool:
        """One window: the clip in one pass."""
        return len(self.starts) == 1

    @property
    def latent_frames(self) -> int:
        """The long latent: up to the last window's end (past the clip's own by under a
        second when the last window overhangs)."""
        return self.latent_start(len(self.starts) - 1) + self.window.latent_frames

    def latent_start(self, index: int) -> int:
        return self.starts[index] * self.clip.latent_rate

    def clip_start(self, index: int) -> int:
        """Window `index`'s first SigLIP2 frame in the clip's 8 fps frames."""
        return self.starts[index] * SIGLIP_FPS

    def sync_start(self, index: int) -> int:
        """Window `index`'s first frame in the clip's 25 fps frames."""
        return self.starts[index] * SYNC_FPS
