"""Every sequence length of a request, derived from its duration in one place.

The release samples a clip at two frame rates: SigLIP2 sees 8 fps frames, Synchformer 25 fps
frames in 16-frame windows at a stride of 8, each window giving 8 tokens; the audio latent
runs at 50 frames per second of the 25 fps frames' span (spec/pipeline.md §2-§4). A text-only
request of `d` seconds gets the lengths a constant-frame-rate clip of `d` seconds would.
"""

from __future__ import annotations

from dataclasses import dataclass

SIGLIP_FPS = 8
SYNC_FPS = 25
SYNC_WINDOW = 16  # frames per Synchformer window
SYNC_STRIDE = 8  # windows overlap by half
SYNC_TOKENS_PER_WINDOW = 8
LATENT_RATE = 50  # audio latent frames per second (48 kHz / the VAE's hop of 960)


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
