"""The denoising loop per acceleration mode, in one process.

For each model size and clip duration it times the 50-step CFG loop (batch 2: one sample,
guidance on) per mode:

- `release-pattern`: the release's execution pattern reproduced with our model (spec
  pipeline.md §6.4 / §10.1): bf16 weights under bf16 autocast, every step re-building the CFG
  rows and re-running all step-invariant condition work. A baseline, not the official code.
- `eager`, `compile`, `tensorrt` and `ACCEL:PRECISION` (e.g. `compile:fp8`): the transformer
  as `accel.recipes.apply` makes it for that runtime (quantised modes on a copy).

A row holds the loop's times over `runs` and its first run (compile and capture included), ms
per forward, FLOPs per forward counted by `torch.utils.flop_counter`, achieved TFLOP/s and % of
the measured bf16 matmul peak (an 8192^3 product timed in the same run), peak GPU memory, and
the final latent's cosine / max abs distance from an fp32 eager run with the same weights,
conditions and noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from foleyrt.accel.recipes import apply
from foleyrt.accel.runtime import AccelMode, Precision, RuntimeConfig, parse_enum
from foleyrt.bench.models import random_conditions, random_dit
from foleyrt.config import PRESETS, ModelSpec
from foleyrt.models.dit import FoleyDiT
from foleyrt.pipeline.pipeline import release_cuda_memory
from foleyrt.sampling.conditions import ConditionRows, Conditions, cfg_rows
from foleyrt.sampling.denoiser import Denoiser, Velocity
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import Schedule, flow_schedule

RELEASE_PATTERN = "release-pattern"
MODES = (RELEASE_PATTERN, "eager", "compile", "tensorrt")  # plus ACCEL:PRECISION


@dataclass
class LoopRow:
    size: str
    duration_s: float
    mode: str
    latent_frames: int
    runs_s: list[float]
    first_run_s: float
    ms_per_forward: float
    gflop_per_forward: float
    tflops: float
    pct_of_peak: float
    peak_mem_gb: float
    cos_vs_fp32: float | None = None
    max_abs_vs_fp32: float | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


class ReleasePatternDenoiser:
    """Every step as the release runs it: `forward` with the raw rows under bf16 autocast
    (rows re-expanded, conditions re-projected each step)."""

    text_masks = False

    def __init__(self, model: FoleyDiT) -> None:
        self.model = model

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        timesteps = schedule.timesteps.to(rows.clip.device)

        def velocity(x: Tensor, step: int) -> Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.model(x, timesteps[step].expand(x.shape[0]), rows.clip, rows.text,
                                  rows.sync)

        return velocity


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 TFLOP/s of a large square product (random data): the practical ceiling."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def mode_denoiser(dit: FoleyDiT, mode: str) -> Denoiser:
    """The denoiser of a bench mode. `ACCEL:PRECISION` modes quantise a copy (rebuilt from the
    state dict: `dit` may already carry compiled blocks); plain modes transform `dit` itself,
    so every eager mode must be measured before the first compiled one."""
    if mode == RELEASE_PATTERN:
        return ReleasePatternDenoiser(dit)
    accel, _, precision = mode.partition(":")
    param = next(dit.parameters())
    model = dit
    if precision:
        with torch.device("meta"):
            model = FoleyDiT(dit.config).to(param.dtype)
        model = model.to_empty(device=param.device)
        model.load_state_dict(dit.state_dict())
        model.eval().requires_grad_(False)
    runtime = RuntimeConfig(
        device=param.device, dtype=param.dtype,
        accel=parse_enum(AccelMode, accel, "acceleration mode"),
        precision=parse_enum(Precision, precision, "precision") if precision else None)
    return apply(model, runtime)


def run_loop(denoiser: Denoiser, cond: Conditions, noise: Tensor, steps: int, guidance: float,
             spec: ModelSpec) -> Tensor:
    """One full denoising loop; the conditions are prepared inside (part of a request's cost)."""
    schedule = flow_schedule(steps, spec.diffusion, n_tokens=noise.shape[-1])
    (latent,) = denoise(denoiser, [Task.whole(noise, guidance, cond)], schedule)
    return latent


def count_flops(dit: FoleyDiT, cond: Conditions, noise: Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    rows = cfg_rows(dit, cond, noise.shape[0], True, noise.shape[-1])
    prepared = dit.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
    x = torch.cat([noise, noise])
    t = torch.full((x.shape[0],), 500.0, device=noise.device)
    with FlopCounterMode(display=False) as counter:
        dit.velocity(x, t, prepared)
    return counter.get_total_flops()


def distance(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Cosine similarity and max abs difference, in fp64."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.nn.functional.cosine_similarity(a64, b64, dim=0).item()
    return cos, (a64 - b64).abs().max().item()


@torch.inference_mode()
def bench_loop(sizes: list[str], durations: list[float], modes: list[str], runs: int,
               steps: int, guidance: float, device: torch.device, peak_tflops: float,
               reference: bool = True) -> Iterator[LoopRow]:
    """A row per size, mode and duration (modes outermost, see `mode_denoiser`)."""
    for size in sizes:
        spec = PRESETS[size]
        dit = random_dit(spec, device, torch.bfloat16, seed=0)
        inputs = {}
        for duration in durations:
            cond, n_latent = random_conditions(spec, duration, device, seed=1)
            noise = torch.randn(1, spec.dit.audio_vae_latent_dim, n_latent, device=device,
                                generator=torch.Generator(device).manual_seed(2))
            inputs[duration] = (cond, noise, count_flops(dit, cond, noise.bfloat16()))
        refs = _fp32_references(dit, spec, inputs, steps, guidance) if reference else {}
        for mode in modes:
            denoiser = mode_denoiser(dit, mode)
            for duration, (cond, noise, flops) in inputs.items():
                x0 = noise.bfloat16()  # the release draws bf16 noise
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)

                def loop(d: Denoiser = denoiser, c: Conditions = cond, x: Tensor = x0,
                         s: ModelSpec = spec) -> Tensor:
                    return run_loop(d, c, x, steps, guidance, s)

                first, out = timed(loop, device)
                times = [timed(loop, device)[0] for _ in range(runs)]
                ms_fwd = statistics.median(times) / steps * 1e3
                tflops = flops / (ms_fwd / 1e3) / 1e12
                peak_mem = (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else float("nan"))
                row = LoopRow(size, duration, mode, noise.shape[-1], times, first, ms_fwd,
                              flops / 1e9, tflops, 100 * tflops / peak_tflops, peak_mem)
                if duration in refs:
                    row.cos_vs_fp32, row.max_abs_vs_fp32 = distance(out, refs[duration])
                yield row
            del denoiser
            release_cuda_memory()
        del dit
        release_cuda_memory()


def _fp32_references(dit: FoleyDiT, spec: ModelSpec, inputs: dict, steps: int,
                     guidance: float) -> dict[float, Tensor]:
    """Final latents of an fp32 eager run (same weights upcast, same conditions and noise),
    all computed before any timing so the fp32 copy never inflates the memory figures."""
    device = next(dit.parameters()).device
    dit32 = random_dit(spec, device, torch.float32, seed=0)
    dit32.load_state_dict({k: v.float() for k, v in dit.state_dict().items()})
    eager = mode_denoiser(dit32, "eager")
    with _no_tf32():
        refs = {d: run_loop(eager, cond, noise, steps, guidance, spec)
                for d, (cond, noise, _) in inputs.items()}
    del dit32, eager
    release_cuda_memory()
    return refs


class _no_tf32:
    def __enter__(self) -> None:
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
