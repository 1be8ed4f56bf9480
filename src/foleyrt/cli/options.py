"""What the commands share on their command lines: the one-line-error parser and the model and
runtime options, with the `RuntimeConfig` they read into (so every command that loads the
model spells and validates those flags the same way)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from foleyrt.config import HUB_REPO, PRECISIONS, PRESETS, TINY, TINY_RANDOM, RuntimeConfig


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_weight_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model, on which device, in which dtype."""
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default=HUB_REPO,
                   help=f"weights directory, hub repo id, or {TINY_RANDOM!r} "
                        "(default: %(default)s)")
    sizes = [s for s in PRESETS if s != TINY.name]
    g.add_argument("--size", default="xxl", choices=sizes, help="transformer size (default: xxl)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None,
                   help="transformer dtype: bf16, fp16 or fp32 (default: bf16 on CUDA, else fp32)")
    return g


def add_model_options(p: argparse.ArgumentParser) -> None:
    """`add_weight_options` plus how the transformer runs; `runtime` reads them all."""
    g = add_weight_options(p)
    g.add_argument("--accel", default="eager", help="eager, compile or tensorrt (default: eager)")
    g.add_argument("--engine", default=None,
                   help="TensorRT plan for --accel tensorrt (default: newest matching engine "
                        "in the cache)")
    g.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="transformer precision: bf16, fp16, or quantised fp8 (Ada/Hopper GPUs), "
                        "int8-weight, int8 (needs --calibration) (default: the --dtype)")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="activation ranges (from 'foleyrt calibrate'): needed by --precision "
                        "int8; with fp8, static activation scales instead of per-token ones "
                        "(faster)")
    g.add_argument("--offload", default="none", metavar="MODE",
                   help="GPU memory mode: none, model (networks in pinned host memory, brought "
                        "in per stage) or blocks:N (transformer blocks streamed through N GPU "
                        "slots; slower) (default: none)")


def runtime(args: argparse.Namespace) -> RuntimeConfig:
    """The runtime of `add_model_options`' flags."""
    return RuntimeConfig.auto(args.device, args.dtype, accel=args.accel, engine=args.engine,
                              precision=args.precision, calibration=args.calibration,
                              offload=args.offload)
