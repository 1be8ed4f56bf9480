"""The whole pipeline, warm: video file -> features -> 50 steps -> VAE -> written MP4, with
real-size random-weight encoders, VAE and transformer, per runtime variant (acceleration,
precision, memory mode). Each variant gets freshly built networks (its recipes transform them
in place) with the same random weights and seed; its final latents and audio are compared with
the first variant's (random-weight VAEs amplify small latent differences: the latent figures
are the meaningful ones)."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from foleyrt.accel.calibration import ActivationRecorder, save_calibration
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.bench.loop import distance
from foleyrt.bench.models import random_conditions, random_dit
from foleyrt.config import PRESETS, RANDOM, ModelSpec
from foleyrt.errors import UsageError
from foleyrt.media.synthetic import write_test_clip
from foleyrt.pipeline.pipeline import FoleyPipeline, FoleyResult, Progress, release_cuda_memory
from foleyrt.request import DEFAULT_GUIDANCE, DEFAULT_WINDOW, GenerationRequest
from foleyrt.sampling.denoiser import ModuleDenoiser
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import flow_schedule

PROMPT = "footsteps on gravel"
CALIBRATION_STEPS = 4


@dataclass
class PipelineRow:
    size: str
    duration_s: float
    variant: str
    runs_s: list[float]
    peak_mem_gb: float
    latent_cos_vs_first: float
    latent_snr_db_vs_first: float
    audio_cos_vs_first: float
    audio_snr_db_vs_first: float
    stages: dict[str, float] = field(default_factory=dict)  # of the median run
    stage_peak_mem_gb: dict[str, float] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def parse_variant(text: str) -> tuple[str, str | None, str]:
    """`ACCEL[/PRECISION[/OFFLOAD]]`, e.g. `compile`, `compile/fp8`, `eager/bf16/blocks:4`,
    `compile/fp8+calibrated` (static scales recorded on the random weights)."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 3:
        raise UsageError(f"pipeline variant {text!r} is not ACCEL[/PRECISION[/OFFLOAD]]")
    precision = parts[1] if len(parts) > 1 else None
    offload = parts[2] if len(parts) > 2 else ""
    return parts[0], precision, offload or "none"


def snr_db(got: Tensor, ref: Tensor) -> float:
    noise = (got.double() - ref.double()).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item() / noise)


def bench_pipeline(size: str, durations: list[float], variants: list[str], runs: int,
                   steps: int, device: torch.device, video_dir: Path | None = None
                   ) -> Iterator[PipelineRow]:
    """A row per variant and duration (720p 30 fps synthetic clips)."""
    spec = PRESETS[size]
    workdir = Path(video_dir or tempfile.mkdtemp(prefix="foleyrt-bench-"))
    clips = {d: write_test_clip(workdir / f"clip_{d:g}s.mp4", d, width=1280, height=720, fps=30)
             for d in durations}
    request = GenerationRequest(prompt=PROMPT, steps=steps, seed=0)
    first: dict[float, tuple[Tensor, Tensor]] = {}  # the first variant's audio and latents
    for n, variant in enumerate(variants):
        pipe = variant_pipeline(spec, variant, device)
        for duration, video in clips.items():
            runs_s, stages, peak, result = time_pipeline(
                pipe, video, workdir / f"out_{n}.mp4", runs, request)
            assert result.latents is not None
            outputs = (result.audio, result.latents)
            ref_audio, ref_latent = first.setdefault(duration, outputs)
            yield PipelineRow(
                size, duration, variant, runs_s, peak,
                distance(outputs[1], ref_latent)[0], snr_db(outputs[1], ref_latent),
                distance(outputs[0], ref_audio)[0], snr_db(outputs[0], ref_audio),
                stages, _stage_peaks(pipe, video, request))
        del pipe
        release_cuda_memory()


def variant_pipeline(spec: ModelSpec, variant: str, device: torch.device) -> FoleyPipeline:
    """Freshly built random-weight networks (the same for every variant) placed for
    `variant`: its recipes transform them in place."""
    accel, precision, offload = parse_variant(variant)
    precision, _, calibrated = (precision or "").partition("+")
    with tempfile.TemporaryDirectory(prefix="foleyrt-bench-") as tmp:
        calibration = _random_calibration(spec, device, Path(tmp)) if calibrated else None
        runtime = RuntimeConfig.build(str(device), accel=accel, precision=precision or None,
                                      offload=offload, calibration=calibration)
    return FoleyPipeline.from_pretrained(RANDOM, spec.name, runtime)


@torch.inference_mode()
def _random_calibration(spec: ModelSpec, device: torch.device, directory: Path) -> Path:
    """Activation ranges of the random weights (the variants' seed) over a short bf16 eager
    loop of a 10 s clip, written as a calibration file."""
    dit = random_dit(spec, device, torch.bfloat16, seed=0)
    cond, frames = random_conditions(spec, DEFAULT_WINDOW, device, seed=1)
    noise = torch.randn(1, 128, frames, device=device,
                        generator=torch.Generator(device).manual_seed(7)).bfloat16()
    with ActivationRecorder(quantizable_modules(dit)) as rec:
        denoise(ModuleDenoiser(dit), [Task.whole(noise, DEFAULT_GUIDANCE, cond)],
                flow_schedule(CALIBRATION_STEPS, spec.diffusion, n_tokens=frames))
    return save_calibration(rec.calibration(AMAX_FLOOR, {}), directory / "calibration.safetensors")


def time_pipeline(pipe: FoleyPipeline, video: Path, out: Path, runs: int,
                  request: GenerationRequest, timed: AbstractContextManager[object] | None = None
                  ) -> tuple[list[float], dict[str, float], float, FoleyResult]:
    """One warm-up and `runs` timed generations of `video` written to `out` (inside `timed`,
    e.g. a memory sampler): their times, the median run's stages, the peak GPU memory, and
    the last result."""
    device = pipe.runtime.device
    last: FoleyResult | None = None

    def run() -> dict[str, float]:
        nonlocal last
        last = pipe.generate(video, request)
        t = time.perf_counter()
        last.save(out, overwrite=True)
        return {**last.timings, "mux": time.perf_counter() - t}

    run()  # warm-up: compile, capture, cudnn autotune
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stages, times = [], []
    with timed or nullcontext():
        for _ in range(runs):
            t = time.perf_counter()
            stages.append(run())
            times.append(time.perf_counter() - t)
    assert last is not None
    peak = (torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda" else math.nan)
    mid = stages[times.index(statistics.median_low(times))]
    return times, {k: round(v, 3) for k, v in mid.items()}, peak, last


def _stage_peaks(pipe: FoleyPipeline, video: Path, request: GenerationRequest
                 ) -> dict[str, float]:
    """Peak GPU memory (GiB) of each stage of one more, untimed generation: which stage sets
    the whole pipeline's peak, and so what a memory saving has to shrink."""
    device = pipe.runtime.device
    if device.type != "cuda":
        return {}
    peaks: dict[str, float] = {}
    current = "start"

    def close_stage(name: str) -> None:
        nonlocal current
        torch.cuda.synchronize(device)
        peaks[current] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
        current = name

    def on_progress(p: Progress) -> None:
        if p.stage != current:
            close_stage(p.stage)

    torch.cuda.reset_peak_memory_stats(device)
    pipe.generate(video, request, progress=on_progress)
    close_stage("end")
    peaks.pop("start", None)
    return peaks
