"""A generation's parameters (`foleyrt.request`): defaults and bounds in one place, refused
with one line."""

from __future__ import annotations

import pytest

from foleyrt.errors import InputError
from foleyrt.lengths import SequenceLengths, WindowPlan
from foleyrt.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_STEPS,
    MAX_SAMPLES,
    GenerationRequest,
)


def test_defaults_are_the_release_s() -> None:
    r = GenerationRequest()
    assert (r.steps, r.guidance, r.samples, r.negative_prompt) == (
        DEFAULT_STEPS, DEFAULT_GUIDANCE, 1, DEFAULT_NEGATIVE_PROMPT) == (50, 4.5, 1, "noisy, harsh")
    assert GenerationRequest(negative_prompt=None).negative_prompt == DEFAULT_NEGATIVE_PROMPT
    prose = "rain on a tin roof,\tthen\r\nthunder, café, 雨"  # tabs and line breaks are text
    assert GenerationRequest(prompt=prose).prompt == prose


@pytest.mark.parametrize(("fields", "message"), [
    ({"steps": 0}, "steps must be between 1 and 500, got 0"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"samples": 0}, "samples must be between 1 and 16"),
    ({"samples": -1}, "samples must be between 1 and 16"),
    ({"samples": MAX_SAMPLES + 1}, "samples must be between 1 and 16"),
    ({"seed": -1}, "seed must be between 0 and 4294967295"),
    ({"guidance": -0.5}, "guidance scale must be between 0 and 100"),
    ({"guidance": float("nan")}, "guidance scale must be between 0 and 100"),
    ({"duration": 0.5}, "duration must be between 1 and 1800 s"),
    ({"duration": 1801}, "duration must be between 1 and 1800 s"),
    ({"duration": 70, "max_duration": 60}, "duration must be between 1 and 60 s"),
    ({"max_duration": 0.5}, "max duration must be at least 1 s"),
    ({"prompt": "x" * 1001}, "prompt is longer than 1000 characters"),
    ({"prompt": "a bell\x07"}, r"prompt contains a control character \(U\+0007\)"),
    ({"negative_prompt": "\ud800"}, r"negative prompt contains a control character \(U\+D800\)"),
    ({"prompt": b"caf\xe9".decode("utf-8", "surrogateescape")},  # as argv reads it
     r"prompt is not valid UTF-8 \(byte 0xE9\)"),
    ({"window": 20}, "window must be between 1 and 15 s, got 20"),
    ({"window": 0.5}, "window must be between 1 and 15 s"),
    ({"window": float("inf")}, "window must be between 1 and 15 s"),
    ({"overlap": 10}, r"overlap must be between 0 and the window less 1 s \(9 s"),
    ({"window": 4, "overlap": 3.5}, r"overlap must be between 0 and the window less 1 s \(3 s"),
    ({"overlap": -1}, "overlap must be between 0"),
    ({"window": 2}, (r"a 2 s window leaves room for an overlap of at most 1 s, not the default "
                     r"2 s; set the overlap too")),
])
def test_out_of_bounds_values_are_one_line_errors(fields: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        GenerationRequest(**fields)
    assert "\n" not in str(info.value)


def test_long_durations_and_windows_within_bounds_are_taken() -> None:
    r = GenerationRequest(duration=1800, window=15, overlap=14)
    assert (r.windowing.window_s, r.windowing.overlap_s, r.windowing.stride) == (15, 14, 1)
    assert GenerationRequest(window=1.4, overlap=0.4).windowing.stride == 1  # 1.4 - 1 < 0.4
    assert GenerationRequest().windowing.stride == 8  # 10 s windows, 2 s overlap


@pytest.mark.parametrize(("seconds", "window", "windows"), [
    (15.0, None, 1), (15.04, None, 2), (12.0, None, 1), (12.0, 8.0, 2), (8.0, 8.0, 1)])
def test_the_release_s_single_pass_holds_up_to_15_s_unless_a_window_is_asked(
        seconds: float, window: float | None, windows: int) -> None:
    """By default a clip of up to 15 s is one pass (as the release runs it), longer ones are
    10 s windows; an explicit `window` is the single-pass limit too."""
    request = GenerationRequest(duration=seconds, window=window)
    plan = WindowPlan.of(SequenceLengths.of_duration(seconds), request.windowing)
    assert len(plan.starts) == windows
    assert plan.window.latent_frames == (
        SequenceLengths.of_duration(seconds).latent_frames if windows == 1
        else SequenceLengths.of_duration(window or 10.0).latent_frames)
    assert GenerationRequest(duration=3600, max_duration=3600).duration == 3600


def test_a_video_or_a_duration_sets_the_length() -> None:
    GenerationRequest().check_source(has_video=True)
    GenerationRequest(duration=5).check_source(has_video=False)
    with pytest.raises(InputError, match="needs a duration"):
        GenerationRequest().check_source(has_video=False)
    with pytest.raises(InputError, match="only for text-only"):
        GenerationRequest(duration=5).check_source(has_video=True)
