"""A CPU model of `foleyrt batch`'s scheduling: `batch.run_local` itself, around stand-in
stages that take the time an H100 takes (scaled down), to compare where the features are
computed (`--encoders`) and how groups form without a GPU.

The stand-ins, per clip: decoding holds its decoder thread DECODE_S; encoding holds the
thread that encodes ENCODE_S; a group's denoising holds the thread that queues it
HOLD_S + PER_CLIP_S per clip (what run AX measured: queueing a group holds the host about
as long as the GPU runs it), 15 % less per clip from 8 clips on. Times are roughly run AX's
fp8 figures on an H100 (per clip: decoding 2.6 s, encoding 0.21 s of the GPU thread, a group
of one clip held 0.55 s) divided by 10 (docs/benchmarks.md §6). Prints clips per second
(x10 for the real rate) and the groups, for each `--encoders` place.
Usage: PYTHONPATH=src python scripts/schedule_model.py [CLIPS]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.batch import (
    BatchItem,
    BatchReport,
    BatchSettings,
    Encoders,
    LocalOptions,
    plan_batch,
    run_local,
    stages,
)
from foleyrt.lengths import SequenceLengths
from foleyrt.media.video import DecodedClip
from foleyrt.pipeline.pipeline import Encoded, FoleyResult
from foleyrt.request import GenerationRequest
from foleyrt.sampling.conditions import Conditions

DECODE_S, ENCODE_S, HOLD_S, PER_CLIP_S = 0.25, 0.025, 0.012, 0.05
DECODERS, BATCH_ROWS, FIRST_WAIT_S = 8, 32, 0.05


class ModelPipe:
    """The pipeline calls `run_local` makes, each holding its caller for a set time."""

    runtime = RuntimeConfig()
    models = SimpleNamespace(offloader=None)

    def encode(self, video: DecodedClip, request: GenerationRequest, *,
               wait: bool = True) -> Encoded:
        time.sleep(ENCODE_S)
        features = Conditions(*(torch.zeros(1, n, 4) for n in (8, 8, 2, 2)))
        return Encoded(video.info.path, request, features, SequenceLengths(8, 25), 1.0)

    def max_rows(self, encoded: list[Encoded], override: int | None = None) -> int:
        return override or BATCH_ROWS

    def denoise(self, encoded: list[Encoded], max_rows: int) -> list[torch.Tensor]:
        n = len(encoded)
        time.sleep(HOLD_S + n * PER_CLIP_S * (0.85 if n >= 8 else 1.0))
        return [torch.zeros(1) for _ in encoded]

    def finish(self, encoded: Encoded, latents: torch.Tensor) -> FoleyResult:
        return FoleyResult(torch.zeros(1, 1, 48), 48000, 0.001, 1, None, 0, True)


def decode_source(path: Path, request: GenerationRequest) -> DecodedClip:
    time.sleep(DECODE_S)
    empty = torch.zeros(0, dtype=torch.uint8)
    return DecodedClip(SimpleNamespace(path=path), empty, empty,  # type: ignore[arg-type]
                       [], [], [], [], 1.0)


def main() -> None:
    clips = int(sys.argv[1]) if len(sys.argv) > 1 else 48
    stages.decode_source = decode_source  # type: ignore[assignment]
    settings = BatchSettings(formats=(".wav",), request=GenerationRequest(steps=2, seed=0))
    for encoders in (Encoders.BETWEEN, Encoders.AHEAD):
        outdir = Path(tempfile.mkdtemp())
        items = [BatchItem(Path(f"clip{k:03d}.mp4")) for k in range(clips)]
        report = BatchReport.start(plan_batch(items, outdir, settings), overwrite=False)
        options = LocalOptions(batch_rows=BATCH_ROWS, decode_workers=DECODERS,
                               group_wait_s=FIRST_WAIT_S, encoders=encoders)
        start = time.perf_counter()
        stats = run_local(ModelPipe(), report, settings, options)  # type: ignore[arg-type]
        rate = clips / (time.perf_counter() - start)
        print(f"encoders {encoders.value:<8} {rate:5.1f} clips/s (model time)  "
              f"groups {stats.groups}")


if __name__ == "__main__":
    main()
