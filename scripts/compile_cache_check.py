"""Where the first compiled step spends its time, and whether the on-disk caches hit.
Run it twice (two processes, same FOLEYRT_CACHE): the second run should hit every cache.
Usage: python scripts/compile_cache_check.py [SIZE] [SECONDS]"""

from __future__ import annotations

import sys
import time

import torch
from torch._dynamo.utils import compile_times, counters

from foleyrt.accel.compile import compile_blocks
from foleyrt.bench import random_conditions, random_dit
from foleyrt.config import PRESETS
from foleyrt.pipeline.conditions import prepare_rows
from foleyrt.pipeline.sampling import flow_schedule


def main() -> None:
    size, seconds = (sys.argv[1], float(sys.argv[2])) if len(sys.argv) == 3 else ("xl", 5.0)
    device = torch.device("cuda")
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
        print(f"first compiled forward: {time.perf_counter() - t:.1f} s")
    print(compile_times(repr="str", aggregate=True))
    for group in ("inductor", "aot_autograd"):
        print(group, {k: v for k, v in counters[group].items() if "cache" in k})


if __name__ == "__main__":
    main()
