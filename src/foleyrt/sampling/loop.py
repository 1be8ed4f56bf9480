"""The flow-matching Euler loop with classifier-free guidance, over many requests at once.

Each `Task` is one request's latent (its samples, its guidance scale) covered by one or more
`Window`s, each with the conditions of its stretch. The loop turns every window into rows
(`cfg_rows`), groups rows of equal shape and CFG layout into forwards (at most `max_rows`
rows each; a window's rows are never split), prepares the denoiser once per forward, and then
at every step evaluates all forwards, combines each window's guided velocity, blends the
windows of a task into one velocity over its latent, and takes the Euler step. The numbers
follow the release: guidance and the update in fp32, unconditional rows first; a task with one
window takes exactly the single-clip path.

Windows overlap: in an overlap every window's guided velocity is weighted by a smooth ramp
that falls towards its edges, normalised so the weights at every frame sum to one (as
MultiDiffusion does for panoramas). The blend is a running weighted mean in window order
(`v += w_k / (w_1 + ... + w_k) * (g_k - v)`), so windows that agree blend to exactly their
common value, and the result never depends on how windows were grouped into forwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.errors import Cancelled
from foleyrt.request import guidance_active, transformer_rows
from foleyrt.sampling.conditions import ConditionRows, Conditions, cfg_rows
from foleyrt.sampling.denoiser import Denoiser, Velocity
from foleyrt.sampling.schedule import Schedule


@dataclass(frozen=True)
class Window:
    """`length` latent frames from `start`, conditioned on `conditions` (the features of
    exactly that stretch, as a clip of that length would have them)."""

    start: int
    length: int
    conditions: Conditions

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass
class Task:
    """One request's latent: `noise [n, C, Na]` (used as given: the release rounds it to the
    transformer's dtype), its guidance scale, and windows covering `[0, Na)` in order."""

    noise: Tensor
    guidance: float
    windows: tuple[Window, ...]
    taper: int = 0  # frames over which a window's blend weight ramps up from its edges

    @classmethod
    def whole(cls, noise: Tensor, guidance: float, conditions: Conditions) -> Task:
        """A clip that fits one window: today's single-clip path."""
        return cls(noise, guidance, (Window(0, noise.shape[-1], conditions),))

    def __post_init__(self) -> None:
        n_latent = self.noise.shape[-1]
        covered = torch.zeros(n_latent, dtype=torch.bool)
        for w in self.windows:
            if not 0 <= w.start < w.stop <= n_latent:
                raise ValueError(f"window [{w.start}, {w.stop}) outside the latent [0, {n_latent})")
            covered[w.start:w.stop] = True
        if not bool(covered.all()):
            raise ValueError("the windows leave latent frames uncovered")

    @property
    def guided(self) -> bool:
        return guidance_active(self.guidance)

    @property
    def samples(self) -> int:
        return self.noise.shape[0]

    @property
    def window_rows(self) -> int:
        """Transformer rows of each window: its samples, twice with guidance."""
        return transformer_rows(self.samples, self.guidance)


@dataclass
class StepEvent:
    """Passed to `on_step` after every step; return True (or raise `Cancelled`) to stop.
    Per task: the latent after the step (fp32), the velocity of the update, and, for a task
    of one window, the raw model output of its rows (unconditional rows first)."""

    index: int
    total: int
    timestep: Tensor
    latents: list[Tensor]
    guided: list[Tensor]
    model_out: list[Tensor | None]


StepCallback = Callable[[StepEvent], bool | None]


def blend_ramp(length: int, taper: int) -> Tensor:
    """A window's unnormalised blend weight per frame: a raised-cosine rise over `taper`
    frames from each edge, 1 in between (positive everywhere, so a frame that only one
    window covers gets exactly that window's velocity)."""
    if taper <= 0:
        return torch.ones(length, dtype=torch.float64)
    distance = torch.minimum(torch.arange(length), torch.arange(length).flip(0)).double()
    rise = torch.clamp((distance + 0.5) / taper, max=1.0)
    return torch.sin(rise * (math.pi / 2)) ** 2


@dataclass
class _Block:
    """One window's rows inside a forward."""

    task: int
    window: int
    rows: ConditionRows


@dataclass
class _Forward:
    """Rows of several blocks evaluated together, prepared once (or once per step)."""

    blocks: list[_Block]
    velocity: Velocity | None = None

    @property
    def rows(self) -> int:
        return sum(b.rows.rows for b in self.blocks)

    def prepare(self, denoiser: Denoiser, schedule: Schedule) -> Velocity:
        return denoiser.prepare(ConditionRows.cat([b.rows for b in self.blocks]), schedule)


def plan_forwards(
    denoiser: Denoiser, tasks: Sequence[Task], max_rows: int | None
) -> list[_Forward]:
    """Every window's rows, grouped by shape and CFG layout into forwards of at most
    `max_rows` rows, each block into the first forward with room (None: no limit; a block
    larger than the limit gets a forward alone). Texts of other lengths share a forward where
    the denoiser masks padded text (`Denoiser.text_masks`)."""
    groups: dict[tuple, list[_Forward]] = {}
    for t, task in enumerate(tasks):
        for k, window in enumerate(task.windows):
            rows = cfg_rows(denoiser.model, window.conditions, task.samples, task.guided,
                            window.length)
            text = rows.text.shape[2:] if denoiser.text_masks else rows.text.shape[1:]
            key = (rows.audio_len, rows.clip.shape[1:], rows.sync.shape[1:], text, rows.guided)
            forwards = groups.setdefault(key, [])
            fits = (f for f in forwards
                    if max_rows is None or f.rows + rows.rows <= max_rows)
            forward = next(fits, None)
            if forward is None:
                forward = _Forward([])
                forwards.append(forward)
            forward.blocks.append(_Block(t, k, rows))
    return [f for forwards in groups.values() for f in forwards]


def denoise(
    denoiser: Denoiser,
    tasks: Sequence[Task],
    schedule: Schedule,
    *,
    max_rows: int | None = None,
    on_step: StepCallback | None = None,
    hold_prepared: bool = True,
) -> list[Tensor]:
    """Integrate every task from noise (sigma 1) to data (sigma 0); returns their fp32
    latents in order. With guidance a window's rows are `[x; x]` and its velocity is
    `v = v_u + s (v_c - v_u)`. `hold_prepared=False` prepares each forward again at every
    step instead of keeping every forward's prepared conditions (the windows of a very long
    clip: memory that would grow with its length; the numbers are the same)."""
    forwards = plan_forwards(denoiser, tasks, max_rows)
    if hold_prepared:
        for forward in forwards:
            forward.velocity = forward.prepare(denoiser, schedule)
    device = tasks[0].noise.device
    ramps = [[blend_ramp(w.length, task.taper).to(device) for w in task.windows]
             if len(task.windows) > 1 else None for task in tasks]
    sigmas, timesteps = schedule.sigmas.to(device), schedule.timesteps.to(device)
    dts = sigmas[1:] - sigmas[:-1]
    latents = [task.noise for task in tasks]
    for i in range(schedule.steps):
        guided: dict[tuple[int, int], Tensor] = {}
        model_out: list[Tensor | None] = [None] * len(tasks)
        for forward in forwards:
            velocity = (forward.velocity if forward.velocity is not None
                        else forward.prepare(denoiser, schedule))
            _evaluate(forward, velocity, tasks, latents, i, guided, model_out)
        velocities = [guided[(t, 0)] if ramp is None else _blend(task, t, guided, ramp)
                      for t, (task, ramp) in enumerate(zip(tasks, ramps, strict=True))]
        latents = [x.float() + v * dts[i] for x, v in zip(latents, velocities, strict=True)]
        if on_step is not None and on_step(
            StepEvent(i, schedule.steps, timesteps[i], latents, velocities, model_out)
        ):
            raise Cancelled("generation cancelled")
    return latents


def _evaluate(forward: _Forward, velocity: Velocity, tasks: Sequence[Task],
              latents: list[Tensor], step: int, guided: dict[tuple[int, int], Tensor],
              model_out: list[Tensor | None]) -> None:
    """One forward of a step: each of its windows' guided velocities into `guided`."""
    blocks = forward.blocks
    spans = [tasks[b.task].windows[b.window] for b in blocks]
    parts = [latents[b.task][..., w.start:w.stop] for b, w in zip(blocks, spans, strict=True)]
    x = torch.cat(parts)
    cfg = blocks[0].rows.guided
    out = velocity(torch.cat([x, x]) if cfg else x, step).float()
    halves = out.chunk(2) if cfg else (out,)
    first = 0
    for block, part in zip(blocks, parts, strict=True):
        rows = slice(first, first + part.shape[0])
        first += part.shape[0]
        task = tasks[block.task]
        if cfg:
            v_uncond, v_cond = halves[0][rows], halves[1][rows]
            guided[(block.task, block.window)] = v_uncond + task.guidance * (v_cond - v_uncond)
        else:
            guided[(block.task, block.window)] = halves[0][rows]
        if len(task.windows) == 1:
            model_out[block.task] = out if len(blocks) == 1 else torch.cat(
                [h[rows] for h in halves])


def _blend(task: Task, index: int, guided: dict[tuple[int, int], Tensor],
           ramps: list[Tensor]) -> Tensor:
    """The task's velocity over its whole latent: the running weighted mean of its windows'
    guided velocities, in window order (see the module docstring)."""
    first = guided[(index, 0)]
    n_latent = task.noise.shape[-1]
    total = torch.zeros(n_latent, dtype=torch.float64, device=first.device)
    blended = first.new_zeros(*first.shape[:2], n_latent)
    for k, (window, ramp) in enumerate(zip(task.windows, ramps, strict=True)):
        blend_in(blended, total, slice(window.start, window.stop), guided[(index, k)], ramp)
    return blended


def blend_in(blended: Tensor, total: Tensor, span: slice, value: Tensor, ramp: Tensor) -> None:
    """One more window's share of a running weighted mean over the last axis: `value` over
    `span` with weights `ramp`; `total` (fp64) holds the weights so far."""
    total[span] += ramp
    share = (ramp / total[span]).to(blended.dtype)
    blended[..., span] += share * (value - blended[..., span])
