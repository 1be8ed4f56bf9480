"""`foleyrt bench`: speed, memory and accuracy of each acceleration mode, as a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from foleyrt.config import PRESETS
from foleyrt.errors import UsageError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed, memory and accuracy of each mode",
                       description="Benchmark the denoising loop (and optionally the whole "
                                   "pipeline) with random weights; prints a table.")
    p.add_argument("--sizes", nargs="+", default=["xxl", "xl"], choices=sorted(PRESETS))
    p.add_argument("--durations", nargs="+", type=float, default=[5, 8, 10, 15])
    p.add_argument("--modes", nargs="*", default=["release-pattern", "eager", "compile"],
                   help="loop modes: release-pattern, eager, compile, ACCEL:PRECISION (e.g. "
                        "compile:fp8); none to time only --pipeline")
    p.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the fp32 eager reference (no accuracy columns)")
    p.add_argument("--pipeline", nargs="*", default=None, metavar="VARIANT",
                   help="also time video file -> MP4 for the first size, per variant "
                        "ACCEL[/PRECISION[/OFFLOAD]] (default variants: eager compile), e.g. "
                        "compile/fp8 eager/bf16/model eager/fp8/blocks:4")
    p.add_argument("--profile", action="store_true",
                   help="also print the GPU kernel-time breakdown of one compiled forward")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from foleyrt.bench import MODES, bench_loop, bench_pipeline
    from foleyrt.config import parse_device

    unknown = sorted({m for m in args.modes if m.split(":")[0] not in MODES})
    if unknown:
        raise UsageError(f"unknown bench mode(s) {unknown}; choose from {list(MODES)}")
    device = parse_device(args.device)
    report = bench_loop(args.sizes if args.modes else [], args.durations, args.modes,
                        args.runs, args.steps, args.guidance, device,
                        reference=not args.no_reference, profile=args.profile)
    if args.pipeline is not None:
        variants = args.pipeline or ["eager", "compile"]
        report.pipeline = bench_pipeline(args.sizes[0], args.durations, variants, args.runs,
                                         args.steps, device)
    print(report.table())
    if args.json:
        args.json.write_text(report.to_json())
    return 0
