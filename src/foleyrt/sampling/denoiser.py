"""The seam between the sampler and the transformer.

A `Denoiser` is prepared once for the rows of a forward (their conditions and the schedule):
the step-invariant work happens there. What `prepare` returns is called once per step with the
rows' latents and the step index, and returns their raw velocity. Every acceleration mode is a
Denoiser (the eager module here; compiled + fused + graphed, streamed blocks and TensorRT in
`foleyrt.accel`), and every way the work scales fills its rows: several clips of one length,
the windows of a long clip, the halves of CFG on two GPUs.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.schedule import Schedule


class Velocity(Protocol):
    """A denoiser prepared for one set of rows: `(x [B, C, Na], step) -> raw velocity`."""

    def __call__(self, x: Tensor, step: int) -> Tensor: ...


class Denoiser(Protocol):
    """`model` is the transformer whose learnt empty features make the unconditional rows
    (an engine-backed denoiser keeps the module for that and for `prepare`'s projections).
    `text_masks`: whether `prepare` takes rows whose texts were padded to one length and
    masked (`ConditionRows.text_mask`), so that requests with texts of other lengths can share
    a forward."""

    model: FoleyDiT
    text_masks: bool

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity: ...


class ModuleDenoiser:
    """The transformer module as written: `FoleyDiT.prepare` once, `FoleyDiT.velocity` per
    step (the eager mode, and what streamed blocks run)."""

    text_masks = True

    def __init__(self, model: FoleyDiT) -> None:
        self.model = model

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        model = self.model
        prepared = model.prepare(rows.clip, rows.text, rows.sync, rows.audio_len, rows.text_mask)
        timesteps = schedule.timesteps.to(rows.clip.device)

        def velocity(x: Tensor, step: int) -> Tensor:
            return model.velocity(x, timesteps[step].expand(x.shape[0]), prepared)

        return velocity
