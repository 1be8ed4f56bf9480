"""Throughput end to end: a folder of synthetic 720p clips through `foleyrt batch`'s own code
path (`batch.run_local`: decoders, grouped denoising, VAE, mux, files written), with
real-size random-weight networks, then the same clips one at a time (one clip per forward,
no stage overlapped) in the same process, so the gain is a ratio of two figures from the
same machine, weights and clips.

Before the timed runs each mode runs once on enough clips to meet every group size it can form,
so compiling and capturing graphs for its shapes are not timed. Decoding processes
(`--decode-in processes`) start before the models load and serve every run, as `foleyrt batch`
starts them while its models load, so their start is not timed either. The GPU's busy fraction comes
from NVML: the utilisation it reports, sampled every 50 ms, is the share of each sampling
period in which a kernel ran on the GPU, any process; read through `pynvml` (nvidia-ml-py) when
installed, else from `nvidia-smi`'s sampling loop. Without either, from CUDA events around each
group's denoising: the transformer's share only (features and VAE run beside it on other
streams and are not counted). Host memory: the process's resident set, sampled likewise
(Linux), else its lifetime peak.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from foleyrt.accel.calibration import Calibration
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.batch import (
    DEFAULT_DECODE_WORKERS,
    BatchReport,
    BatchSettings,
    DecodeIn,
    DecodePool,
    Encoders,
    LocalOptions,
    RunStats,
    Status,
    plan_batch,
    read_inputs,
    run_local,
)
from foleyrt.batch.stages import items_per_group
from foleyrt.bench.host import peak_gb, resident_bytes
from foleyrt.calibrate import calibrate
from foleyrt.config import PRESETS, RANDOM, ModelSpec
from foleyrt.media.synthetic import write_test_clips
from foleyrt.pipeline.pipeline import FoleyPipeline, release_cuda_memory
from foleyrt.request import GenerationRequest

PROMPT = "footsteps on gravel"
CLIP_SIZE = (1280, 720)
CLIP_FPS = 30
SAMPLE_S = 0.05
SMI = "nvml (nvidia-smi)"
ONE_AT_A_TIME = "one at a time"
BATCHED = "batched"


@dataclass
class ThroughputRow:
    """One mode over all the clips. `gpu_busy`: the GPU's busy fraction of the wall time
    (`gpu_busy_after_first`: from the first group's latents on, once compiling and the
    pipeline's filling are over), measured as `gpu_busy_source` says."""

    mode: str
    clips: int
    clip_s: float
    wall_s: float
    groups: list[int]
    stages_s: dict[str, float]
    gpu_busy: float | None
    gpu_busy_after_first: float | None
    gpu_busy_source: str
    peak_gpu_gb: float | None
    peak_host_gb: float
    failed: int = 0
    settings: dict[str, object] = field(default_factory=dict)
    # The groups' denoising as the GPU timed it (CUDA events): whether the transformer or
    # what runs beside it fills the busy time.
    denoise_gpu_s: float | None = None
    # When the first group's latents were ready: the pipeline's filling, before the GPU's
    # steady work (the run's end, its last group's VAE and muxing, is the other overhead).
    first_group_s: float | None = None

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s

    @property
    def audio_s_per_s(self) -> float:
        return self.clips * self.clip_s / self.wall_s


def bench_throughput(
    size: str, clips: int, clip_s: float, runtime: RuntimeConfig, *, steps: int,
    guidance: float, batch_rows: int | None = None, decode_workers: int | None = None,
    calibrate: bool = False, workdir: Path | None = None, baseline: bool = True,
    decode_in: Sequence[DecodeIn] = (DecodeIn.THREADS,),
    encoders: Sequence[Encoders] = (LocalOptions.encoders,),
) -> Iterator[ThroughputRow]:
    """A batched row for each of `decode_in` and `encoders`, then (`baseline`) the
    one-at-a-time row; clips and outputs in `workdir` (clips already there are reused:
    several runs measure the same files), or in a temporary folder removed afterwards.
    `calibrate`: record the random model's activation ranges on two of the clips first and
    run `runtime` with them (fp8 with static scales, int8): random weights have no
    calibration file."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="foleyrt-throughput-") as tmp:
            yield from bench_throughput(size, clips, clip_s, runtime, steps=steps,
                                        guidance=guidance, batch_rows=batch_rows,
                                        decode_workers=decode_workers, calibrate=calibrate,
                                        workdir=Path(tmp), baseline=baseline,
                                        decode_in=decode_in, encoders=encoders)
        return
    spec = PRESETS[size]
    folder = workdir / "clips"
    write_test_clips(folder, clips, clip_s, width=CLIP_SIZE[0], height=CLIP_SIZE[1],
                     fps=CLIP_FPS)
    settings = BatchSettings(formats=(".mp4",), request=GenerationRequest(
        prompt=PROMPT, steps=steps, guidance=guidance, seed=0))
    workers = DEFAULT_DECODE_WORKERS if decode_workers is None else decode_workers
    with ExitStack() as stack:
        # As `foleyrt batch` does: decoding processes start while the models load.
        decoders = (stack.enter_context(DecodePool(workers))
                    if DecodeIn.PROCESSES in decode_in else None)
        if calibrate:
            runtime = replace(runtime, calibration=_calibration(spec, runtime, folder,
                                                                settings.request))
        pipe = FoleyPipeline.from_pretrained(RANDOM, spec.name, runtime).compile_encoders()
        yield from _rows(pipe, folder, workdir, settings, clip_s, workers, decoders,
                         batch_rows=batch_rows, baseline=baseline, decode_in=decode_in,
                         encoders=encoders)


def _rows(pipe: FoleyPipeline, folder: Path, workdir: Path, settings: BatchSettings,
          clip_s: float, workers: int, decoders: DecodePool | None, *,
          batch_rows: int | None, baseline: bool, decode_in: Sequence[DecodeIn],
          encoders: Sequence[Encoders]) -> Iterator[ThroughputRow]:
    """The warm-up runs, then a timed row per mode (see `bench_throughput`)."""
    one = settings.request.rows
    modes = {_mode(where, enc): LocalOptions(batch_rows, workers, decode_in=where, encoders=enc)
             for where in decode_in for enc in encoders}
    # Groups go as powers of two of their clips (`stages.Grouper`): waiting for its clips, a
    # run of twice the largest group less one fills groups, then the end drains the rest in
    # one group of each smaller power of two, so every group size a timed run can meet is
    # compiled and captured before it.
    warmup = [(2 * items_per_group(settings.request, batch_rows) - 1,
               LocalOptions(batch_rows, workers, fill_groups=True))]
    if baseline:
        modes[ONE_AT_A_TIME] = LocalOptions(batch_rows=one, overlap=False)
        warmup.append((1, modes[ONE_AT_A_TIME]))
    for k, (count, options) in enumerate(warmup):
        _run(pipe, folder, workdir / f"warmup-{k}", settings, options, limit=count)
    for mode, options in modes.items():
        yield _measure(pipe, folder, workdir / mode.replace(" ", "-").replace(",", ""),
                       settings, options, mode, clip_s,
                       decoders if options.decode_in is DecodeIn.PROCESSES else None)


def _mode(decode_in: DecodeIn, encoders: Encoders) -> str:
    """A batched row's name: "batched, threads, encoders between"..."""
    return f"{BATCHED}, {decode_in.value}, encoders {encoders.value}"


def _calibration(spec: ModelSpec, runtime: RuntimeConfig, folder: Path,
                 request: GenerationRequest) -> Calibration:
    """The random model's ranges, recorded eagerly and unquantised on two of the clips."""
    eager = RuntimeConfig(device=runtime.device, dtype=runtime.dtype)
    calibration = calibrate(FoleyPipeline.from_pretrained(RANDOM, spec.name, eager),
                            read_inputs([folder])[:2], request)
    release_cuda_memory()
    return calibration


def _run(pipe: FoleyPipeline, folder: Path, outdir: Path, settings: BatchSettings,
         options: LocalOptions, limit: int | None = None,
         decoders: DecodePool | None = None) -> tuple[BatchReport, RunStats]:
    """`foleyrt batch FOLDER -o OUTDIR` as the command runs it (the first `limit` clips)."""
    outdir.mkdir(exist_ok=True)
    items = read_inputs([folder])[:limit]
    report = BatchReport.start(plan_batch(items, outdir, settings), overwrite=True)
    return report, run_local(pipe, report, settings, options, decoders=decoders)


def _measure(pipe: FoleyPipeline, folder: Path, outdir: Path, settings: BatchSettings,
             options: LocalOptions, mode: str, clip_s: float,
             decoders: DecodePool | None) -> ThroughputRow:
    device = pipe.runtime.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with _Sampler(device) as sampler:
        report, stats = _run(pipe, folder, outdir, settings, options, decoders=decoders)
    busy, after, source = _gpu_busy(sampler, stats, cuda)
    return ThroughputRow(
        mode, len(report.items), clip_s, stats.wall_s, stats.groups,
        {k: round(v, 3) for k, v in stats.busy_s.items()}, busy, after, source,
        torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        sampler.peak_host_gb, report.count(Status.FAILED),
        {"batch_rows": options.batch_rows, "decode_workers": options.decode_workers,
         "decode_in": options.decode_in.value, "encoders": options.encoders.value,
         "overlap": options.overlap,
         "steps": settings.request.steps, "guidance": settings.request.guidance},
        sum(stats.denoise_gpu_s) if stats.denoise_gpu_s else None, stats.first_group_s)


def _gpu_busy(sampler: _Sampler, stats: RunStats, cuda: bool
              ) -> tuple[float | None, float | None, str]:
    if not cuda:
        return None, None, "none (no GPU)"
    first = stats.first_group_s
    if sampler.utilization:
        after = [u for t, u in sampler.utilization if first is not None and t >= first]
        return (sum(u for _, u in sampler.utilization) / len(sampler.utilization),
                sum(after) / len(after) if after else None, sampler.source)
    busy = sum(stats.denoise_gpu_s) / stats.wall_s
    after_first = None
    if first is not None and len(stats.denoise_gpu_s) > 1 and stats.wall_s > first:
        after_first = sum(stats.denoise_gpu_s[1:]) / (stats.wall_s - first)
    return busy, after_first, "cuda-events (denoising only)"


class _Sampler:
    """Threads sampling this process's resident memory and the GPU's utilisation every
    `SAMPLE_S` while the run goes on: NVML through pynvml, else through `nvidia-smi`'s own
    loop, else none (`utilization` stays empty)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        # nvidia-smi names the GPU by UUID: indices differ under CUDA_VISIBLE_DEVICES.
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None) if cuda else None
        self.source = ("nvml" if cuda and _has_nvml() else
                       SMI if uuid is not None and shutil.which("nvidia-smi") else "")
        self.smi_id = f"GPU-{uuid}"
        self.utilization: list[tuple[float, float]] = []  # (seconds from start, fraction)
        self.peak_rss = 0
        self.stop = threading.Event()
        self.smi: subprocess.Popen[str] | None = None
        self.threads = [threading.Thread(target=self._loop, name="foleyrt-sampler",
                                         daemon=True)]
        if self.source == SMI:
            self.threads.append(threading.Thread(target=self._read_smi, daemon=True,
                                                 name="foleyrt-nvidia-smi"))

    def __enter__(self) -> _Sampler:
        self.start = time.perf_counter()
        if self.source == SMI:
            self.smi = subprocess.Popen(
                ["nvidia-smi", f"--id={self.smi_id}", "--query-gpu=utilization.gpu",
                 "--format=csv,noheader,nounits", f"--loop-ms={round(SAMPLE_S * 1000)}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.smi is not None:
            self.smi.terminate()
            self.smi.wait()
        for thread in self.threads:
            thread.join()

    def _loop(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.peak_rss = max(self.peak_rss, resident_bytes())
            if self.source == "nvml":
                self._sample(torch.cuda.utilization(self.device))

    def _read_smi(self) -> None:
        assert self.smi is not None and self.smi.stdout is not None
        for line in self.smi.stdout:
            if line.strip().isdigit():
                self._sample(int(line))

    def _sample(self, percent: int) -> None:
        self.utilization.append((time.perf_counter() - self.start, percent / 100))

    @property
    def peak_host_gb(self) -> float:
        return peak_gb(self.peak_rss)


def _has_nvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True

