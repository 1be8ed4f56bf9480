"""`foleyrt bench`: speed, memory and numerical distance of each acceleration mode.

Random weights (speed does not depend on their values; the numerical distances are only a proxy
for trained weights). For each model size and clip duration it times the 50-step CFG denoising
loop (batch 2: one sample, guidance on) per mode, in one process:

- `release-pattern`: the release's execution pattern reproduced with our model (spec
  pipeline.md §6.4 / §10.1): bf16 weights under bf16 autocast, every step re-building the CFG
  rows and re-running all step-invariant condition work. A baseline, not the official code.
- `eager`: our module, conditions prepared once per request.
- `compile`: Inductor-compiled blocks + a CUDA graph per velocity call.

Reported per row: median and spread of the loop over `runs`, ms per forward, FLOPs per forward
counted by `torch.utils.flop_counter`, achieved TFLOP/s and % of the measured bf16 matmul peak
(an 8192^3 product timed in the same run), peak GPU memory, first-run time (compile + capture
included), and the final latent's cosine / max abs distance from an fp32 eager run with the same
weights, conditions and noise. `--pipeline` also times the whole pipeline from a video file to a
written MP4 with real-size random encoders.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from foleyrt.config import PRESETS, ModelSpec, RuntimeConfig
from foleyrt.models.dit import FoleyDiT
from foleyrt.pipeline.conditions import Conditions, cfg_rows, prepare_rows
from foleyrt.pipeline.features import text_only_lengths
from foleyrt.pipeline.pipeline import FoleyPipeline, Progress, release_cuda_memory
from foleyrt.pipeline.sampling import denoise, flow_schedule

log = logging.getLogger(__name__)

MODES = ("release-pattern", "eager", "compile")  # plus ACCEL:PRECISION, e.g. compile:fp8
TEXT_TOKENS = 16  # a short prompt, padded like the release pads [negative, prompt]


@dataclass
class BenchRow:
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


@dataclass
class BenchReport:
    device: str
    torch_version: str
    matmul_peak_tflops: float
    steps: int
    rows: list[BenchRow] = field(default_factory=list)
    pipeline: list[dict] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = (f"{'size':<5}{'dur':>5} {'mode':<16}{'median s':>9}{'spread s':>16}"
                f"{'ms/fwd':>8}{'GFLOP':>8}{'TFLOP/s':>8}{'%peak':>6}{'mem GB':>7}"
                f"{'first s':>8}{'cos fp32':>11}{'maxabs':>9}")
        lines = [f"device: {self.device}  torch {self.torch_version}  steps {self.steps}  "
                 f"bf16 matmul peak (measured 8192^3): {self.matmul_peak_tflops:.0f} TFLOP/s",
                 head]
        lines += [row_line(r) for r in self.rows]
        lines += self.profiles
        lines += [pipeline_line(p) for p in self.pipeline]
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        for row, r in zip(data["rows"], self.rows):
            row["median_s"] = r.median_s
        return json.dumps(data, indent=1)


def row_line(r: BenchRow) -> str:
    cos = f"{r.cos_vs_fp32:.6f}" if r.cos_vs_fp32 is not None else "-"
    mx = f"{r.max_abs_vs_fp32:.3g}" if r.max_abs_vs_fp32 is not None else "-"
    return (f"{r.size:<5}{r.duration_s:>5g} {r.mode:<16}{r.median_s:>9.3f}"
            f"{min(r.runs_s):>8.3f}-{max(r.runs_s):<7.3f}{r.ms_per_forward:>8.1f}"
            f"{r.gflop_per_forward:>8.0f}{r.tflops:>8.0f}{r.pct_of_peak:>6.1f}"
            f"{r.peak_mem_gb:>7.1f}{r.first_run_s:>8.1f}{cos:>11}{mx:>9}")


def pipeline_line(p: dict) -> str:
    return (f"pipeline {p['size']} {p['duration_s']:g}s {p['mode']}: median {p['median_s']:.3f}s"
            f" (runs {', '.join(f'{x:.3f}' for x in p['runs_s'])}), peak mem "
            f"{p['peak_mem_gb']:.1f} GB, vs first variant: latent cos "
            f"{p['latent_cos_vs_first']:.5f} SNR {p['latent_snr_db_vs_first']:.1f} dB, audio cos "
            f"{p['audio_cos_vs_first']:.4f} SNR {p['audio_snr_db_vs_first']:.1f} dB, "
            f"stages {p['stages']}, stage peak mem {p.get('stage_peak_mem_gb', {})}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """bf16 TFLOP/s of a large square product (random data): the practical ceiling."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


@torch.no_grad()
def random_dit(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int) -> FoleyDiT:
    """Built on meta, materialised on the device in `dtype`, filled there (5 B parameters in
    a second)."""
    with torch.device("meta"):
        dit = FoleyDiT(spec.dit).to(dtype)
    dit = dit.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    for _, p in sorted(dit.named_parameters()):
        if p.ndim >= 2:
            p.normal_(0, p[0].numel() ** -0.5, generator=gen)
        else:
            p.normal_(1.0 if p.shape[0] <= 128 else 0.0, 0.05, generator=gen)
    return dit.eval().requires_grad_(False)


def random_conditions(spec: ModelSpec, duration_s: float, device: torch.device,
                      seed: int) -> tuple[Conditions, int]:
    n_clip, n_sync, audio_s = text_only_lengths(duration_s)
    g = torch.Generator(device).manual_seed(seed)
    cfg = spec.dit

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, device=device)

    cond = Conditions(rnd(1, n_clip, cfg.clip_dim), rnd(1, n_sync, cfg.sync_feat_dim),
                      rnd(1, TEXT_TOKENS, cfg.text_dim), rnd(1, TEXT_TOKENS, cfg.text_dim))
    return cond, int(audio_s * cfg.audio_frame_rate)


def _loop(dit: FoleyDiT, cond: Conditions, noise: Tensor, steps: int, guidance: float,
          mode: str, spec: ModelSpec) -> Tensor:
    """One full denoising loop in `mode` (an acceleration mode, `release-pattern`, or
    `ACCEL:PRECISION` run on the quantised copy made by `_variant_model`); conditions are
    prepared inside: that is part of the request's cost."""
    from foleyrt.accel import model_fn

    mode = mode.split(":")[0]
    device = noise.device
    schedule = flow_schedule(steps, spec.diffusion)
    n_latent = noise.shape[-1]
    if mode == "release-pattern":
        rows = cfg_rows(dit, cond, noise.shape[0], guidance=True)  # forward re-prepares them

        def fn(x: Tensor, t: Tensor, step: int) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return dit(x, t, *rows)

        return denoise(fn, noise, schedule, guidance)
    prepared = prepare_rows(dit, cond, noise.shape[0], True, n_latent)
    runtime = RuntimeConfig(device=device, dtype=next(dit.parameters()).dtype, accel=mode)
    return denoise(model_fn(dit, prepared, runtime, schedule), noise, schedule, guidance)


def count_flops(dit: FoleyDiT, cond: Conditions, noise: Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    prepared = prepare_rows(dit, cond, noise.shape[0], True, noise.shape[-1])
    x = torch.cat([noise, noise])
    t = torch.full((x.shape[0],), 500.0, device=noise.device)
    with FlopCounterMode(display=False) as counter:
        dit.velocity(x, t, prepared)
    return counter.get_total_flops()


def _timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[float, Tensor]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def _distance(a: Tensor, b: Tensor) -> tuple[float, float]:
    a64, b64 = a.double().flatten(), b.double().flatten()
    cos = torch.nn.functional.cosine_similarity(a64, b64, dim=0).item()
    return cos, (a64 - b64).abs().max().item()


@torch.inference_mode()
def bench_loop(sizes: list[str], durations: list[float], modes: list[str], runs: int,
               steps: int, guidance: float, device: torch.device,
               reference: bool = True, profile: bool = False) -> BenchReport:
    report = BenchReport(str(torch.cuda.get_device_name(device) if device.type == "cuda"
                             else device), torch.__version__, matmul_peak(device), steps)
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
        # Modes outermost: `compile` compiles the blocks in place, so every eager row must be
        # measured before the first compiled one.
        for mode in modes:
            model = _variant_model(dit, mode)
            for duration, (cond, noise, flops) in inputs.items():
                x0 = noise.bfloat16()  # the release draws bf16 noise
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)

                loop = functools.partial(_loop, model, cond, x0, steps, guidance, mode, spec)

                first, out = _timed(loop, device)
                times = [_timed(loop, device)[0] for _ in range(runs)]
                ms_fwd = statistics.median(times) / steps * 1e3
                tflops = flops / (ms_fwd / 1e3) / 1e12
                peak_mem = (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else float("nan"))
                row = BenchRow(size, duration, mode, noise.shape[-1], times, first, ms_fwd,
                               flops / 1e9, tflops, 100 * tflops / report.matmul_peak_tflops,
                               peak_mem)
                if duration in refs:
                    row.cos_vs_fp32, row.max_abs_vs_fp32 = _distance(out, refs[duration])
                report.rows.append(row)
                print(row_line(row), flush=True)
            if profile and mode.startswith("compile"):
                cond, noise, _ = inputs[durations[0]]
                report.profiles.append(profile_forward(model, cond, noise.bfloat16(),
                                                       f"{size} {mode}", durations[0]))
            if model is not dit:
                del model
                release_cuda_memory()
        del dit
        release_cuda_memory()
    return report


def _variant_model(dit: FoleyDiT, mode: str) -> FoleyDiT:
    """`ACCEL:PRECISION` modes run on a quantised copy (quantisation swaps modules in place);
    plain modes on the model itself. The copy is rebuilt from the state dict: the original may
    already carry compiled blocks and captured graphs, which must not be shared or copied."""
    if ":" not in mode:
        return dit
    from foleyrt.accel.quant import quantize_

    param = next(dit.parameters())
    with torch.device("meta"):
        twin = FoleyDiT(dit.config).to(param.dtype)
    twin = twin.to_empty(device=param.device)
    twin.load_state_dict(dit.state_dict())
    return quantize_(twin.eval().requires_grad_(False), mode.split(":", 1)[1])


def _fp32_references(dit: FoleyDiT, spec: ModelSpec, inputs: dict, steps: int,
                     guidance: float) -> dict[float, Tensor]:
    """Final latents of an fp32 eager run (same weights upcast, same conditions and noise),
    all computed before any timing so the fp32 copy never inflates the memory figures."""
    device = next(dit.parameters()).device
    dit32 = random_dit(spec, device, torch.float32, seed=0)
    dit32.load_state_dict({k: v.float() for k, v in dit.state_dict().items()})
    with _no_tf32():
        refs = {d: _loop(dit32, cond, noise, steps, guidance, "eager", spec)
                for d, (cond, noise, _) in inputs.items()}
    del dit32
    release_cuda_memory()
    return refs


# First match wins: cuDNN's attention kernels also carry "sm90_" in their names.
KERNEL_CLASSES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "matmul")),
    ("triton (fused elementwise/norm)", ("triton",)),
)


def kernel_times(dit: FoleyDiT, cond: Conditions, x0: Tensor) -> list[tuple[str, float, int]]:
    """`(kernel name, GPU ms, calls)` of one compiled (un-graphed) forward with CFG rows
    `[x0, x0]`, after three warm-up calls."""
    from foleyrt.accel import apply_accel

    apply_accel(dit, "compile")
    prepared = prepare_rows(dit, cond, x0.shape[0], True, x0.shape[-1])
    x = torch.cat([x0, x0])
    t = torch.full((x.shape[0],), 500.0, device=x.device)
    for _ in range(3):
        dit.velocity(x, t, prepared)
    return profiled_kernels(lambda: dit.velocity(x, t, prepared), x.device)


def profiled_kernels(run: Callable[[], object],
                     device: torch.device) -> list[tuple[str, float, int]]:
    """`(kernel name, GPU ms, calls)` of one call of `run`."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        _sync(device)
    return [(e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_time_total > 0]


def profile_forward(dit: FoleyDiT, cond: Conditions, x0: Tensor, size: str,
                    duration: float) -> str:
    """GPU time by kernel class and the top kernels of one compiled (un-graphed) forward."""
    return format_profile(kernel_times(dit, cond, x0), f"{size} {duration:g}s")


def format_profile(kernels: list[tuple[str, float, int]], title: str) -> str:
    total = sum(ms for _, ms, _ in kernels)
    by_class: dict[str, float] = {}
    for name, ms, _ in kernels:
        low = name.lower()
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")
        by_class[cls] = by_class.get(cls, 0.0) + ms
    lines = [f"profile {title}, one compiled forward: {total:.2f} ms GPU time"]
    lines += [f"  {c:<34}{ms:8.2f} ms {100 * ms / total:5.1f}%"
              for c, ms in sorted(by_class.items(), key=lambda kv: -kv[1])]
    lines += [f"  {ms:8.3f} ms x{n:<4} {name[:100]}"
              for name, ms, n in sorted(kernels, key=lambda k: -k[1])[:40]]
    return "\n".join(lines)


class _no_tf32:
    def __enter__(self) -> None:
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def parse_variant(text: str) -> tuple[str, str | None, str]:
    """`ACCEL[/PRECISION[/OFFLOAD]]`, e.g. `compile`, `compile/fp8`, `eager/bf16/blocks:4`."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"pipeline variant {text!r} is not ACCEL[/PRECISION[/OFFLOAD]]")
    accel, precision, offload = (parts + [None, "none"][len(parts) - 1:])[:3]
    return accel, precision, offload or "none"


def _snr_db(got: Tensor, ref: Tensor) -> float:
    noise = (got.double() - ref.double()).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * math.log10(ref.double().pow(2).sum().item()
                                                            / noise)


def bench_pipeline(size: str, durations: list[float], variants: list[str], runs: int,
                   steps: int, device: torch.device, video_dir: Path | None = None) -> list[dict]:
    """Whole pipeline, warm: video file -> features -> 50 steps -> VAE -> written MP4, with
    real-size random-weight encoders, VAE and transformer, per variant (acceleration,
    precision, memory mode). Each variant gets freshly built networks (precisions and memory
    modes transform them in place) with the same random weights and seed; its final latents
    and audio are compared with the first variant's (random-weight VAEs amplify small latent
    differences: the latent figures are the meaningful ones)."""
    from foleyrt.media.synthetic import write_test_clip
    from foleyrt.pipeline.models import random_models

    spec = PRESETS[size]
    workdir = Path(video_dir or tempfile.mkdtemp(prefix="foleyrt-bench-"))
    clips = {d: write_test_clip(workdir / f"clip_{d:g}s.mp4", d, width=1280, height=720, fps=30)
             for d in durations}
    results: list[dict] = []
    first: dict[float, tuple[Tensor, Tensor]] = {}  # the first variant's audio and latents
    for variant in variants:
        accel, precision, offload = parse_variant(variant)
        runtime = RuntimeConfig.auto(str(device), precision=precision, accel=accel,
                                     offload=offload)
        models = random_models(spec, dit=random_dit(spec, device, runtime.dtype, seed=0))
        pipe = FoleyPipeline(models.place(runtime), runtime)
        for duration, video in clips.items():
            reference = first.get(duration)
            row, outputs = _time_pipeline(pipe, video, workdir / f"out_{len(results)}.mp4",
                                          runs, steps, reference)
            first.setdefault(duration, outputs)
            results.append({"size": size, "duration_s": duration, "mode": variant, **row})
            print(pipeline_line(results[-1]), flush=True)
        del pipe, models
        release_cuda_memory()
    return results


def _time_pipeline(pipe: FoleyPipeline, video: Path, out: Path, runs: int, steps: int,
                   reference: tuple[Tensor, Tensor] | None) -> tuple[dict, tuple[Tensor, Tensor]]:
    """One warm-up and `runs` timed generations of `video` written to `out`: the row (with
    distances to `reference`, the first variant's audio and latents, when given) and this
    variant's outputs."""
    device = pipe.runtime.device
    outputs: tuple[Tensor, Tensor] | None = None

    def run() -> dict[str, float]:
        nonlocal outputs
        res = pipe.generate(video, prompt="footsteps on gravel", steps=steps, seed=0)
        t = time.perf_counter()
        res.save(out, overwrite=True)
        assert res.latents is not None
        outputs = (res.audio, res.latents)
        return {**res.timings, "mux": time.perf_counter() - t}

    run()  # warm-up: compile, capture, cudnn autotune
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stages, times = [], []
    for _ in range(runs):
        t = time.perf_counter()
        stages.append(run())
        times.append(time.perf_counter() - t)
    assert outputs is not None
    peak = (torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda" else float("nan"))
    stage_peaks = _stage_peaks(pipe, video, steps)
    mid = stages[times.index(statistics.median_low(times))]
    ref_audio, ref_latent = reference or outputs
    return {"runs_s": times, "median_s": statistics.median(times), "peak_mem_gb": peak,
            "latent_cos_vs_first": _distance(outputs[1], ref_latent)[0],
            "latent_snr_db_vs_first": _snr_db(outputs[1], ref_latent),
            "audio_cos_vs_first": _distance(outputs[0], ref_audio)[0],
            "audio_snr_db_vs_first": _snr_db(outputs[0], ref_audio),
            "stages": {k: round(v, 3) for k, v in mid.items()},
            "stage_peak_mem_gb": stage_peaks}, outputs


def _stage_peaks(pipe: FoleyPipeline, video: Path, steps: int) -> dict[str, float]:
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
    pipe.generate(video, prompt="footsteps on gravel", steps=steps, seed=0,
                  progress=on_progress)
    close_stage("end")
    peaks.pop("start", None)
    return peaks
