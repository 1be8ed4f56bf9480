"""What the commands share on their command lines: the one-line-error parser, the model and
runtime options with the `RuntimeConfig` they build, and the generation options with the
`GenerationRequest` they build (so every command spells, defaults and validates those flags
the same way, before any model loads)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, NoReturn

from foleyrt.config import HUB_REPO, PRESETS, RANDOM, TINY, TINY_RANDOM
from foleyrt.request import (
    DEFAULT_GUIDANCE,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_OVERLAP,
    DEFAULT_STEPS,
    DEFAULT_WINDOW,
    MAX_DURATION,
    MAX_SECONDS,
    GenerationRequest,
)

if TYPE_CHECKING:
    from foleyrt.accel.runtime import RuntimeConfig

ACCEL_CHOICES = ("eager", "compile", "tensorrt", "auto")
PRECISION_CHOICES = ("bf16", "fp16", "fp8", "int8-weight", "int8")
PARALLEL_CHOICES = ("none", "cfg")
DECODE_IN_CHOICES = ("threads", "processes")  # `foleyrt.batch.DecodeIn`, without importing it
# `foleyrt.batch.Encoders`, likewise
ENCODERS_CHOICES = ("beside", "between", "ahead", "interleaved")


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_weight_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model, on which device, in which dtype."""
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default=HUB_REPO,
                   help=f"weights directory, hub repo id, {TINY_RANDOM!r}, or {RANDOM!r} (random "
                        "weights at --size, for benchmarks) (default: %(default)s)")
    sizes = [s for s in PRESETS if s != TINY.name]
    g.add_argument("--size", default="xxl", choices=sizes, help="transformer size (default: xxl)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None,
                   help="transformer dtype: bf16, fp16 or fp32 (default: bf16 on CUDA, else fp32)")
    return g


def add_model_options(p: argparse.ArgumentParser) -> None:
    """`add_weight_options` plus how the transformer runs; `runtime` reads them all."""
    g = add_weight_options(p)
    g.add_argument("--accel", default="eager", choices=ACCEL_CHOICES,
                   help="eager; compile (CUDA: compiled blocks, fused kernels, CUDA graphs); "
                        "tensorrt (an engine from 'foleyrt export tensorrt'); auto (compile "
                        "on CUDA, eager elsewhere) (default: eager)")
    g.add_argument("--engine", default=None,
                   help="TensorRT plan for --accel tensorrt (default: newest matching engine "
                        "in the cache)")
    g.add_argument("--precision", default=None, choices=PRECISION_CHOICES,
                   help="transformer precision: bf16, fp16, or quantised fp8 (Ada/Hopper GPUs), "
                        "int8-weight, int8 (needs --calibration) (default: the --dtype)")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="activation ranges (from 'foleyrt calibrate'): needed by --precision "
                        "int8; with fp8, static activation scales instead of per-token ones "
                        "(faster)")
    g.add_argument("--offload", default="none", metavar="MODE",
                   help="GPU memory mode: none, model (networks in pinned host memory, brought "
                        "in per stage) or blocks:N (transformer blocks streamed through N GPU "
                        "slots; slower, eager only) (default: none)")
    g.add_argument("--parallel", default="none", choices=PARALLEL_CHOICES,
                   help="cfg: each request's guidance on two GPUs of this host, the "
                        "unconditional rows on --device, the conditional ones on the next GPU "
                        "(a second process, started and ended by foleyrt) (default: none)")


def runtime(args: argparse.Namespace) -> RuntimeConfig:
    """The runtime of `add_model_options`' flags (or only `add_weight_options`')."""
    from foleyrt.accel.runtime import RuntimeConfig

    return RuntimeConfig.build(**runtime_words(args))


def runtime_words(args: argparse.Namespace) -> dict[str, Any]:
    """`RuntimeConfig.build`'s arguments as the flags give them: what a process on another
    machine (a Ray worker) builds its own runtime from."""
    return {"device": args.device, "dtype": args.dtype, "accel": getattr(args, "accel", "eager"),
            "precision": getattr(args, "precision", None),
            "offload": getattr(args, "offload", "none"),
            "calibration": getattr(args, "calibration", None),
            "engine": getattr(args, "engine", None),
            "parallel": getattr(args, "parallel", "none")}


def add_request_options(p: argparse.ArgumentParser, *, prompt_help: str, samples: bool = True,
                        seed_help: str = "noise seed (default: random, printed)") -> None:
    """The generation parameters; `request` reads them."""
    p.add_argument("-p", "--prompt", default="", metavar="TEXT", help=prompt_help)
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help=f"what to steer away from (default: {DEFAULT_NEGATIVE_PROMPT!r})")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"sampler steps (default: {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help=f"CFG scale (default: {DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=int, default=None, help=seed_help)
    if samples:
        p.add_argument("--samples", type=int, default=1,
                       help="sound tracks per input, numbered NAME_1, NAME_2, ... (default: 1)")
    g = p.add_argument_group("long videos")
    g.add_argument("--max-duration", type=float, default=MAX_DURATION, metavar="SECONDS",
                   help="refuse longer inputs (default: %(default)g, 30 minutes)")
    g.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="inputs longer than this are generated in windows of this length, at "
                        f"most {MAX_SECONDS:g} (default: up to {MAX_SECONDS:g} s in one pass, "
                        f"as the model was trained, longer ones in {DEFAULT_WINDOW:g} s windows)")
    g.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP, metavar="SECONDS",
                   help="neighbouring windows share at least this much, cross-faded; at most "
                        "the window less 1 (default: %(default)g)")


def request(args: argparse.Namespace, duration: float | None = None) -> GenerationRequest:
    """The request of `add_request_options`' flags, validated (one line on a bad value)."""
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
        guidance=args.guidance, samples=getattr(args, "samples", 1), seed=args.seed,
        duration=duration, window=args.window, overlap=args.overlap,
        max_duration=args.max_duration)
