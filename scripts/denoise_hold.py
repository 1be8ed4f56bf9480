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
    syncs: list[str] = []

    def record(message: warnings.WarningMessage | Warning | str, *args: object) -> None:
        syncs.append(f"{message}\n{''.join(traceback.format_stack(limit=8)[:-1])}")

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
          f"group {start.elapsed_time(end) / 1000:.2f} s; synchronising calls: {len(syncs)}")
    for sync in syncs[:5]:
        print(sync)


if __name__ == "__main__":
    main()
