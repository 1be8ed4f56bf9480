"""The Euler loop over many requests and windows: cancellation, several clips sharing a
forward (the same numbers as one at a time), and windowed sampling (blend weights, exactness
for a frame-wise model, independence of how windows are grouped)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from foleyrt.config import TINY
from foleyrt.errors import Cancelled
from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.denoiser import ModuleDenoiser, Velocity
from foleyrt.sampling.loop import (
    StepEvent,
    Task,
    Window,
    blend_in,
    blend_ramp,
    denoise,
    plan_forwards,
)
from foleyrt.sampling.schedule import Schedule, flow_schedule
from tests.tiny import tiny_conditions

SCHEDULE = flow_schedule(4, TINY.diffusion)


def _noise(seed: int, n: int = 1, frames: int = 40) -> Tensor:
    return torch.randn(n, 128, frames, generator=torch.Generator().manual_seed(seed))


class FrameWise:
    """A denoiser whose velocity is a function of each latent frame alone (and the step): a
    window of it sees exactly what the whole latent sees."""

    text_masks = True

    def __init__(self, model: FoleyDiT) -> None:
        self.model = model
        self.rows: list[int] = []  # rows of every forward prepared

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        self.rows.append(rows.rows)
        return lambda x, step: torch.tanh(x) * (0.5 + 0.1 * step)


def _close(a: Tensor, b: Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), 0)
    assert cos >= 0.999999 and (a - b).abs().max() <= 1e-5


@torch.inference_mode()
def test_cancelling_stops_after_the_step_that_asked(tiny_dit) -> None:
    seen: list[int] = []

    def stop_at_two(event: StepEvent) -> bool:
        seen.append(event.index)
        return event.index == 1

    task = Task.whole(_noise(0), 4.5, tiny_conditions(0))
    with pytest.raises(Cancelled):
        denoise(ModuleDenoiser(tiny_dit), [task], SCHEDULE, on_step=stop_at_two)
    assert seen == [0, 1]


@torch.inference_mode()
def test_clips_sharing_a_forward_give_their_one_at_a_time_results(tiny_dit) -> None:
    """Different seeds, sample counts, guidance scales (one unguided) and lengths (two shapes),
    at most 4 rows per forward: every request as if it ran alone."""
    denoiser = ModuleDenoiser(tiny_dit)
    tasks = [Task.whole(_noise(1, 1), 4.5, tiny_conditions(1)),
             Task.whole(_noise(2, 2), 3.0, tiny_conditions(2)),
             Task.whole(_noise(3, 1), 1.0, tiny_conditions(3)),
             Task.whole(_noise(4, 1, 56), 4.5, tiny_conditions(4, sync_tokens=24)),
             Task.whole(_noise(5, 1), 4.5, tiny_conditions(5))]
    forwards = plan_forwards(denoiser, tasks, max_rows=4)
    assert sorted(sum(b.rows.rows for b in f.blocks) for f in forwards) == [1, 2, 4, 4]
    assert all(len({b.rows.audio_len for b in f.blocks}) == 1 for f in forwards)  # no padding
    together = denoise(denoiser, tasks, SCHEDULE, max_rows=4)
    for task, got in zip(tasks, together, strict=True):
        _close(got, denoise(denoiser, [task], SCHEDULE)[0])


@torch.inference_mode()
def test_texts_of_other_lengths_share_a_forward_masked(tiny_dit) -> None:
    """Prompts tokenise to other lengths: their rows are padded to the longest and the padding
    masked out of the cross-attention, the same numbers as each request alone."""
    denoiser = ModuleDenoiser(tiny_dit)
    tasks = [Task.whole(_noise(11, 1), 4.5, tiny_conditions(11, text_tokens=7)),
             Task.whole(_noise(12, 2), 4.5, tiny_conditions(12, text_tokens=12)),
             Task.whole(_noise(13, 1), 4.5, tiny_conditions(13, text_tokens=3))]
    (forward,) = plan_forwards(denoiser, tasks, None)
    rows = ConditionRows.cat([b.rows for b in forward.blocks])
    assert rows.text.shape[1] == 12 and rows.text_mask is not None
    assert rows.text_mask.sum(1).tolist() == [7, 12, 12, 3, 7, 12, 12, 3]  # halves layout
    together = denoise(denoiser, tasks, SCHEDULE)
    for task, got in zip(tasks, together, strict=True):
        _close(got, denoise(denoiser, [task], SCHEDULE)[0])


def _windowed(noise: Tensor, starts: list[int], length: int, taper: int) -> Task:
    return Task(noise, 4.5, tuple(Window(s, length, tiny_conditions(s)) for s in starts), taper)


def _blend_weights(task: Task) -> list[Tensor]:
    """Each window's weight per frame of its stretch in the loop's running mean (`blend_in`):
    the blend of a velocity that is 1 in that window and 0 in the others."""
    n_latent, weights = task.noise.shape[-1], []
    for k, own in enumerate(task.windows):
        blended = torch.zeros(1, 1, n_latent, dtype=torch.float64)
        total = torch.zeros(n_latent, dtype=torch.float64)
        for j, w in enumerate(task.windows):
            blend_in(blended, total, slice(w.start, w.stop),
                     torch.full((1, 1, w.length), float(j == k), dtype=torch.float64),
                     blend_ramp(w.length, task.taper))
        weights.append(blended[0, 0, own.start:own.stop])
    return weights


def test_blend_weights_sum_to_one_and_ramp_in_overlaps() -> None:
    task = _windowed(_noise(0, 1, 100), [0, 30, 60], 40, taper=10)
    weights = _blend_weights(task)
    total = torch.zeros(100, dtype=torch.float64)
    for w, window in zip(weights, task.windows, strict=True):
        total[window.start:window.stop] += w
        assert (w > 0).all()
    assert torch.allclose(total, torch.ones(100, dtype=torch.float64))
    assert weights[0][:30].eq(1).all() and weights[0][-1] < weights[0][-5] < 1


@torch.inference_mode()
def test_a_frame_wise_model_gives_exactly_the_unwindowed_result(tiny_dit) -> None:
    noise = _noise(7, 2, 100)
    whole = denoise(FrameWise(tiny_dit), [Task.whole(noise, 4.5, tiny_conditions(0))],
                    SCHEDULE)[0]
    windowed = denoise(FrameWise(tiny_dit), [_windowed(noise, [0, 30, 60], 40, 10)],
                       SCHEDULE)[0]
    assert torch.equal(windowed, whole)


@torch.inference_mode()
def test_one_window_is_the_single_clip_path_bit_for_bit(tiny_dit) -> None:
    noise, cond = _noise(8), tiny_conditions(8)
    denoiser = ModuleDenoiser(tiny_dit)
    whole = denoise(denoiser, [Task.whole(noise, 4.5, cond)], SCHEDULE)[0]
    one = denoise(denoiser, [Task(noise, 4.5, (Window(0, 40, cond),), taper=10)], SCHEDULE)[0]
    assert torch.equal(one, whole)


@torch.inference_mode()
def test_windows_do_not_depend_on_how_they_are_grouped(tiny_dit) -> None:
    """The real tiny model, three windows: all in one forward, or one per forward."""
    task = _windowed(_noise(9, 1, 100), [0, 30, 60], 40, 10)
    counting = FrameWise(tiny_dit)
    denoise(counting, [task], SCHEDULE, max_rows=2)
    assert counting.rows == [2, 2, 2]
    denoiser = ModuleDenoiser(tiny_dit)
    grouped = denoise(denoiser, [task], SCHEDULE)[0]
    apart = denoise(denoiser, [task], SCHEDULE, max_rows=2)[0]
    _close(apart, grouped)


def test_windows_must_cover_the_latent() -> None:
    with pytest.raises(ValueError, match="uncovered"):
        _windowed(_noise(0, 1, 100), [0, 50], 40, 5)
    with pytest.raises(ValueError, match="outside the latent"):
        _windowed(_noise(0, 1, 100), [0, 70], 40, 5)


@torch.inference_mode()
def test_preparing_at_every_step_gives_the_same_numbers(tiny_dit) -> None:
    """`hold_prepared=False` (a very long clip's forwards, prepared again per step instead of
    kept) changes memory, not numbers."""
    task = _windowed(_noise(10, 1, 100), [0, 30, 60], 40, 10)
    counting = FrameWise(tiny_dit)
    denoise(counting, [task], SCHEDULE, max_rows=4, hold_prepared=False)
    assert counting.rows == [4, 2] * SCHEDULE.steps
    denoiser = ModuleDenoiser(tiny_dit)
    held = denoise(denoiser, [task], SCHEDULE, max_rows=4)[0]
    fresh = denoise(denoiser, [task], SCHEDULE, max_rows=4, hold_prepared=False)[0]
    assert torch.equal(fresh, held)
