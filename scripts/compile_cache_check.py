"""Where the first compiled step spends its time, and whether the on-disk caches hit.
Run it twice (two processes, same FOLEYRT_CACHE): the second run should load the saved block
graphs and compile nothing. `--preload` starts loading them in the background before the model
is built, as `load_models` does.
Usage: python scripts/compile_cache_check.py [SIZE SECONDS] [--preload]"""

from __future__ import annotations

import sys
import time

import torch
from torch._dynamo.utils import compile_times, counters

from foleyrt.accel.compile import compile_blocks, preload_block_graphs
from foleyrt.bench import random_conditions, random_dit
from foleyrt.config import PRESETS
from foleyrt.pipeline.conditions import prepare_rows
from foleyrt.pipeline.sampling import flow_schedule


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--preload"]
    size, seconds = (args[0], float(args[1])) if len(args) == 2 else ("xl", 5.0)
    device = torch.device("cuda")
    start = time.perf_counter()
    if "--preload" in sys.argv:
        preload_block_graphs(device)
    spec = PRESETS[size]
    dit = random_dit(spec, device, torch.bfloat16, seed=0)
    cond, n_latent = random_conditions(spec, seconds, device, seed=1)
    x = torch.randn(2, 128, n_latent, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        prepared = prepare_rows(dit, cond, 1, True, n_latent)
        table = dit.time_conditioning(flow_schedule(50, spec.diffusion).timesteps.to(device))
        compile_blocks(dit)
        t = time.perf_counter()
        dit.velocity(x, None, prepared, table.select(torch.zeros(1, dtype=torch.long,
                                                                 device=device), 2))
        torch.cuda.synchronize()
        print(f"first compiled forward: {time.perf_counter() - t:.1f} s "
              f"({time.perf_counter() - start:.1f} s since start, model building included)")
    print(compile_times(repr="str", aggregate=True))
    for group in ("inductor", "aot_autograd"):
        print(group, {k: v for k, v in counters[group].items() if "cache" in k})


if __name__ == "__main__":
    main()
