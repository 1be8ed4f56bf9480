"""`foleyrt bench`: speed, memory and accuracy of each acceleration mode, as a table (the
measuring is `foleyrt.bench`'s; this module parses the options and prints the rows)."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foleyrt.cli.options import (
    ACCEL_CHOICES,
    DECODE_IN_CHOICES,
    ENCODERS_CHOICES,
    PRECISION_CHOICES,
)
from foleyrt.config import PRESETS
from foleyrt.errors import UsageError
from foleyrt.request import DEFAULT_GUIDANCE, DEFAULT_STEPS

if TYPE_CHECKING:
    from foleyrt.bench.long import LongRow
    from foleyrt.bench.loop import LoopRow
    from foleyrt.bench.parallel import ParallelRow
    from foleyrt.bench.pipeline import PipelineRow
    from foleyrt.bench.profile import KernelTime
    from foleyrt.bench.throughput import ThroughputRow


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
    p.add_argument("--cfg-parallel", nargs="+", default=None, metavar="MODE",
                   help="also time these loop modes (eager, compile, ...) on one GPU and split "
                        "over two by CFG-parallel (--device and the next GPU), same session")
    p.add_argument("--long", nargs="+", type=float, default=None, metavar="SECONDS",
                   help="also time long videos (e.g. 60 600) through the whole pipeline in "
                        "windows, beside a 15 s clip, for the first size and each --pipeline "
                        "variant (default: compile): loop and pipeline time, peak GPU and "
                        "host memory")
    p.add_argument("--profile", action="store_true",
                   help="also print the GPU kernel-time breakdown of one compiled forward")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    t = p.add_argument_group(
        "throughput", "--throughput: clips per second end to end through 'foleyrt batch' "
                      "(the first --sizes, random weights; no loop or pipeline rows), then the "
                      "same clips one at a time")
    t.add_argument("--throughput", action="store_true",
                   help="a folder of synthetic 720p clips through the batch code path, files "
                        "written: clips/s, audio s/s, GPU busy, per-stage time, peak memory")
    t.add_argument("--clips", type=int, default=32, help="clips in the folder (default: 32)")
    t.add_argument("--clip-seconds", type=float, default=10.0,
                   help="duration of each clip (default: 10)")
    t.add_argument("--accel", default="eager", choices=ACCEL_CHOICES,
                   help="as for 'foleyrt batch' (default: eager)")
    t.add_argument("--precision", default=None, choices=PRECISION_CHOICES,
                   help="as for 'foleyrt batch' (default: bf16 on CUDA)")
    t.add_argument("--calibrate", action="store_true",
                   help="with --precision fp8: record the random model's activation ranges "
                        "on two of the clips first and use static scales from them (random "
                        "weights have no calibration file)")
    t.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="as for 'foleyrt batch' (default: auto, the row budget)")
    t.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="as for 'foleyrt batch' (default: up to 4)")
    t.add_argument("--decode-in", nargs="+", default=None, choices=DECODE_IN_CHOICES,
                   metavar="WHERE", help="a batched row for each: threads, processes (as for "
                                         "'foleyrt batch', and its default)")
    t.add_argument("--encoders", nargs="+", default=["ahead"], choices=ENCODERS_CHOICES,
                   metavar="WHERE", help="a batched row for each (and each --decode-in): "
                                         "ahead, between, interleaved, beside (as for "
                                         "'foleyrt batch'; default: ahead)")
    t.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="keep the clips and outputs in DIR; clips already there are reused, so "
                        "several runs measure the same files (default: a temporary folder)")
    t.add_argument("--no-baseline", action="store_true",
                   help="skip the one-at-a-time run (another run in this session has it)")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.throughput:
        return _throughput(args)
    import torch

    from foleyrt.accel.runtime import parse_device
    from foleyrt.bench.loop import MODES, bench_loop, matmul_peak
    from foleyrt.bench.pipeline import bench_pipeline

    unknown = sorted({m for m in args.modes + (args.cfg_parallel or [])
                      if m.split(":")[0] not in MODES})
    if unknown:
        raise UsageError(f"unknown bench mode(s) {unknown}; choose from {list(MODES)}")
    device = parse_device(args.device)
    peak = matmul_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"device: {name}  torch {torch.__version__}  steps {args.steps}  bf16 matmul peak "
          f"(measured 8192^3): {peak:.0f} TFLOP/s")
    print(LOOP_HEADER, flush=True)
    results: dict[str, list[Any]] = {"loop": [], "pipeline": [], "long": [], "profiles": [],
                                     "cfg_parallel": []}
    for row in bench_loop(args.sizes if args.modes else [], args.durations, args.modes,
                          args.runs, args.steps, args.guidance, device, peak,
                          reference=not args.no_reference):
        print(loop_line(row), flush=True)
        results["loop"].append({**asdict(row), "median_s": row.median_s})
    if args.cfg_parallel:
        from foleyrt.bench.parallel import bench_cfg_parallel

        for crow in bench_cfg_parallel(args.sizes, args.durations, args.cfg_parallel, args.runs,
                                       args.steps, args.guidance, device):
            print(parallel_line(crow), flush=True)
            results["cfg_parallel"].append({**asdict(crow), "speedup": crow.speedup})
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


def _throughput(args: argparse.Namespace) -> int:
    import torch

    from foleyrt.accel.runtime import RuntimeConfig
    from foleyrt.batch import DecodeIn, Encoders
    from foleyrt.bench.throughput import ONE_AT_A_TIME, bench_throughput

    if args.clips < 1 or args.clip_seconds <= 0:
        raise UsageError("--clips must be at least 1 and --clip-seconds above 0")
    runtime = RuntimeConfig.build(args.device, accel=args.accel, precision=args.precision)
    device = runtime.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    size = args.sizes[0]
    print(f"device: {name}  torch {torch.__version__}  {size}  {args.clips} x "
          f"{args.clip_seconds:g} s 720p clips  steps {args.steps}  guidance {args.guidance:g}  "
          f"accel {runtime.accel.value}  precision "
          f"{runtime.precision.value if runtime.precision else str(runtime.dtype)[6:]}"
          f"{' calibrated' if args.calibrate else ''}", flush=True)
    rows = []
    for row in bench_throughput(size, args.clips, args.clip_seconds, runtime, steps=args.steps,
                                guidance=args.guidance, batch_rows=args.batch_rows,
                                decode_workers=args.decode_workers, calibrate=args.calibrate,
                                workdir=args.workdir, baseline=not args.no_baseline,
                                decode_in=[DecodeIn(w) for w in args.decode_in]
                                if args.decode_in else [DecodeIn.default_for(runtime)],
                                encoders=[Encoders(w) for w in args.encoders]):
        print(throughput_line(row), flush=True)
        rows.append(row)
    baseline = next((r for r in rows if r.mode == ONE_AT_A_TIME), None)
    best = max(r.clips_per_s for r in rows if r is not baseline)
    gain = None if baseline is None else best / baseline.clips_per_s
    if gain is not None:
        print(f"gain: {gain:.2f}x clips/s over one at a time (the best batched row)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(
            {"device": name, "torch": torch.__version__, "size": size, "gain": gain,
             "throughput": [{**asdict(r), "clips_per_s": r.clips_per_s,
                             "audio_s_per_s": r.audio_s_per_s} for r in rows]}, indent=1))
    return 0


def throughput_line(r: ThroughputRow) -> str:
    def share(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    gpu = "-" if r.peak_gpu_gb is None else f"{r.peak_gpu_gb:.1f} GB"
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in r.stages_s.items())
    first = "" if r.first_group_s is None else f" (first group done at {r.first_group_s:.1f}s)"
    if r.denoise_gpu_s is not None:
        stages += f"; denoising on the GPU {r.denoise_gpu_s:.2f}s"
    return (f"{r.mode:<14} {r.clips_per_s:6.3f} clips/s  {r.audio_s_per_s:6.2f} audio s/s  "
            f"wall {r.wall_s:.1f}s{first}  GPU busy {share(r.gpu_busy)} (after the first group "
            f"{share(r.gpu_busy_after_first)}; {r.gpu_busy_source})  peak GPU {gpu}, host "
            f"{r.peak_host_gb:.1f} GB  groups {r.groups}  busy per stage: {stages}"
            + (f"  FAILED {r.failed}" if r.failed else ""))


def _profile(size: str, duration: float, device: Any) -> list[KernelTime]:
    """Kernels of one compiled, un-graphed XXL/XL forward (random weights)."""
    import torch

    from foleyrt.accel.recipes import apply
    from foleyrt.accel.runtime import AccelMode, RuntimeConfig
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
                                            accel=AccelMode.COMPILE), disable={"cuda-graphs"})
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


def parallel_line(r: ParallelRow) -> str:
    return (f"cfg-parallel {r.size} {r.duration_s:g}s {r.mode}: one GPU "
            f"{statistics.median(r.one_gpu_s):.3f}s, two GPUs {statistics.median(r.two_gpu_s):.3f}s"
            f" (runs {', '.join(f'{x:.3f}' for x in r.two_gpu_s)}): {r.speedup:.2f}x; first "
            f"two-GPU run {r.first_two_gpu_s:.1f}s; vs one GPU: cos {r.cos_vs_one_gpu:.6f}, "
            f"max abs {r.max_abs_vs_one_gpu:.3g}")


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
