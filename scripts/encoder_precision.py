"""GPU measurement: SigLIP2 (real size, random weights) on one 10 s clip's 80 frames in each
precision it could run in (fp32 as the release, TF32 matmuls, fp16 and bf16 autocast): time
(median of 5 after a warm-up) and distance of its features to fp32's; and Synchformer on the
clip's 250 frames under the release's fp16 autocast. The choice of `siglip_autocast`
(pipeline/features.py) rests on these figures (docs/benchmarks.md §6).
Usage: PYTHONPATH=src python scripts/encoder_precision.py"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from foleyrt.config import PRESETS
from foleyrt.models.encoders import SigLIP2Encoder
from foleyrt.models.random_init import randomize_
from foleyrt.models.synchformer import Synchformer, sync_features
from foleyrt.pipeline.features import SIGLIP_CHUNK, SYNC_GROUP, sync_autocast

FRAMES = 80, 250  # SigLIP2 (8 fps) and Synchformer (25 fps) frames of a 10 s clip
CUDA = torch.device("cuda")


def median_s(run: Callable[[], Tensor], repeats: int = 5) -> tuple[float, Tensor]:
    out = run()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def precision(mode: str) -> AbstractContextManager[object]:
    """The context SigLIP2 runs in for `mode`; TF32 (matmuls and convolutions) is set on the
    backends by the caller."""
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    return torch.autocast("cuda", dtype=dtypes[mode]) if mode in dtypes else nullcontext()


def main() -> None:
    spec = PRESETS["xxl"]
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    siglip = SigLIP2Encoder.random(spec.dit.clip_dim, 3, full_size=True).to(CUDA).eval()
    g = torch.Generator(CUDA).manual_seed(0)
    # smooth images (coarse noise, upsampled) in the model's [-1, 1] range
    coarse = torch.rand(FRAMES[0], 3, 32, 32, device=CUDA, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=512, mode="bilinear") * 2 - 1
    reference: Tensor | None = None
    for mode in ("fp32", "tf32", "fp16", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"

        def run(mode: str = mode) -> Tensor:
            with torch.inference_mode(), precision(mode):
                return siglip(pixels, batch_size=SIGLIP_CHUNK).float()

        seconds, out = median_s(run)
        reference = out if reference is None else reference
        cos = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
        rel = (out - reference).norm() / reference.norm()
        print(f"SigLIP2, {FRAMES[0]} frames, {mode:<5} {seconds * 1e3:7.1f} ms  cosine to fp32 "
              f"{cos.item():.8f}  relative distance {rel.item():.2e}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    synchformer = randomize_(Synchformer(spec.synchformer), 2).to(CUDA).eval()
    frames = torch.rand(FRAMES[1], 3, 224, 224, device=CUDA, generator=g) * 2 - 1

    def sync() -> Tensor:
        with torch.inference_mode(), sync_autocast(CUDA):
            return sync_features(synchformer, frames).float()

    seconds, _ = median_s(sync)
    print(f"Synchformer, {FRAMES[1]} frames, fp16 autocast (the release's) "
          f"{seconds * 1e3:7.1f} ms")
    compiled_encoders(siglip, pixels, synchformer, frames)


def compiled_encoders(siglip: SigLIP2Encoder, pixels: Tensor, synchformer: Synchformer,
                      frames: Tensor) -> None:
    """Both encoders at the streamed pipeline's call sizes (`SIGLIP_CHUNK` frames,
    `SYNC_GROUP` windows), eager against `torch.compile` (static shapes), fp16 autocast."""
    tower = siglip.vision_model
    for label, model in (("eager", tower), ("compiled", torch.compile(tower, dynamic=False))):
        def run_siglip(m: Any = model) -> Tensor:
            return torch.cat([m(pixel_values=c).pooler_output
                              for c in pixels.split(SIGLIP_CHUNK)])

        timed_calls(f"SigLIP2 {label:<9} chunks of {SIGLIP_CHUNK}", run_siglip)
    for label, model in (("eager", synchformer),
                         ("compiled", torch.compile(synchformer, dynamic=False))):
        def run_sync(m: Any = model) -> Tensor:
            return sync_features(m, frames, SYNC_GROUP)

        timed_calls(f"Synchformer {label:<9} groups of {SYNC_GROUP}", run_sync)


def timed_calls(label: str, run: Callable[[], Tensor]) -> None:
    """The first call's time (a compile's), then the median of `median_s`, under fp16
    autocast; the output's norm shows that compiling kept the numbers."""

    def call() -> Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return run().float()

    first = time.perf_counter()
    call()
    torch.cuda.synchronize()
    warm = time.perf_counter() - first
    seconds, out = median_s(call)
    print(f"{label}: {seconds * 1e3:7.1f} ms (first call {warm:.1f} s) "
          f"|out| {out.norm().item():.6g}")


if __name__ == "__main__":
    main()
