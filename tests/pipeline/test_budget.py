"""The row budget of long clips' windows (`window_rows`): the arithmetic that holds their
denoising to 1.2x a 15 s clip's memory, checked without a GPU."""

from __future__ import annotations

from foleyrt.pipeline.budget import RowCost, WindowRows, window_rows

GB = 2**30
WINDOW = RowCost(prepared=GB // 100, peak=GB // 10)  # a 10 s row
CLIP = RowCost(prepared=GB // 70, peak=GB // 7)  # a 15 s row


def _peak(resident: int, plan: WindowRows, total_rows: int) -> float:
    held = total_rows * WINDOW.prepared if plan.hold_prepared else 0
    return resident + held + plan.max_rows * (WINDOW.peak - (
        WINDOW.prepared if plan.hold_prepared else 0))


def test_a_minute_keeps_its_forwards_prepared_within_the_ceiling() -> None:
    plan = window_rows(10 * GB, WINDOW, CLIP, 2, total_rows=16, free_rows=32)
    assert plan.hold_prepared and 2 <= plan.max_rows <= 32
    assert _peak(10 * GB, plan, 16) <= 1.2 * (10 * GB + 2 * CLIP.peak)


def test_a_long_clip_prepares_per_step_when_holding_would_pass_the_ceiling() -> None:
    plan = window_rows(10 * GB, WINDOW, CLIP, 2, total_rows=450, free_rows=32)
    assert not plan.hold_prepared
    assert _peak(10 * GB, plan, 450) <= 1.2 * (10 * GB + 2 * CLIP.peak)


def test_free_memory_and_a_window_s_rows_bound_the_answer() -> None:
    assert window_rows(10 * GB, WINDOW, CLIP, 2, 16, free_rows=3).max_rows == 3
    assert window_rows(0, WINDOW, CLIP, 4, 400, free_rows=1).max_rows == 4  # never split
