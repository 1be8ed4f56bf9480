"""The row budget: the cap off CUDA; on CUDA the free memory (the allocator's unused cache
included), less the reserve, over one row's measured bytes, between 1 and the cap; and long
clips' windows held to 1.2x a 15 s clip's denoising memory (the GPU's answers are stubbed:
the arithmetic is what is tested here; the measurement runs on the GPU machine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from foleyrt.lengths import SequenceLengths
from foleyrt.pipeline.budget import DEFAULT_MAX_ROWS, RowBudget, RowCost, WindowRows, window_rows

GIB = 2**30
LENGTHS = SequenceLengths.of_duration(10.0)


def _on(device: str) -> SimpleNamespace:
    """A model whose weights live on `device`."""
    return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))


def test_off_cuda_the_cap_is_the_budget() -> None:
    assert RowBudget(_on("cpu")).rows(LENGTHS, 77) == DEFAULT_MAX_ROWS  # type: ignore[arg-type]
    assert RowBudget(_on("cpu"), max_rows=6).rows(LENGTHS, 77) == 6  # type: ignore[arg-type]


@pytest.mark.parametrize(("free_gib", "cached_gib", "rows"),
                         [(40, 0, 14), (12.5, 0, 1), (10, 0, 1), (200, 0, 32), (25, 15, 14)])
def test_on_cuda_free_memory_over_a_rows_bytes(
    monkeypatch: pytest.MonkeyPatch, free_gib: float, cached_gib: float, rows: int
) -> None:
    budget = RowBudget(_on("cuda"))  # type: ignore[arg-type]
    measured: list[tuple] = []
    cost = RowCost(prepared=GIB // 4, peak=2 * GIB)
    monkeypatch.setattr(budget, "_measure", lambda *shape: measured.append(shape) or cost)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free_gib * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: (30 + cached_gib) * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 30 * GIB)
    # (free + the allocator's unused cache - 15 % of 80 GiB) // 2 GiB, at least 1, at most
    # the cap
    assert budget.rows(LENGTHS, 77) == rows
    assert budget.rows(LENGTHS, 77) == rows and measured == [(LENGTHS, 77)]  # measured once


WINDOW = RowCost(prepared=GIB // 100, peak=GIB // 10)  # a 10 s row
CLIP = RowCost(prepared=GIB // 70, peak=GIB // 7)  # a 15 s row


def _peak(resident: int, plan: WindowRows, total_rows: int) -> float:
    held = total_rows * WINDOW.prepared if plan.hold_prepared else 0
    return resident + held + plan.max_rows * (WINDOW.peak - (
        WINDOW.prepared if plan.hold_prepared else 0))


def test_a_minute_keeps_its_forwards_prepared_within_the_ceiling() -> None:
    plan = window_rows(10 * GIB, WINDOW, CLIP, 2, total_rows=16, free_rows=32)
    assert plan.hold_prepared and 2 <= plan.max_rows <= 32
    assert _peak(10 * GIB, plan, 16) <= 1.2 * (10 * GIB + 2 * CLIP.peak)


def test_a_long_clip_prepares_per_step_when_holding_would_pass_the_ceiling() -> None:
    plan = window_rows(10 * GIB, WINDOW, CLIP, 2, total_rows=450, free_rows=32)
    assert not plan.hold_prepared
    assert _peak(10 * GIB, plan, 450) <= 1.2 * (10 * GIB + 2 * CLIP.peak)


def test_free_memory_and_a_window_s_rows_bound_the_answer() -> None:
    assert window_rows(10 * GIB, WINDOW, CLIP, 2, 16, free_rows=3).max_rows == 3
    assert window_rows(0, WINDOW, CLIP, 4, 400, free_rows=1).max_rows == 4  # never split
