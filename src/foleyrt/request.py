"""What a user asks for in one generation, with its defaults and bounds written once.

The CLI, batch items, the server's form and the Python API all build a `GenerationRequest`;
its constructor is the one place that checks the values, so every front end refuses the
same things with the same one-line message, before any model is loaded.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, replace

from foleyrt.errors import InputError
from foleyrt.lengths import SECONDS_SLACK, Windowing

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 4.5  # the release's default CFG scale
DEFAULT_NEGATIVE_PROMPT = "noisy, harsh"
MAX_STEPS = 500
MAX_GUIDANCE = 100.0
MAX_SAMPLES = 16
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000
MIN_SECONDS = 1.0  # shortest clip or text-only duration
MAX_SECONDS = 15.0  # longest window: what the model takes in one pass (the release's cap)
MAX_DURATION = 1800.0  # longest clip or text-only duration unless a request allows more
DEFAULT_WINDOW = 10.0  # seconds per window of a longer clip
DEFAULT_OVERLAP = 2.0  # seconds shared by neighbouring windows, cross-faded
WINDOW_GRID = 1.0  # windows start on whole seconds (see `foleyrt.lengths.WindowPlan`)
DEFAULT_WINDOWING = Windowing(DEFAULT_WINDOW, DEFAULT_OVERLAP, MAX_SECONDS)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation's parameters (the video, if any, is passed beside it). `seed` None
    draws fresh noise; `duration` (seconds) is for text-only requests, a video sets its own
    length. A clip (or duration) longer than one pass is generated as windows of `window`
    seconds overlapping by at least `overlap` (they change the numbers, so they are the
    request's). One pass: up to 15 s, what the model takes (the release's limit), unless
    `window` is given: then up to `window`. `max_duration` is the longest input the request
    accepts (a guard against hours of work by mistake)."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    samples: int = 1
    seed: int | None = None
    duration: float | None = None
    window: float | None = None  # None: 10 s windows past a 15 s single pass
    overlap: float = DEFAULT_OVERLAP
    max_duration: float = MAX_DURATION

    def __post_init__(self) -> None:
        if self.negative_prompt is None:  # "the default", as the front ends spell it
            object.__setattr__(self, "negative_prompt", DEFAULT_NEGATIVE_PROMPT)
        for name in ("prompt", "negative_prompt"):
            check_prompt(name, getattr(self, name))
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_int("samples", self.samples, 1, MAX_SAMPLES)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, MAX_SEED)
        if not (math.isfinite(self.guidance) and 0.0 <= self.guidance <= MAX_GUIDANCE):
            raise InputError(f"guidance scale must be between 0 and {MAX_GUIDANCE:g}, "
                             f"got {self.guidance}")
        _check_windows(DEFAULT_WINDOW if self.window is None else self.window, self.overlap)
        if not (math.isfinite(self.max_duration) and self.max_duration >= MIN_SECONDS):
            raise InputError(f"max duration must be at least {MIN_SECONDS:g} s, "
                             f"got {self.max_duration:g}")
        if self.duration is not None:
            check_duration(self.duration, self.max_duration)

    @property
    def text_only(self) -> bool:
        return self.duration is not None

    @property
    def windowing(self) -> Windowing:
        if self.window is None:
            return replace(DEFAULT_WINDOWING, overlap_s=self.overlap)
        return Windowing(self.window, self.overlap)

    @property
    def rows(self) -> int:
        """Transformer rows per window (see `transformer_rows`)."""
        return transformer_rows(self.samples, self.guidance)

    def with_seed(self, seed: int) -> GenerationRequest:
        return replace(self, seed=seed)

    def check_source(self, has_video: bool) -> GenerationRequest:
        """Exactly one of a video and a duration says how long the audio is."""
        if has_video and self.duration is not None:
            raise InputError("duration is only for text-only generation; a video sets its own")
        if not has_video and self.duration is None:
            raise InputError("text-only generation needs a duration (seconds)")
        return self


def guidance_active(scale: float) -> bool:
    """CFG runs iff the scale is above 1 (the release's rule)."""
    return scale > 1.0


def transformer_rows(samples: int, guidance: float) -> int:
    """The transformer rows of `samples` samples of one clip (or one window of a long one):
    a row per sample, twice with guidance."""
    return samples * (2 if guidance_active(guidance) else 1)


def check_prompt(name: str, text: str) -> None:
    """A prompt (`name`: "prompt" or "negative_prompt") of plain text (no control characters
    but tabs and line breaks, no lone surrogates: neither is anything a user meant to say,
    and a lone surrogate cannot even be encoded for the tokenizer) no longer than
    MAX_PROMPT_CHARS."""
    label = name.replace("_", " ")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"{label} is longer than {MAX_PROMPT_CHARS} characters")
    bad = next((c for c in text if c not in "\t\n\r"
                and unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None and 0xDC80 <= ord(bad) <= 0xDCFF:  # a byte Python could not decode
        raise InputError(f"{label} is not valid UTF-8 (byte 0x{ord(bad) - 0xDC00:02X}); send "
                         "it as UTF-8 text")
    if bad is not None:
        raise InputError(f"{label} contains a control character (U+{ord(bad):04X}); send "
                         "plain text")


def check_duration(seconds: float, maximum: float = MAX_DURATION) -> float:
    """A requested audio length within bounds (`maximum`: the request's `max_duration`)."""
    if not (math.isfinite(seconds) and MIN_SECONDS <= seconds <= maximum):
        raise InputError(f"duration must be between {MIN_SECONDS:g} and {maximum:g} s, "
                         f"got {seconds:g}")
    return seconds


def _check_windows(window: float, overlap: float) -> None:
    """A window the model takes in one pass, and an overlap that lets windows advance by at
    least one whole second (their starts are whole seconds)."""
    if not (math.isfinite(window) and MIN_SECONDS <= window <= MAX_SECONDS):
        raise InputError(f"window must be between {MIN_SECONDS:g} and {MAX_SECONDS:g} s, "
                         f"got {window:g}")
    # (with the slack `Windowing.stride` allows: 1.4 - 1 is 0.39999999999999991)
    if not (math.isfinite(overlap) and 0.0 <= overlap <= window - WINDOW_GRID + SECONDS_SLACK):
        if overlap == DEFAULT_OVERLAP:  # likely not asked for: say which setting to change
            raise InputError(f"a {window:g} s window leaves room for an overlap of at most "
                             f"{window - WINDOW_GRID:g} s, not the default {overlap:g} s; set "
                             "the overlap too")
        raise InputError(f"overlap must be between 0 and the window less {WINDOW_GRID:g} s "
                         f"({window - WINDOW_GRID:g} s; windows start on whole seconds), "
                         f"got {overlap:g}")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low} and {high}, got {value}")
