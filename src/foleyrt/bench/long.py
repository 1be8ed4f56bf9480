"""Long videos through the whole pipeline, warm: a synthetic 720p 30 fps clip per duration,
generated in windows and written as an MP4, beside a 15 s clip (one pass: the memory
reference the long ones are held to). Per row: the denoising loop's time, the whole
pipeline's (file in, MP4 out), the peak GPU memory and its ratio to the 15 s clip's, and the
peak resident host memory of the process (sampled while the timed runs run)."""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from foleyrt.bench.host import HostPeak
from foleyrt.bench.pipeline import PROMPT, time_pipeline, variant_pipeline
from foleyrt.config import PRESETS
from foleyrt.media.synthetic import ClipSpec, encode_clip
from foleyrt.pipeline.pipeline import FoleyPipeline, release_cuda_memory
from foleyrt.request import MAX_SECONDS, GenerationRequest

# The clips are encoded once per run of the bench: the fastest x264 preset keeps a ten-minute
# 720p clip from taking longer to make than to score.
CLIP_OPTIONS = {"preset": "ultrafast"}


@dataclass
class LongRow:
    size: str
    duration_s: float
    variant: str
    windows: int
    runs_s: list[float]  # whole pipeline, file in -> MP4 out
    denoise_s: float  # of the median run
    peak_gpu_gb: float
    peak_gpu_vs_15s: float
    peak_host_gb: float
    stages: dict[str, float] = field(default_factory=dict)  # of the median run

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def bench_long(size: str, durations: list[float], variants: list[str], runs: int, steps: int,
               device: torch.device, video_dir: Path | None = None,
               frame_size: tuple[int, int] = (1280, 720),
               reference_s: float = MAX_SECONDS) -> Iterator[LongRow]:
    """A row per variant for a `reference_s` clip, then for each of `durations` (seconds);
    clips of `frame_size` (width, height)."""
    if video_dir is None:
        with tempfile.TemporaryDirectory(prefix="foleyrt-bench-long-") as tmp:
            yield from bench_long(size, durations, variants, runs, steps, device, Path(tmp),
                                  frame_size, reference_s)
        return
    spec = PRESETS[size]
    clips = {d: _clip(video_dir, d, frame_size) for d in [reference_s, *durations]}
    request = GenerationRequest(prompt=PROMPT, steps=steps, seed=0,
                                max_duration=max(clips) + 1)
    for n, variant in enumerate(variants):
        pipe = variant_pipeline(spec, variant, device)
        reference = math.nan
        for duration, video in clips.items():
            row = _time(pipe, video, video_dir / f"out_{n}.mp4", runs, request)
            row.size, row.duration_s, row.variant = size, duration, variant
            if duration == reference_s:
                reference = row.peak_gpu_gb
            row.peak_gpu_vs_15s = row.peak_gpu_gb / reference
            yield row
        del pipe
        release_cuda_memory()


def _clip(workdir: Path, seconds: float, size: tuple[int, int]) -> Path:
    path = workdir / f"clip_{seconds:g}s_{size[0]}x{size[1]}.mp4"
    if not path.exists():
        encode_clip(path, ClipSpec("libx264", ".mp4", Fraction(30), seconds, size=size,
                                   options=CLIP_OPTIONS))
    return path


def _time(pipe: FoleyPipeline, video: Path, out: Path, runs: int,
          request: GenerationRequest) -> LongRow:
    """`runs` timed runs after one warm-up (compilation, graphs for new shapes), the host
    memory sampled while they run."""
    host = HostPeak()
    times, stages, peak, result = time_pipeline(pipe, video, out, runs, request, host)
    return LongRow("", 0.0, "", result.windows, times, stages["denoise"], peak, math.nan,
                   host.peak_gb, stages)
