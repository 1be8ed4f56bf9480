"""GPU kernel times of one forward, and their classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.denoiser import Denoiser
from foleyrt.sampling.loop import Task, plan_forwards
from foleyrt.sampling.schedule import Schedule

# First match wins: cuDNN's attention kernels also carry "sm90_" in their names.
KERNEL_CLASSES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "matmul")),
    ("triton (fused elementwise/norm)", ("triton",)),
)


@dataclass(frozen=True)
class KernelTime:
    name: str
    ms: float
    calls: int

    @property
    def kind(self) -> str:
        low = self.name.lower()
        return next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")


def profiled_kernels(run: Callable[[], object], device: torch.device) -> list[KernelTime]:
    """Every GPU kernel of one call of `run`, with its time and call count."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    return [KernelTime(e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_time_total > 0]


def forward_kernels(denoiser: Denoiser, task: Task, schedule: Schedule,
                    warmup: int = 3) -> list[KernelTime]:
    """The kernels of one forward of `task`'s rows at the schedule's middle step (after
    `warmup` calls); `denoiser` should not capture graphs (a replay hides its kernels)."""
    (forward,) = plan_forwards(denoiser, [task], None)
    rows = ConditionRows.cat([b.rows for b in forward.blocks])
    velocity = denoiser.prepare(rows, schedule)
    x = torch.cat([task.noise, task.noise]) if rows.guided else task.noise
    step = schedule.steps // 2
    for _ in range(warmup):
        velocity(x, step)
    return profiled_kernels(lambda: velocity(x, step), x.device)
