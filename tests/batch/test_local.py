"""The local executor on the tiny-random pipeline: groups of clips give their one-at-a-time
results, partial items are redone, failures stay with their item (or group), a bug stops the
run and is re-raised, and the queues bound what is in flight (a fake pipeline, many items)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import soundfile
import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.batch import (
    BatchItem,
    BatchReport,
    BatchSettings,
    DecodeIn,
    DecodePool,
    Encoders,
    ItemResult,
    LocalOptions,
    Status,
    plan_batch,
    run_local,
    stages,
)
from foleyrt.batch.local import MUXERS
from foleyrt.config import TINY_RANDOM
from foleyrt.errors import MediaError, UsageError
from foleyrt.lengths import SequenceLengths
from foleyrt.media.video import DecodedClip
from foleyrt.pipeline.pipeline import Encoded, FoleyPipeline, FoleyResult
from foleyrt.request import GenerationRequest
from tests.tiny import tiny_conditions

WAV = BatchSettings(formats=(".wav",), request=GenerationRequest(steps=2, seed=5))


def _report(items: list[BatchItem], outdir: Path, settings: BatchSettings = WAV) -> BatchReport:
    outdir.mkdir(exist_ok=True)
    return BatchReport.start(plan_batch(items, outdir, settings), overwrite=False)


def _cosine(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, 0))


def test_partial_item_is_redone_whole(pipe: FoleyPipeline, library: Path, tmp_path: Path) -> None:
    settings = BatchSettings(formats=(".wav",),
                             request=GenerationRequest(samples=2, steps=2, seed=3))
    [job] = plan_batch([BatchItem(library / "clips/a.mp4")], tmp_path, settings)
    job.outputs[0].write_bytes(b"stale")  # sample 1 of an interrupted run
    ended: list[ItemResult] = []
    report = BatchReport.start([job], overwrite=False)
    run_local(pipe, report, settings, on_item=ended.append)
    assert ended == report.items and report.items[0].status is Status.DONE
    assert report.items[0].seed == 3
    assert all(p.stat().st_size > 1000 for p in job.outputs)


def test_groups_give_each_clip_its_one_at_a_time_result(
    pipe: FoleyPipeline, library: Path, tmp_path: Path
) -> None:
    """Three clips of one length share forwards (two, then the one the input's end leaves:
    groups go as powers of two), the longer one goes alone; each written sound is what it is
    when every clip runs alone (one clip per forward, nothing overlapped), from its own
    seed."""
    clips = [library / n for n in ("clips/a.mp4", "clips/long.mp4", "clips/b.mp4",
                                   "other/b.mp4")]
    items = [BatchItem(v, prompt=f"sound {k}") for k, v in enumerate(clips)]
    together = run_local(pipe, _report(items, tmp_path / "together"), WAV,
                         LocalOptions(decode_workers=2, fill_groups=True))
    alone = run_local(pipe, _report(items, tmp_path / "alone"), WAV,
                      LocalOptions(batch_rows=2, overlap=False))
    assert sorted(together.groups) == [1, 1, 2] and alone.groups == [1, 1, 1, 1]
    names = sorted(p.name for p in (tmp_path / "alone").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "together").iterdir())
    assert len(names) == 4
    for name in names:
        got, rate = soundfile.read(tmp_path / "together" / name)
        want, _ = soundfile.read(tmp_path / "alone" / name)
        assert rate == 48000 and got.shape == want.shape
        assert _cosine(got, want) >= 0.9999


RUNS = {  # where clips are decoded, where their features are computed
    "threads": LocalOptions(decode_workers=2, encoders=Encoders.BESIDE),
    "processes": LocalOptions(decode_workers=2, decode_in=DecodeIn.PROCESSES,
                              encoders=Encoders.BESIDE),
    "between": LocalOptions(decode_workers=2, encoders=Encoders.BETWEEN),
    "ahead": LocalOptions(decode_workers=2),  # the default
    "interleaved": LocalOptions(decode_workers=2, encoders=Encoders.INTERLEAVED),
    "processes-ahead": LocalOptions(decode_workers=2, decode_in=DecodeIn.PROCESSES),
}


def test_every_place_to_decode_and_encode_gives_the_same_sounds(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding in two processes (spawned, frames back through shared memory) or in the
    threads, features computed by the decoders or by the GPU thread between groups: the same
    sounds and the same failures, each named; a clip longer than one pass (windows of 1.4 s
    here) is streamed in windows by its decoder thread in every case."""
    names = ("clips/a.mp4", "clips/short.mp4", "clips/long.mp4", "clips/text.mp4",
             "other/b.mp4")
    items = [BatchItem(library / n, prompt=f"sound {k}") for k, n in enumerate(names)]
    settings = BatchSettings(formats=(".wav",), request=GenerationRequest(
        steps=2, seed=5, window=1.4, overlap=0.4))
    encoders: list[str] = []  # the thread that encoded each clip decoded on the CPU
    real = pipe.encode

    def encode(video: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(video, DecodedClip):
            encoders.append(threading.current_thread().name)
        return real(video, *args, **kwargs)

    monkeypatch.setattr(pipe, "encode", encode)
    reports = {}
    for name, options in RUNS.items():
        encoders.clear()
        reports[name] = _report(items, tmp_path / name, settings)
        stats = run_local(pipe, reports[name], settings, options)
        # Decoding is a stage apart, on the CPU, unless the decoders stream frames to the GPU
        # and encode them as they come (threads, encoders beside).
        apart = name != "threads"
        assert (stats.busy_s["decode"] > 0) == apart == bool(encoders)
        gpu_thread = options.encoders.by_gpu_thread
        assert all((t == threading.current_thread().name) == gpu_thread for t in encoders)
    threads = reports["threads"]
    assert [r.status for r in threads.items].count(Status.FAILED) == 2
    for name in RUNS:
        assert [(r.status, r.error) for r in reports[name].items] == [
            (r.status, r.error) for r in threads.items]
        for clip in ("a.wav", "long.wav", "b.wav"):
            got, _ = soundfile.read(tmp_path / name / clip)
            want, _ = soundfile.read(tmp_path / "threads" / clip)
            assert got.shape == want.shape and _cosine(got, want) >= 0.99999


def test_decoding_processes_started_beforehand_serve_runs_and_stay_open(
    pipe: FoleyPipeline, library: Path, tmp_path: Path
) -> None:
    """`DecodePool` starts every process at once (as `foleyrt batch` does while the
    models load); runs given them decode there and leave them open for the next run; a run
    that decodes in threads refuses them."""
    items = [BatchItem(library / n) for n in ("clips/a.mp4", "clips/b.mp4")]
    options = LocalOptions(decode_workers=2, decode_in=DecodeIn.PROCESSES)
    with DecodePool(2) as decoders:
        assert len(multiprocessing.active_children()) == 2  # spawned before any clip
        pids = {p.pid for p in multiprocessing.active_children()}
        for run in ("first", "second"):
            report = _report(items, tmp_path / run)
            stats = run_local(pipe, report, WAV, options, decoders=decoders)
            assert report.count(Status.DONE) == 2 and stats.busy_s["decode"] > 0
            assert {p.pid for p in multiprocessing.active_children()} == pids
        with pytest.raises(UsageError, match="decodes in threads"):
            run_local(pipe, _report(items, tmp_path / "threads"), WAV,
                      LocalOptions(decode_workers=2), decoders=decoders)
    for clip in ("a.wav", "b.wav"):
        first, _ = soundfile.read(tmp_path / "first" / clip)
        second, _ = soundfile.read(tmp_path / "second" / clip)
        assert _cosine(first, second) >= 0.99999


def test_a_run_outlives_its_decoding_processes_dying(
    pipe: FoleyPipeline, library: Path, tmp_path: Path
) -> None:
    """Processes killed under a run (as the OOM killer does) are replaced and the clips in
    flight decoded again: every clip of the run is done, with the sound of a run whose
    processes lived."""
    items = [BatchItem(library / n) for n in ("clips/a.mp4", "clips/b.mp4", "other/b.mp4")]
    options = LocalOptions(decode_workers=2, decode_in=DecodeIn.PROCESSES)
    with DecodePool(2) as decoders:
        run_local(pipe, _report(items, tmp_path / "lived"), WAV, options, decoders=decoders)
        for process in multiprocessing.active_children():
            os.kill(process.pid, signal.SIGKILL)
        report = _report(items, tmp_path / "killed")
        run_local(pipe, report, WAV, options, decoders=decoders)
        assert report.count(Status.DONE) == 3 and decoders.restarts == 1
    for path in (tmp_path / "lived").rglob("*.wav"):
        want, _ = soundfile.read(path)
        got, _ = soundfile.read(tmp_path / "killed" / path.relative_to(tmp_path / "lived"))
        assert _cosine(want, got) >= 0.99999


def _dies_on(value: str) -> str:
    """A decoding task that kills its process for "bad" (as a decoder crashing on a file)."""
    if value == "bad":
        os._exit(1)
    time.sleep(0.2)  # in flight while the bad one dies
    return value


def test_a_clip_that_kills_its_decoding_process_fails_alone() -> None:
    """A task whose process dies fails with one line once it died alone in the pool; the
    tasks beside it, broken with the same pool, are tried again and succeed."""
    with DecodePool(2) as decoders, ThreadPoolExecutor(4) as callers:
        futures = [callers.submit(decoders.run, _dies_on, v) for v in ("a", "bad", "b", "c")]
        with pytest.raises(MediaError, match="its decoding process died"):
            futures[1].result()
        assert [futures[k].result() for k in (0, 2, 3)] == ["a", "b", "c"]
        assert decoders.restarts == 2  # the first death, then its own, alone
        assert decoders.run(_dies_on, "d") == "d"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encoders_ahead_on_cuda_give_the_sounds_of_encoders_between(
    library: Path, tmp_path: Path
) -> None:
    """On CUDA, features computed ahead (the GPU thread's own stream, a denoising thread
    waiting for them by event) or interleaved (queued on the denoising's stream by the GPU
    thread) give what features computed between groups give."""
    cuda = FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cuda"))
    items = [BatchItem(library / n, prompt=f"sound {k}")
             for k, n in enumerate(("clips/a.mp4", "clips/b.mp4", "other/b.mp4"))]
    for encoders in (Encoders.BETWEEN, Encoders.AHEAD, Encoders.INTERLEAVED):
        report = _report(items, tmp_path / encoders.value)
        run_local(cuda, report, WAV, LocalOptions(decode_workers=2, encoders=encoders))
        assert report.count(Status.DONE) == 3
    names = sorted(p.relative_to(tmp_path / "between")
                   for p in (tmp_path / "between").rglob("*.wav"))
    assert len(names) == 3
    for name in names:
        want, _ = soundfile.read(tmp_path / "between" / name)
        for place in ("ahead", "interleaved"):
            got, _ = soundfile.read(tmp_path / place / name)
            assert got.shape == want.shape and _cosine(got, want) >= 0.9999


def failing(real: Callable[..., Any], bad: str, exc: BaseException) -> Callable[..., Any]:
    """`real`, raising `exc` when its first argument (a clip, decoded or not, or encoded
    clips) is `bad`."""
    def call(first: Any, *args: Any, **kwargs: Any) -> Any:
        videos = [e.video for e in first] if isinstance(first, list) else [first]
        videos = [v.info.path if isinstance(v, DecodedClip) else v for v in videos]
        if any(v is not None and Path(v).name == bad for v in videos):
            raise exc
        return real(first, *args, **kwargs)

    return call


OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def test_out_of_memory_encoding_fails_the_item_only(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe, "encode", failing(pipe.encode, "a.mp4", OOM))
    items = [BatchItem(library / "clips/a.mp4"), BatchItem(library / "clips/b.mp4")]
    first, second = run_local_report(pipe, items, tmp_path).items
    assert first.status is Status.FAILED and second.status is Status.DONE
    assert first.line() == (f"item 1 failed: {library / 'clips/a.mp4'}: the GPU ran out of "
                            "memory on this clip; try fewer --samples, a shorter clip, or a "
                            "smaller --size")


def run_local_report(pipe: FoleyPipeline, items: list[BatchItem], outdir: Path,
                     options: LocalOptions | None = None) -> BatchReport:
    report = _report(items, outdir)
    run_local(pipe, report, WAV, options or LocalOptions(fill_groups=True))
    return report


def test_out_of_memory_denoising_fails_its_group_and_empties_the_cache(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe, "denoise", failing(pipe.denoise, "a.mp4", OOM))
    emptied = []
    monkeypatch.setattr(stages, "release_cuda_memory", lambda: emptied.append(1))
    items = [BatchItem(library / n) for n in ("clips/a.mp4", "clips/b.mp4", "clips/long.mp4")]
    a, b, long = run_local_report(pipe, items, tmp_path).items
    assert (a.status, b.status, long.status) == (Status.FAILED, Status.FAILED, Status.DONE)
    assert b.error == (f"{library / 'clips/b.mp4'}: the GPU ran out of memory on a group of 2 "
                       "clips; try a smaller --batch-rows, fewer --samples or a smaller --size")
    assert emptied == [1]


@pytest.mark.parametrize("overlap", [True, False])
def test_a_bug_is_recorded_then_raised(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    overlap: bool,
) -> None:
    monkeypatch.setattr(pipe, "encode", failing(pipe.encode, "a.mp4", KeyError("oops")))
    items = [BatchItem(library / "clips/a.mp4"), BatchItem(library / "clips/b.mp4")]
    report = _report(items, tmp_path)
    with pytest.raises(KeyError):
        run_local(pipe, report, WAV, LocalOptions(decode_workers=1, overlap=overlap))
    assert [r.status for r in report.items] == [Status.FAILED, Status.NOT_RUN]
    assert "internal error (KeyError: 'oops')" in str(report.items[0].error)


class CountingPipe:
    """A pipeline whose stages take no time but denoising (slower than the rest, so queues
    fill), counting the items between their encoding and their end."""

    def __init__(self) -> None:
        self.runtime = RuntimeConfig()
        self.models = SimpleNamespace(offloader=None)
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def decode_source(self, path: Path, request: GenerationRequest) -> DecodedClip:
        """`stages.decode_source`'s stand-in (encoders between): an item starts here."""
        self.started()
        empty = torch.zeros(0, dtype=torch.uint8)
        return DecodedClip(SimpleNamespace(path=path), empty, empty,  # type: ignore[arg-type]
                           [], [], [], [], 1.0)

    def encode(self, video: Path | DecodedClip, request: GenerationRequest, *,
               wait: bool = True) -> Encoded:
        if isinstance(video, DecodedClip):
            video = video.info.path
        else:
            self.started()
        return Encoded(video, request, tiny_conditions(0), SequenceLengths(8, 25), 1.0)

    def started(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def max_rows(self, encoded: list[Encoded], override: int | None = None) -> int:
        return override or 32

    def denoise(self, encoded: list[Encoded], max_rows: int) -> list[torch.Tensor]:
        time.sleep(0.005)
        return [torch.zeros(1) for _ in encoded]

    def finish(self, encoded: Encoded, latents: torch.Tensor) -> FoleyResult:
        return FoleyResult(torch.zeros(1, 1, 48), 48000, 0.001, 1, None, 0, True)

    def ended(self, result: ItemResult) -> None:
        with self.lock:
            self.in_flight -= 1


@pytest.mark.parametrize("encoders", list(Encoders))
def test_queues_bound_the_items_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          encoders: Encoders) -> None:
    """200 items, two per group, two decoders: at most a decoder's item each, two queued, on
    the GPU's side one waiting for its group and a group denoising (with a denoising thread
    apart: a closed group that the GPU thread is handing over, one handed over and one
    denoising), a group queued for the writer, the one being finished and one per muxing
    thread are ever in flight, whatever the input's length, wherever the features are
    computed."""
    fake = CountingPipe()
    monkeypatch.setattr(stages, "decode_source", fake.decode_source)
    items = [BatchItem(Path(f"clip{k:03d}.mp4")) for k in range(200)]
    report = _report(items, tmp_path)
    options = LocalOptions(batch_rows=4, decode_workers=2, encoders=encoders)
    stats = run_local(fake, report, WAV, options, on_item=fake.ended)  # type: ignore[arg-type]
    assert report.count(Status.DONE) == 200 and sum(stats.groups) == 200
    gpu_side = 2 + 2 + 2 if encoders.denoised_apart else 1 + 2
    assert fake.in_flight == 0
    assert fake.most_in_flight <= 2 + 2 + gpu_side + 2 + 2 + MUXERS


@pytest.mark.parametrize("encoders", [Encoders.BETWEEN, Encoders.AHEAD, Encoders.INTERLEAVED])
def test_when_an_idle_gpu_takes_a_group_while_clips_keep_coming(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoders: Encoders) -> None:
    """Clips come every 20 ms, faster than the GPU thread's 50 ms poll, and denoising takes
    no time. With a denoising thread of its own (ahead, interleaved), the first group goes
    once it has waited `group_wait_s`, not when full (32 clips here), and every later one at
    once. Between (the GPU thread denoises, which holds it), a group goes full or in a lull:
    here, full."""
    fake = CountingPipe()

    def decode_source(path: Path, request: GenerationRequest) -> DecodedClip:
        time.sleep(0.02)
        return fake.decode_source(path, request)

    monkeypatch.setattr(stages, "decode_source", decode_source)
    report = _report([BatchItem(Path(f"clip{k:02d}.mp4")) for k in range(40)], tmp_path)
    options = LocalOptions(batch_rows=64, decode_workers=1, group_wait_s=0.1,
                           encoders=encoders)
    stats = run_local(fake, report, WAV, options, on_item=fake.ended)  # type: ignore[arg-type]
    assert report.count(Status.DONE) == 40 and sum(stats.groups) == 40
    if encoders.denoised_apart:
        # Later groups go as they are: small, unless a loaded host stalls the threads.
        assert 2 <= stats.groups[0] <= 8 and 32 not in stats.groups
    else:
        assert 32 in stats.groups  # [32, 8], unless the decoder stalled past a poll


class HeldPipe(CountingPipe):
    """Encoding takes 10 ms of the calling thread, a group's denoising holds it 100 ms (as
    queueing a group on a GPU holds the host about as long as the GPU runs it); it counts
    the encodings made while a denoising call was held."""

    def __init__(self) -> None:
        super().__init__()
        self.denoising = 0
        self.encoded_meanwhile = 0

    def encode(self, video: Path | DecodedClip, request: GenerationRequest, *,
               wait: bool = True) -> Encoded:
        time.sleep(0.01)
        with self.lock:
            self.encoded_meanwhile += self.denoising > 0
        return super().encode(video, request, wait=wait)

    def denoise(self, encoded: list[Encoded], max_rows: int) -> list[torch.Tensor]:
        with self.lock:
            self.denoising += 1
        time.sleep(0.1)
        with self.lock:
            self.denoising -= 1
        return [torch.zeros(1) for _ in encoded]


def test_encoders_ahead_go_on_while_a_denoising_call_holds_its_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between groups, no clip is encoded while a group's denoising call holds the GPU
    thread; ahead or interleaved, the GPU thread encodes on meanwhile, and the groups grow
    past their first even though an idle GPU takes what waits at once."""
    fake = HeldPipe()
    monkeypatch.setattr(stages, "decode_source", fake.decode_source)
    for encoders in (Encoders.BETWEEN, Encoders.AHEAD, Encoders.INTERLEAVED):
        fake.encoded_meanwhile = 0
        report = _report([BatchItem(Path(f"clip{k:02d}.mp4")) for k in range(48)],
                         tmp_path / encoders.value)
        options = LocalOptions(batch_rows=32, decode_workers=2, group_wait_s=0.05,
                               encoders=encoders)
        stats = run_local(fake, report, WAV, options,  # type: ignore[arg-type]
                          on_item=fake.ended)
        assert report.count(Status.DONE) == 48 and sum(stats.groups) == 48
        if encoders.denoised_apart:
            assert fake.encoded_meanwhile >= 24 and max(stats.groups[1:]) >= 8
        else:
            assert fake.encoded_meanwhile == 0
