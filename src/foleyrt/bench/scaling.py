"""Data-parallel scaling: clips per second of `foleyrt batch` on N GPUs through its Ray
executor, against one GPU, measured in one run.

Every configuration is a fresh `foleyrt batch` process over the same synthetic clips
(`clips_per_gpu` x N of them, `duration_s` long), writing WAVs into a folder of its own. The
one-GPU baseline is the default (local) executor; the N-GPU runs are `--executor ray
--num-workers N --gpus-per-worker 1`. Throughput comes from when each clip's output appeared
(outputs are written atomically, so a file's modification time is its clip's completion): the
first `warmup_per_gpu` x N completions carry model loading, compilation and graph capture, so
the steady rate is the clips completed after them over the time from the last of them to the
last clip. Wall-clock clips/s (start-up included) is reported beside it. Efficiency is
clips/s on N GPUs over N times the baseline's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from foleyrt.errors import FoleyError
from foleyrt.media.synthetic import write_test_clips

ONE_GPU = "one GPU"  # the baseline: the local executor
RAY = "ray"


@dataclass(frozen=True)
class ScalingSpec:
    """`options`: what every `foleyrt batch` gets besides its inputs and executor (model,
    size, accel, steps, ...); `command`: how foleyrt is run."""

    gpus: tuple[int, ...] = (2, 4, 8)
    clips_per_gpu: int = 16
    duration_s: float = 10.0
    warmup_per_gpu: int = 2
    options: tuple[str, ...] = ()
    command: tuple[str, ...] = (sys.executable, "-m", "foleyrt.cli")


@dataclass
class ScalingRow:
    engine: str
    gpus: int
    clips: int
    wall_s: float
    steady_clips_per_s: float
    efficiency: float = 1.0  # steady clips/s over gpus x the baseline's

    @property
    def wall_clips_per_s(self) -> float:
        return self.clips / self.wall_s


def steady_rate(completions: Sequence[float], warmup: int) -> float:
    """Clips per second after the first `warmup` completions (times in seconds)."""
    times = sorted(completions)
    first = max(warmup, 1) - 1  # the completion the steady interval starts from
    if len(times) - first < 2 or times[-1] <= times[first]:
        raise FoleyError(f"{len(times)} completions are too few to measure after {warmup} "
                         f"warm-up ones: give more clips per GPU")
    return (len(times) - 1 - first) / (times[-1] - times[first])


def batch_command(spec: ScalingSpec, engine: str, gpus: int, clips: Sequence[Path],
                  out_dir: Path) -> list[str]:
    command = [*spec.command, "-q", "batch", *map(str, clips), "-o", str(out_dir),
               "--format", "wav", *spec.options]
    if engine == RAY:
        command += ["--executor", "ray", "--num-workers", str(gpus), "--gpus-per-worker", "1"]
    return command


def run_config(spec: ScalingSpec, engine: str, gpus: int, clips: Sequence[Path],
               out_dir: Path) -> ScalingRow:
    """One `foleyrt batch` run, timed from its outputs."""
    start = time.time()
    status = subprocess.run(batch_command(spec, engine, gpus, clips, out_dir),
                            stdout=subprocess.DEVNULL, check=False).returncode  # paths only
    wall = time.time() - start
    outputs = list(out_dir.glob("*.wav"))
    if status != 0 or len(outputs) != len(clips):
        raise FoleyError(f"foleyrt batch ({engine}, {gpus} GPU(s)) exited with status "
                         f"{status} and {len(outputs)} of {len(clips)} outputs")
    rate = steady_rate([p.stat().st_mtime for p in outputs], spec.warmup_per_gpu * gpus)
    return ScalingRow(engine, gpus, len(clips), wall, rate)


def run_scaling(spec: ScalingSpec, work: Path) -> Iterator[ScalingRow]:
    """The one-GPU baseline, then Ray on each of `spec.gpus`, in `work`."""
    clips = write_test_clips(work / "clips", spec.clips_per_gpu * max((1, *spec.gpus)),
                       spec.duration_s)
    base = run_config(spec, ONE_GPU, 1, clips[:spec.clips_per_gpu], work / "out-1")
    yield base
    for n in spec.gpus:
        row = run_config(spec, RAY, n, clips[:spec.clips_per_gpu * n], work / f"out-ray-{n}")
        row.efficiency = row.steady_clips_per_s / (n * base.steady_clips_per_s)
        yield row
