"""`foleyrt bench`: speed, memory and accuracy of each acceleration mode, as a table (the
measuring is `foleyrt.bench`'s; this module parses the options and prints the rows)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foleyrt.config import PRESETS
from foleyrt.errors import UsageError
from foleyrt.request import DEFAULT_GUIDANCE, DEFAULT_STEPS

if TYPE_CHECKING:
    from foleyrt.bench.long import LongRow
    from foleyrt.bench.loop import LoopRow
    from foleyrt.bench.pipeline import PipelineRow
    from foleyrt.bench.profile import KernelTime


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed, memory and accuracy of each mode",
                       description="Benchmark the denoising loop (and optionally the whole "
                                   "pipeline) with random weights; prints a table.")
    p.add_argument("--sizes", nargs="+", default=["xxl", "xl"], choices=sorted(PRESETS))
    p.add_argument("--durations", nargs="+", type=float, default=[5, 8, 10, 15])
    p.add_argument("--modes", nargs="*", default=["release-pattern", "eager", "compile"],
                   help="loop modes: release-pattern, eager, compile, tensorrt, ACCEL:PRECISION "
                        "(e.g. compile:fp8); none to time only --pipeline")
    p.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the fp32 eager reference (no accuracy columns)")
    p.add_argument("--pipeline", nargs="*", default=None, metavar="VARIANT",
                   help="also time video file -> MP4 for the first size, per variant "
                        "ACCEL[/PRECISION[/OFFLOAD]] (default variants: eager compile), e.g. "
                        "compile/fp8 eager/bf16/model eager/fp8/blocks:4")
    p.add_argument("--long", nargs="+", type=float, default=None, metavar="SECONDS",
                   help="also time long videos (e.g. 60 600) through the whole pipeline in "
                        "windows, beside a 15 s clip, for the first size and each --pipeline "
                        "variant (default: compile): loop and pipeline time, peak GPU and "
                        "host memory")
    p.add_argument("--profile", action="store_true",
                   help="also print the GPU kernel-time breakdown of one compiled forward")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from foleyrt.accel.runtime import parse_device
    from foleyrt.bench.loop import MODES, bench_loop, matmul_peak
    from foleyrt.bench.pipeline import bench_pipeline

    unknown = sorted({m for m in args.modes if m.split(":")[0] not in MODES})
    if unknown:
        raise UsageError(f"unknown bench mode(s) {unknown}; choose from {list(MODES)}")
    device = parse_device(args.device)
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"device: {name}  torch {torch.__version__}  steps {args.steps}  bf16 matmul peak "
          f"(measured 8192^3): {peak:.0f} TFLOP/s")
    print(LOOP_HEADER, flush=True)
    results: dict[str, list[Any]] = {"loop": [], "pipeline": [], "long": [], "profiles": []}
    for row in bench_loop(args.sizes if args.modes else [], args.durations, args.modes,
                          args.runs, args.steps, args.guidance, device, peak,
                          reference=not args.no_reference):
        print(loop_line(row), flush=True)
        results["loop"].append({**asdict(row), "median_s": row.median_s})
    if args.profile:
        for size in args.sizes:
            kernels = _profile(size, args.durations[0], device)
            print(format_profile(kernels, f"{size} {args.durations[0]:g}s"), flush=True)
            results["profiles"].append({"size": size, "kernels": [asdict(k) for k in kernels]})
    if args.pipeline is not None:
        for prow in bench_pipeline(args.sizes[0], args.durations,
                                   args.pipeline or ["eager", "compile"], args.runs,
                                   args.steps, device):
            print(pipeline_line(prow), flush=True)
            results["pipeline"].append({**asdict(prow), "median_s": prow.median_s})
    if args.long:
        from foleyrt.bench.long import bench_long

        for lrow in bench_long(args.sizes[0], args.long, args.pipeline or ["compile"],
                               args.runs, args.steps, device):
            print(long_line(lrow), flush=True)
            results["long"].append({**asdict(lrow), "median_s": lrow.median_s})
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                         "matmul_peak_tflops": peak, **results}, indent=1))
    return 0


def _profile(size: str, duration: float, device: Any) -> list[KernelTime]:
    """Kernels of one compiled, un-graphed XXL/XL forward (random weights)."""
    import torch

    from foleyrt.accel.recipes import apply
    from foleyrt.accel.runtime import RuntimeConfig
    from foleyrt.bench.models import random_conditions, random_dit
    from foleyrt.bench.profile import forward_kernels
    from foleyrt.sampling.loop import Task
    from foleyrt.sampling.schedule import flow_schedule

    spec = PRESETS[size]
    with torch.inference_mode():
        dit = random_dit(spec, device, torch.bfloat16, seed=0)
        cond, n_latent = random_conditions(spec, duration, device, seed=1)
        noise = torch.randn(1, 128, n_latent, device=device).bfloat16()
        denoiser = apply(dit, RuntimeConfig(device=device, dtype=torch.bfloat16,
                                            accel="compile"), disable={"cuda-graphs"})
        task = Task.whole(noise, DEFAULT_GUIDANCE, cond)
        return forward_kernels(denoiser, task, flow_schedule(DEFAULT_STEPS, spec.diffusion))


LOOP_HEADER = (f"{'size':<5}{'dur':>5} {'mode':<16}{'median s':>9}{'spread s':>16}"
               f"{'ms/fwd':>8}{'GFLOP':>8}{'TFLOP/s':>8}{'%peak':>6}{'mem GB':>7}"
               f"{'first s':>8}{'cos fp32':>11}{'maxabs':>9}")


def loop_line(r: LoopRow) -> str:
    cos = f"{r.cos_vs_fp32:.6f}" if r.cos_vs_fp32 is not None else "-"
    mx = f"{r.max_abs_vs_fp32:.3g}" if r.max_abs_vs_fp32 is not None else "-"
    return (f"{r.size:<5}{r.duration_s:>5g} {r.mode:<16}{r.median_s:>9.3f}"
            f"{min(r.runs_s):>8.3f}-{max(r.runs_s):<7.3f}{r.ms_per_forward:>8.1f}"
            f"{r.gflop_per_forward:>8.0f}{r.tflops:>8.0f}{r.pct_of_peak:>6.1f}"
            f"{r.peak_mem_gb:>7.1f}{r.first_run_s:>8.1f}{cos:>11}{mx:>9}")


def pipeline_line(p: PipelineRow) -> str:
    return (f"pipeline {p.size} {p.duration_s:g}s {p.variant}: median {p.median_s:.3f}s"
            f" (runs {', '.join(f'{x:.3f}' for x in p.runs_s)}), peak mem "
            f"{p.peak_mem_gb:.1f} GB, vs first variant: latent cos "
            f"{p.latent_cos_vs_first:.5f} SNR {p.latent_snr_db_vs_first:.1f} dB, audio cos "
            f"{p.audio_cos_vs_first:.4f} SNR {p.audio_snr_db_vs_first:.1f} dB, "
            f"stages {p.stages}, stage peak mem {p.stage_peak_mem_gb}")


def long_line(r: LongRow) -> str:
    return (f"long {r.size} {r.duration_s:g}s {r.variant}: {r.windows} window(s), pipeline "
            f"median {r.median_s:.2f}s (runs {', '.join(f'{x:.2f}' for x in r.runs_s)}), "
            f"denoise {r.denoise_s:.2f}s, peak GPU {r.peak_gpu_gb:.2f} GB "
            f"({r.peak_gpu_vs_15s:.2f}x the 15 s clip's), peak host {r.peak_host_gb:.2f} GB, "
            f"stages {r.stages}")


def format_profile(kernels: list[KernelTime], title: str) -> str:
    """GPU time by kernel class, then the 40 slowest kernels."""
    total = sum(k.ms for k in kernels)
    by_class: dict[str, float] = {}
    for k in kernels:
        by_class[k.kind] = by_class.get(k.kind, 0.0) + k.ms
    lines = [f"profile {title}, one compiled forward: {total:.2f} ms GPU time"]
    lines += [f"  {c:<34}{ms:8.2f} ms {100 * ms / total:5.1f}%"
              for c, ms in sorted(by_class.items(), key=lambda kv: -kv[1])]
    lines += [f"  {k.ms:8.3f} ms x{k.calls:<4} {k.name[:100]}"
              for k in sorted(kernels, key=lambda k: -k.ms)[:40]]
    return "\n".join(lines)
