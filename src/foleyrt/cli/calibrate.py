"""`foleyrt calibrate`: activation ranges for `--precision int8|fp8` and int8/fp8 TensorRT
engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from foleyrt.cli.options import add_weight_options
from foleyrt.config import RuntimeConfig


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="record activation ranges for --precision int8 or fp8",
                       description="Run the pipeline on clips and record the input range of "
                                   "every quantised transformer GEMM, for --precision int8 "
                                   "or fp8 (static scales) and int8/fp8 TensorRT engines. "
                                   "Runs eager, unquantised.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="VIDEO_OR_CSV",
                   help="a CSV with columns video,prompt (as for 'foleyrt batch'), a folder of "
                        "videos, or video files")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="calibration file to write (.safetensors)")
    p.add_argument("-p", "--prompt", default="", help="prompt of clips without a CSV one")
    p.add_argument("--steps", type=int, default=50, help="sampler steps per clip (default: 50)")
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale (default: 4.5)")
    p.add_argument("--seed", type=int, default=0, help="clip i uses SEED+i (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_weight_options(p)
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from foleyrt.accel.calibrate import calibrate, check_output, read_clips, save_calibration
    from foleyrt.pipeline.pipeline import FoleyPipeline

    check_output(args.output, overwrite=args.overwrite)
    clips = read_clips(args.inputs, prompt=args.prompt)
    pipe = FoleyPipeline.from_pretrained(args.model, args.size,
                                         RuntimeConfig.auto(args.device, args.dtype))
    calib = calibrate(pipe, clips, steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed)
    print(save_calibration(calib, args.output, overwrite=args.overwrite))
    return 0
