"""The row budget: the cap off CUDA; on CUDA the free memory, less the reserve, over one row's
measured bytes, between 1 and the cap (the GPU's answers are stubbed: the arithmetic is what
is tested here; the measurement runs on the GPU machine)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from foleyrt.lengths import SequenceLengths
from foleyrt.pipeline.budget import DEFAULT_MAX_ROWS, RowBudget

GIB = 2**30
LENGTHS = SequenceLengths.of_duration(10.0)


def _on(device: str) -> SimpleNamespace:
    """A model whose weights live on `device`."""
    return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))


def test_off_cuda_the_cap_is_the_budget() -> None:
    assert RowBudget(_on("cpu")).rows(LENGTHS, 77) == DEFAULT_MAX_ROWS  # type: ignore[arg-type]
    assert RowBudget(_on("cpu"), max_rows=6).rows(LENGTHS, 77) == 6  # type: ignore[arg-type]


@pytest.mark.parametrize(("free_gib", "rows"), [(40, 14), (12.5, 1), (10, 1), (200, 32)])
def test_on_cuda_free_memory_over_a_rows_bytes(
    monkeypatch: pytest.MonkeyPatch, free_gib: float, rows: int
) -> None:
    budget = RowBudget(_on("cuda"))  # type: ignore[arg-type]
    measured: list[tuple] = []
    monkeypatch.setattr(budget, "_measure", lambda *shape: measured.append(shape) or 2 * GIB)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free_gib * GIB, 80 * GIB))
    # (free - 15 % of 80 GiB) // 2 GiB, at least 1, at most the cap
    assert budget.rows(LENGTHS, 77) == rows
    assert budget.rows(LENGTHS, 77) == rows and measured == [(LENGTHS, 77)]  # measured once
