"""CFG-parallel latency: the denoising loop of one request on one GPU, and the same loop split
over two (`accel.parallel`: the unconditional rows on this GPU, the conditional rows on the
next one), in one process and one session, with random weights.

Per size, mode and duration: the one-GPU loop is timed with the mode's denoiser, then the
same denoiser is wrapped as rank 0 of CFG-parallel (rank 1 builds the same random transformer,
seed 0, on the next GPU) and timed again; the row holds both times, the first two-GPU run
(rank 1's compile and both ranks' graph captures included) and the distance between the two
final latents (the halves' GEMMs have half the rows, so bf16 rounds them slightly apart).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from foleyrt.accel.parallel import CfgParallel
from foleyrt.accel.runtime import ParallelMode, RuntimeConfig
from foleyrt.bench.loop import distance, mode_denoiser, run_loop, timed
from foleyrt.bench.models import random_conditions, random_dit
from foleyrt.config import PRESETS
from foleyrt.pipeline.pipeline import release_cuda_memory
from foleyrt.sampling.denoiser import Denoiser
from foleyrt.sampling.loop import Task
from foleyrt.sampling.schedule import flow_schedule

DTYPE = torch.bfloat16  # the bench's transformers, as `bench.loop`'s


@dataclass
class ParallelRow:
    size: str
    duration_s: float
    mode: str
    latent_frames: int
    one_gpu_s: list[float]
    two_gpu_s: list[float]
    first_two_gpu_s: float
    cos_vs_one_gpu: float
    max_abs_vs_one_gpu: float

    @property
    def speedup(self) -> float:
        return statistics.median(self.one_gpu_s) / statistics.median(self.two_gpu_s)


def rank1_denoiser(size: str, mode: str, runtime: RuntimeConfig) -> Denoiser:
    """Rank 1's denoiser: the bench's random transformer (seed 0) on its own device."""
    return mode_denoiser(random_dit(PRESETS[size], runtime.device, DTYPE, seed=0), mode)


@torch.inference_mode()
def bench_cfg_parallel(sizes: list[str], durations: list[float], modes: list[str], runs: int,
                       steps: int, guidance: float, device: torch.device
                       ) -> Iterator[ParallelRow]:
    """A row per size, mode and duration (eager modes before compiled ones, as in
    `bench.loop.mode_denoiser`)."""
    for size in sizes:
        spec = PRESETS[size]
        dit = random_dit(spec, device, DTYPE, seed=0)
        for mode in modes:
            local = mode_denoiser(dit, mode)
            runtime = RuntimeConfig(device=device, dtype=DTYPE, parallel=ParallelMode.CFG)
            parallel = CfgParallel(runtime, partial(rank1_denoiser, size, mode))
            try:
                parallel.attach(local)
                for duration in durations:
                    yield _row(local, parallel, size, mode, duration, runs, steps, guidance)
            finally:
                parallel.close()
            del local
            release_cuda_memory()
        del dit
        release_cuda_memory()


def _row(local: Denoiser, parallel: CfgParallel, size: str, mode: str, duration: float,
         runs: int, steps: int, guidance: float) -> ParallelRow:
    """One duration timed on one GPU (`local`), then on two (`parallel`, wrapping `local`)."""
    spec = PRESETS[size]
    device = next(local.model.parameters()).device
    cond, n_latent = random_conditions(spec, duration, device, seed=1)
    x0 = torch.randn(1, spec.dit.audio_vae_latent_dim, n_latent, device=device,
                     generator=torch.Generator(device).manual_seed(2)).to(DTYPE)
    schedule = flow_schedule(steps, spec.diffusion, n_tokens=n_latent)

    def one() -> Tensor:
        return run_loop(local, cond, x0, steps, guidance, spec)

    def two() -> Tensor:
        return parallel.denoise([Task.whole(x0, guidance, cond)], schedule)[0]

    _, want = timed(one, device)  # warm-up: compile and capture
    one_s = [timed(one, device)[0] for _ in range(runs)]
    first, got = timed(two, device)
    two_s = [timed(two, device)[0] for _ in range(runs)]
    cos, max_abs = distance(got, want)
    return ParallelRow(size, duration, mode, n_latent, one_s, two_s, first, cos, max_abs)
