"""GPU check behind docs/benchmarks.md §6, runs AW-AX: how long one group's denoising call
holds its caller against the group's GPU time, and whether anything in the call waits for
the GPU (PyTorch's CUDA sync debug mode warns at each synchronising call; printed with the
line that made it). XXL with random weights, `--accel compile`, text-only 10 s requests.
Usage: PYTHONPATH=src python scripts/denoise_hold.py [CLIPS]"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from collections import Counter

import torch

from foleyrt.accel.process import configure_process
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import RANDOM
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import GenerationRequest


def main() -> None:
    clips = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    configure_process()
    pipe = FoleyPipeline.from_pretrained(RANDOM, "xxl",
                                         RuntimeConfig.build("cuda", accel="compile"))
    encoded = [pipe.encode(None, GenerationRequest(prompt="rain", duration=10.0, seed=k))
               for k in range(clips)]
    pipe.denoise(encoded)  # compiles and captures this group's shapes
    torch.cuda.synchronize()
    syncs: Counter[str] = Counter()  # where each synchronising call came from, and how often

    def record(message: warnings.WarningMessage | Warning | str, *args: object) -> None:
        ours = [f for f in traceback.extract_stack()[:-1] if "/foleyrt/" in f.filename]
        syncs[f"{ours[-1].filename}:{ours[-1].lineno} {ours[-1].line}" if ours else "?"] += 1

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    began = time.perf_counter()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # type: ignore[assignment]
        pipe.denoise(encoded)
    torch.cuda.set_sync_debug_mode("default")
    host = time.perf_counter() - began
    end.record()
    end.synchronize()
    print(f"{clips} clips of 10 s: the call held its caller {host:.2f} s; the GPU ran the "
          f"group {start.elapsed_time(end) / 1000:.2f} s; synchronising calls: "
          f"{sum(syncs.values())}, from:")
    for site, count in syncs.most_common():
        print(f"  {count} x {site}")


if __name__ == "__main__":
    main()
