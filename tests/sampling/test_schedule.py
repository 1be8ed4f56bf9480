"""The scheduler's tables against their formulas (spec/pipeline.md §6.1)."""

from __future__ import annotations

import math

import pytest
import torch

from foleyrt.config import DiffusionConfig
from foleyrt.errors import InputError
from foleyrt.request import guidance_active
from foleyrt.sampling.schedule import flow_schedule


def test_release_schedule_is_a_linear_ramp() -> None:
    s = flow_schedule(50, DiffusionConfig())
    assert torch.equal(s.sigmas, torch.linspace(1, 0, 51))
    assert torch.equal(s.timesteps, (torch.linspace(1, 0, 51)[:-1] * 1000).float())
    assert s.steps == 50 and s.timesteps.dtype == torch.float32


def test_shift_and_reverse_follow_their_formulas() -> None:
    shift = 3.0
    s = flow_schedule(10, DiffusionConfig(sample_flow_shift=shift))
    base = torch.linspace(1, 0, 11)
    assert torch.allclose(s.sigmas, shift * base / (1 + (shift - 1) * base))
    rev = flow_schedule(10, DiffusionConfig(flow_reverse=False))
    assert torch.equal(rev.sigmas, 1 - base)


def test_flux_shift_depends_on_the_token_count() -> None:
    cfg = DiffusionConfig(sample_use_flux_shift=True)
    n = 400
    mu = (1.15 - 0.5) / (4096 - 256) * n + (0.5 - (1.15 - 0.5) / (4096 - 256) * 256)
    base = torch.linspace(1, 0, 6)
    expected = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    assert torch.allclose(flow_schedule(5, cfg, n_tokens=n).sigmas, expected)
    with pytest.raises(InputError, match="number of latent tokens"):
        flow_schedule(5, cfg)
    with pytest.raises(InputError, match="at least 1"):
        flow_schedule(0, DiffusionConfig())


def test_guidance_runs_above_one_only() -> None:
    assert [guidance_active(s) for s in (0.0, 1.0, 1.01, 4.5)] == [False, False, True, True]
