"""Cold start of one process: what the first request's 50-step loop costs beyond a warm one.

Run it once per process on one FOLEYRT_CACHE: with `--accel compile`, the first process compiles
and saves the block graphs; a later one should load them and compile nothing. `--accel eager`
gives the baseline every PyTorch program pays on its first call (CUDA, cuBLAS and cuDNN set-up),
so "compile time in a second process" = its overhead minus eager's. `--preload` starts loading
the saved graphs in the background before the model is built, as `load_models` does while
checkpoints load. `--cprofile` prints where the first loop's host time goes.

Usage: python scripts/compile_cache_check.py [SIZE SECONDS] [--accel compile|eager]
                                             [--preload] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import statistics
import time

import torch
from torch._dynamo.utils import counters

from foleyrt.accel.process import configure_process
from foleyrt.accel.recipes import apply, preload
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.bench.models import random_conditions, random_dit
from foleyrt.config import PRESETS
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import flow_schedule

STEPS, GUIDANCE = 50, 4.5


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", nargs="?", default="xxl", choices=sorted(PRESETS))
    parser.add_argument("seconds", nargs="?", type=float, default=8.0)
    parser.add_argument("--accel", default="compile", choices=["compile", "eager"])
    parser.add_argument("--preload", action="store_true")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu runs eager: a smoke test only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    configure_process()  # as the CLI does
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    runtime = RuntimeConfig(device=device, dtype=torch.bfloat16, accel=args.accel)
    graphs = preload(runtime) if args.preload else None
    spec = PRESETS[args.size]
    dit = random_dit(spec, device, torch.bfloat16, seed=0)
    denoiser = apply(dit, runtime, graphs=graphs)
    cond, n_latent = random_conditions(spec, args.seconds, device, seed=1)
    schedule = flow_schedule(STEPS, spec.diffusion, n_tokens=n_latent)
    noise = torch.randn(1, 128, n_latent, device=device, dtype=torch.bfloat16)
    sync()
    built = time.perf_counter()

    def loop() -> float:
        t = time.perf_counter()
        denoise(denoiser, [Task.whole(noise, GUIDANCE, cond)], schedule)
        sync()
        return time.perf_counter() - t

    with torch.inference_mode():
        profiler = cProfile.Profile() if args.cprofile else None
        if profiler:
            profiler.enable()
        first = loop()
        if profiler:
            profiler.disable()
        warm = statistics.median(loop() for _ in range(3))
    print(f"{args.size} {args.seconds:g} s, --accel {args.accel}"
          f"{' --preload' if args.preload else ''}: model built {built - start:.1f} s after "
          f"start; first loop {first:.2f} s, warm loop {warm:.3f} s (median of 3): "
          f"first-request overhead {first - warm:.2f} s")
    for group in ("inductor", "aot_autograd"):
        hits = {k: v for k, v in counters[group].items() if "cache" in k}
        if hits:
            print(f"  {group} {hits}")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
