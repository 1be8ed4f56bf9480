"""`foleyrt calibrate`: activation ranges for `--precision int8|fp8` and int8/fp8 TensorRT
engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from foleyrt.cli.options import add_request_options, add_weight_options, request, runtime


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
    add_request_options(p, prompt_help="prompt of clips without a CSV one", samples=False,
                        seed_help="clip i uses SEED+i (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_weight_options(p)
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from foleyrt.accel.calibration import check_output, save_calibration
    from foleyrt.calibrate import calibrate, read_clips
    from foleyrt.pipeline.pipeline import FoleyPipeline

    check_output(args.output, overwrite=args.overwrite)
    settings = request(args)
    clips = read_clips(args.inputs, prompt=args.prompt)
    pipe = FoleyPipeline.from_pretrained(args.model, args.size, runtime(args))
    calib = calibrate(pipe, clips, settings)
    print(save_calibration(calib, args.output, overwrite=args.overwrite))
    return 0
