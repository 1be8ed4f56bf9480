"""Where the CPU side of a request spends its time: probe, decode + RGB, both resizes, the
whole `decode_clip`, and the MP4 mux; on a GPU also the streamed path (decode + GPU resizes +
real-size random SigLIP2/Synchformer/CLAP), with and without the encoders.
Usage: python scripts/profile_media.py [SECONDS W H]"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import torch

from foleyrt.media import video
from foleyrt.media.audio import mux_video
from foleyrt.media.synthetic import write_test_clip


def timed(label: str, fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    print(f"{label:<28}{time.perf_counter() - t:8.3f} s")
    return out


def main() -> None:
    seconds, width, height = (float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])) \
        if len(sys.argv) == 4 else (8.0, 1280, 720)
    print(f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}  "
          f"clip {seconds:g} s {width}x{height} 30 fps")
    tmp = Path(tempfile.mkdtemp())
    clip = write_test_clip(tmp / "clip.mp4", seconds, width=width, height=height, fps=30)
    timed("probe", lambda: video.probe_video(clip))
    ticks = timed("decode + rgb (all ticks)", lambda: list(video.iter_ticks(clip)))
    siglip = [t.rgb for t in ticks if t.rate == video.SIGLIP_FPS]
    sync = [t.rgb for t in ticks if t.rate == video.SYNC_FPS]
    timed(f"siglip resize x{len(siglip)} serial", lambda: [video.siglip_pixels(f) for f in siglip])
    timed(f"sync resize x{len(sync)} serial", lambda: [video.sync_pixels_batch([f]) for f in sync])
    timed(f"sync resize x{len(sync)} batch 16", lambda: [
        video.sync_pixels_batch(sync[i:i + 16]) for i in range(0, len(sync), 16)])
    gil_check(clip)
    for _ in range(2):
        decoded = timed("decode_clip (parallel)", lambda: video.decode_clip(clip))
    if torch.cuda.is_available():
        profile_stream(clip)
    audio = torch.zeros(1, round(decoded.duration_s * 48000))
    for _ in range(2):
        timed("mux mp4 (stream copy + aac)", lambda: mux_video(clip, tmp / "out.mp4", audio,
                                                                48000, overwrite=True))


def gil_check(clip: Path) -> None:
    """Whether the RGB conversion every decoder runs per frame holds the GIL: a Python loop
    and the conversion of the clip's frames, alone and on two threads at once (if it holds the
    GIL, together takes their sum rather than the longer of the two)."""
    with av.open(str(clip)) as container:
        frames = list(container.decode(video=0))

    def convert() -> None:
        for frame in frames:
            frame.to_ndarray(format="rgb24")

    def count() -> None:
        x = 0
        for i in range(3_000_000):
            x += i

    def both() -> None:
        threads = [threading.Thread(target=f) for f in (convert, count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    convert()  # warm-up: the converter's tables
    timed(f"rgb convert x{len(frames)}", convert)
    timed("python loop 3e6", count)
    timed("both on two threads", both)


def profile_stream(clip: Path) -> None:
    """`encode_video` on the GPU, whole and without encoders (resizes only)."""
    from types import SimpleNamespace

    from foleyrt.config import PRESETS
    from foleyrt.models.encoders import ClapTextEncoder, SigLIP2Encoder
    from foleyrt.models.random_init import randomize_
    from foleyrt.models.synchformer import Synchformer
    from foleyrt.pipeline.features import encode_video

    spec, dev = PRESETS["xxl"], torch.device("cuda")
    real = SimpleNamespace(
        siglip=SigLIP2Encoder.random(spec.dit.clip_dim, 3, full_size=True).to(dev).eval(),
        synchformer=randomize_(Synchformer(spec.synchformer), 2).to(dev).eval(),
        clap=ClapTextEncoder.random(spec.dit.text_dim, 4, text_length=spec.dit.text_length,
                                    full_size=True).to(dev).eval())
    zero_sync = torch.nn.Module()
    zero_sync.config = real.synchformer.config  # type: ignore[assignment]
    zero_sync.forward = lambda w: torch.zeros(w.shape[0], 1, 8, 768, device=dev)  # type: ignore
    resize_only = SimpleNamespace(
        siglip=lambda px: torch.zeros(1, px.shape[0], 768, device=dev),
        synchformer=zero_sync, clap=real.clap)
    for label, models in (("resizes only", resize_only), ("with encoders", real)):
        for _ in range(3):
            t = time.perf_counter()
            with torch.inference_mode():
                out = encode_video(models, clip, "rain", "", dev, fast=True)  # type: ignore
            torch.cuda.synchronize()
            print(f"stream {label:<14}: decode loop {out.decode_s:.3f} s, total "
                  f"{time.perf_counter() - t:.3f} s")
        kernel_time(lambda models=models: encode_video(models, clip, "rain", "", dev, fast=True))


def kernel_time(encode) -> None:  # type: ignore[no-untyped-def]
    """The GPU's own time in the encoding stage's kernels (what it takes from the transformer
    when both run at once), by kernel: NVML's busy share counts any running kernel, however
    few SMs it fills."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        encode()
        torch.cuda.synchronize()
    kernels = [k for k in prof.key_averages() if k.self_device_time_total > 0]
    total = sum(k.self_device_time_total for k in kernels) / 1e6
    print(f"  kernels: {total:.3f} s of GPU time in {sum(k.count for k in kernels)} launches")
    for k in sorted(kernels, key=lambda k: -k.self_device_time_total)[:12]:
        print(f"  {k.self_device_time_total / 1e6:8.4f} s  x{k.count:<6} {k.key[:90]}")

if __name__ == "__main__":
    main()
