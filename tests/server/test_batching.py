"""The dynamic batcher and the worker pool: queued jobs that fit together are denoised in one
call, each ends on its own (result, cancel, out of memory), and several workers share the one
queue."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.errors import ConfigError
from foleyrt.media.video import VideoLimits
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import GenerationRequest
from foleyrt.server import worker
from foleyrt.server.batching import BatchKey, LengthHints
from foleyrt.server.files import DataDir, new_job_id
from foleyrt.server.schemas import JobParams
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobStore
from foleyrt.server.worker import COMPANION_ENCODERS, OUTPUT_WRITERS
from tests.server.conftest import MakeApp
from tests.server.support import STEPS, SlowPipeline, submit_text, wait_for


class Recording:
    """A pipeline that notes which jobs each `denoise` call held (their seeds) and on which
    thread; `oom_above` jobs per call raise CUDA's out-of-memory error."""

    def __init__(self, pipeline: Any, oom_above: int | None = None) -> None:
        self._pipeline = pipeline
        self.oom_above = oom_above
        self.calls: list[list[int | None]] = []
        self.threads: set[str] = set()

    def denoise(self, encoded: Any, **kwargs: Any) -> Any:
        self.calls.append([e.request.seed for e in encoded])
        self.threads.add(threading.current_thread().name)
        if self.oom_above is not None and len(encoded) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self._pipeline.denoise(encoded, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


def _queue(data_dir: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """Jobs queued in a data directory before the server starts (text-only, by seed)."""
    files = DataDir(data_dir)
    files.open()
    store = JobStore(files.database)
    ids = []
    for fields in jobs:
        params = {"prompt": "rain on a tin roof", "negative_prompt": None, "steps": STEPS,
                  "guidance": 4.5, "samples": 1, "duration": 1.0, "video_name": None, **fields}
        job_id = new_job_id()
        files.create_job_dir(job_id)
        assert store.add(job_id, JobParams(**params).model_dump(mode="json"), max_queued=16)
        ids.append(job_id)
    store.close()
    files.close()
    return ids


def _audio(client: TestClient, job: dict[str, Any], index: int = 0) -> np.ndarray:
    data, _ = soundfile.read(io.BytesIO(client.get(job["outputs"][index]["wav"]).content),
                             dtype="float32")
    return data


@pytest.mark.parametrize("batch_rows, calls", [
    (None, [[1, 2, 5], [3], [4]]),  # the row budget (32 rows on the CPU) holds all that match
    (4, [[1, 5], [2], [3], [4]]),  # job 2's four rows do not fit beside job 1's two
])
def test_queued_jobs_that_match_share_one_denoising(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path,
    batch_rows: int | None, calls: list[list[int]],
) -> None:
    ids = _queue(data_dir, [
        {"seed": 1}, {"seed": 2, "samples": 2}, {"seed": 3, "duration": 2.0},
        {"seed": 4, "steps": STEPS + 1}, {"seed": 5},
    ])
    recording = Recording(tiny_pipeline)
    with TestClient(make_app(recording, batch_rows=batch_rows)) as client:
        jobs = [wait_for(client, job_id) for job_id in ids]
        assert [job["state"] for job in jobs] == ["succeeded"] * 5
        assert recording.calls == calls
        assert [len(job["outputs"]) for job in jobs] == [1, 2, 1, 1, 1]
        # Each job's sound is the one it gets alone, seed and all.
        alone = tiny_pipeline.generate(None, GenerationRequest(
            prompt="rain on a tin roof", steps=STEPS, seed=5, duration=1.0))
        np.testing.assert_allclose(_audio(client, jobs[4]), alone.audio[0, 0].numpy(),
                                   atol=1e-5, rtol=0)
        metrics = client.get("/metrics").text
        assert f"foleyrt_batch_jobs_count {len(calls)}.0" in metrics
        assert "foleyrt_batch_jobs_sum 5.0" in metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_worker_on_the_gpu_named_without_its_index_serves(make_app: MakeApp) -> None:
    """`cuda` is the current GPU: the worker thread makes it its own (`set_device`, which
    refuses a device without an index) and serves, where it used to die at its start."""
    runtime = RuntimeConfig(device="cuda", dtype=torch.bfloat16)
    assert runtime.device == torch.device("cuda", torch.cuda.current_device())
    gpu_pipeline = FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=runtime)
    with TestClient(make_app(gpu_pipeline)) as client:
        job = wait_for(client, submit_text(client).json()["id"])
        assert job["state"] == "succeeded" and client.get("/v1/health").json()["worker_alive"]


class Overlap:
    """Calls that each hold their thread 0.3 s (as decoding or muxing a clip does): how many
    ran at once at most, and the threads that made them, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.threads: list[str] = []

    def slow(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def held(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.threads.append(threading.current_thread().name)
            try:
                time.sleep(0.3)
                return call(*args, **kwargs)
            finally:
                with self.lock:
                    self.running -= 1

        return held


class SlowEncoding(Recording):
    """Each `encode` is slow (`Overlap`)."""

    def __init__(self, pipeline: Any) -> None:
        super().__init__(pipeline)
        self.overlap = Overlap()
        self.encode = self.overlap.slow(pipeline.encode)


def test_companions_are_encoded_at_once_on_encoding_threads(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path
) -> None:
    """The first job is encoded by the worker, its companions on encoding threads as they are
    claimed, all at once, not one after another; the batch still shares one denoising."""
    ids = _queue(data_dir, [{"seed": k} for k in range(1, 6)])
    recording = SlowEncoding(tiny_pipeline)
    with TestClient(make_app(recording)) as client:
        assert [wait_for(client, j)["state"] for j in ids] == ["succeeded"] * 5
    assert recording.calls == [[1, 2, 3, 4, 5]]
    assert recording.overlap.most == COMPANION_ENCODERS == 4
    first, *companions = recording.overlap.threads
    assert first.startswith("foleyrt-worker") and len(companions) == 4
    assert all(name.startswith("foleyrt-encode") for name in companions)


def test_a_batch_is_written_by_writer_threads_at_once(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the batch's one denoising, each job's sound is decoded by the worker and its files
    written on writer threads, several at once; every job ends with its files."""
    ids = _queue(data_dir, [{"seed": k} for k in range(1, 6)])
    writes = Overlap()
    monkeypatch.setattr(worker, "write_outputs", writes.slow(worker.write_outputs))
    recording = Recording(tiny_pipeline)
    with TestClient(make_app(recording)) as client:
        jobs = [wait_for(client, j) for j in ids]
        assert [job["state"] for job in jobs] == ["succeeded"] * 5
        assert all(client.get(job["outputs"][0]["wav"]).status_code == 200 for job in jobs)
    assert recording.calls == [[1, 2, 3, 4, 5]]
    assert writes.most == OUTPUT_WRITERS == 4
    assert all(name.startswith("foleyrt-write") for name in writes.threads)


def test_the_next_batch_denoises_while_the_last_one_is_written(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One job per batch (two rows), each job's files slow to write: the worker denoises the
    next batch while a writer still writes the last one, and every job ends with its files."""
    ids = _queue(data_dir, [{"seed": k} for k in range(1, 4)])
    written: list[float] = []
    write = worker.write_outputs

    def slow_write(*args: Any) -> Any:
        time.sleep(0.5)
        outputs = write(*args)
        written.append(time.monotonic())
        return outputs

    denoised: list[float] = []
    recording = Recording(tiny_pipeline)

    def timed(encoded: Any, **kwargs: Any) -> Any:
        denoised.append(time.monotonic())
        return Recording.denoise(recording, encoded, **kwargs)

    monkeypatch.setattr(worker, "write_outputs", slow_write)
    monkeypatch.setattr(recording, "denoise", timed)
    with TestClient(make_app(recording, batch_rows=2)) as client:
        jobs = [wait_for(client, j) for j in ids]
        assert [job["state"] for job in jobs] == ["succeeded"] * 3
        assert all(client.get(job["outputs"][0]["wav"]).status_code == 200 for job in jobs)
    assert recording.calls == [[1], [2], [3]]
    assert denoised[1] < written[0] and denoised[2] < written[1]


class HeldEncoding(Recording):
    """The encoding of the job of seed `held` waits for `release` before it starts."""

    def __init__(self, pipeline: Any, held: int) -> None:
        super().__init__(pipeline)
        self.held = held
        self.release = threading.Event()

    def encode(self, video: Any, request: GenerationRequest, *args: Any, **kwargs: Any) -> Any:
        if request.seed == self.held:
            assert self.release.wait(30)
        return self._pipeline.encode(video, request, *args, **kwargs)


def test_a_companion_cancelled_while_it_encodes_leaves_the_batch(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path
) -> None:
    """A companion cancelled while an encoding thread encodes it ends there, cancelled, its
    files gone; the batch denoises without it."""
    kept, cancelled = _queue(data_dir, [{"seed": 1}, {"seed": 2}])
    recording = HeldEncoding(tiny_pipeline, held=2)
    with TestClient(make_app(recording)) as client:
        wait_for(client, cancelled, {"running"})  # claimed: its encoding is held
        assert client.delete(f"/v1/jobs/{cancelled}").status_code == 202
        recording.release.set()
        assert wait_for(client, cancelled)["state"] == "cancelled"
        assert wait_for(client, kept)["state"] == "succeeded"
        assert not (data_dir / "jobs" / cancelled).exists()
    assert recording.calls == [[1]]


def test_a_batch_waits_for_companions_up_to_the_batch_wait(make_app: MakeApp,
                                                           tiny_pipeline: FoleyPipeline) -> None:
    recording = Recording(tiny_pipeline)
    with TestClient(make_app(recording, batch_wait_s=2.0)) as client:
        first = submit_text(client, seed=1).json()["id"]  # claimed at once, then waits
        second = submit_text(client, seed=2).json()["id"]
        other = submit_text(client, seed=3, duration=2).json()["id"]  # another length
        assert {wait_for(client, j)["state"] for j in (first, second, other)} == {"succeeded"}
    assert recording.calls == [[1, 2], [3]]


def test_cancelling_one_job_of_a_batch_leaves_the_others_running(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path
) -> None:
    kept, cancelled = _queue(data_dir, [{"seed": 1, "steps": 6}, {"seed": 2, "steps": 6}])
    recording = Recording(SlowPipeline(tiny_pipeline, 0.1))
    with TestClient(make_app(recording)) as client:
        job = wait_for(client, cancelled, {"running"})
        while job["progress"]["stage"] != "denoise":
            job = client.get(f"/v1/jobs/{cancelled}").json()
        assert client.delete(f"/v1/jobs/{cancelled}").status_code == 202
        stopped = wait_for(client, cancelled)
        assert stopped["state"] == "cancelled"
        # It ended at its next step, while its companion still denoises.
        assert client.get(f"/v1/jobs/{kept}").json()["state"] == "running"
        done = wait_for(client, kept)
        assert done["state"] == "succeeded", done["error"]
        assert not (data_dir / "jobs" / cancelled).exists()
    assert recording.calls == [[1, 2]]


class BuggyBudget(Recording):
    """The row budget raises: a bug of the worker's, outside any one job's stages."""

    def max_rows(self, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug")


def test_a_bug_while_a_batch_gathers_fails_its_jobs_and_the_worker_goes_on(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path
) -> None:
    """A job the bug leaves behind fails in plain words (it used to stay running for good),
    and the worker lives on."""
    [job_id] = _queue(data_dir, [{"seed": 1}])
    with TestClient(make_app(BuggyBudget(tiny_pipeline))) as client:
        job = wait_for(client, job_id)
        assert job["state"] == "failed"
        assert job["error"] == "internal error (RuntimeError); see the server log"
        assert client.get("/v1/health").json()["worker_alive"]


@dataclasses.dataclass(frozen=True)
class FastEncoders(RuntimeConfig):
    """A CPU runtime with the accelerated modes' fast encoders (those need CUDA)."""

    @property
    def fast_encoders(self) -> bool:
        return True


def test_the_encoders_precision_is_held_while_the_workers_run(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline
) -> None:
    """TF32 is set once for the workers' life, not switched by each encoding: a compiled
    block's guards check it, and a switch while another thread captures a graph failed that
    batch (run BM, on an H100)."""
    seen: list[str] = []
    recording = Recording(tiny_pipeline)

    def denoise(encoded: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_float32_matmul_precision())
        return Recording.denoise(recording, encoded, **kwargs)

    recording.denoise = denoise  # type: ignore[method-assign]
    before = torch.get_float32_matmul_precision()
    with TestClient(make_app(recording, runtime=FastEncoders())) as client:
        assert wait_for(client, submit_text(client).json()["id"])["state"] == "succeeded"
    assert seen == ["high"] and torch.get_float32_matmul_precision() == before == "highest"


def test_a_batch_out_of_memory_is_retried_one_job_at_a_time(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path
) -> None:
    ids = _queue(data_dir, [{"seed": 1}, {"seed": 2}])
    recording = Recording(tiny_pipeline, oom_above=1)
    with TestClient(make_app(recording)) as client:
        assert [wait_for(client, j)["state"] for j in ids] == ["succeeded"] * 2
    assert recording.calls == [[1, 2], [1], [2]]


@pytest.fixture(scope="module")
def second_pipeline() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cpu"))


def test_one_worker_per_device_share_the_queue(
    make_settings: Any, tiny_pipeline: FoleyPipeline, second_pipeline: FoleyPipeline,
    data_dir: Path,
) -> None:
    from foleyrt.server.app import create_app

    # Two lengths: no batch holds both, so each worker takes one.
    ids = _queue(data_dir, [{"seed": 1}, {"seed": 2, "duration": 2.0}])
    workers = [Recording(SlowPipeline(p, 0.2)) for p in (tiny_pipeline, second_pipeline)]
    cpu = torch.device("cpu")
    settings = make_settings(devices=(cpu, cpu))
    with TestClient(create_app(settings, workers)) as client:
        assert [wait_for(client, j)["state"] for j in ids] == ["succeeded"] * 2
        assert client.get("/v1/models").json()["models"][0]["devices"] == ["cpu", "cpu"]
        assert client.get("/v1/health").json()["worker_alive"]
    assert [len(w.calls) for w in workers] == [1, 1]
    assert {t for w in workers for t in w.threads} == {"foleyrt-worker-0", "foleyrt-worker-1"}


def test_batch_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch rows"):
        ServerSettings(data_dir=tmp_path, batch_rows=0)
    with pytest.raises(ConfigError, match="batch wait must be between 0 and 10000 ms"):
        ServerSettings(data_dir=tmp_path, batch_wait_s=11)
    gpu = torch.device("cuda:0")
    with pytest.raises(ConfigError, match="listed twice"):
        ServerSettings(data_dir=tmp_path, devices=(gpu, gpu))
    cpu = torch.device("cpu")
    runtimes = ServerSettings(data_dir=tmp_path, devices=(cpu, cpu)).runtimes
    assert [r.device for r in runtimes] == [cpu, cpu]


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0,x"], "--gpus takes GPU numbers separated by commas"),
    (["--gpus", "0", "--device", "cpu"], "drop --device cpu"),
    (["--gpus", "0,1"] if not torch.cuda.is_available() else ["--gpus", "0,99"],
     "requested but"),
])
def test_gpus_option_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         args: list[str], message: str) -> None:
    from foleyrt.cli import main

    code = main(["-q", "serve", "--model", TINY_RANDOM, "--data-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_a_queued_job_s_length_hint_is_the_key_its_encoding_gets(tmp_path: Path) -> None:
    """The hint read from a queued job's parameters is `BatchKey.of_encoded` of the job once
    encoded: for a long duration, its windows' length, so long jobs find companions too."""
    jobs = [{"seed": 1, "duration": 3.0}, {"seed": 2, "duration": 30.0},
            {"seed": 3, "duration": 18.0, "window": 6.0, "overlap": 1.0}]
    _queue(tmp_path, jobs)
    files = DataDir(tmp_path)
    files.open()
    store = JobStore(files.database)
    try:
        queued = store.queued()
        hints = LengthHints(files, VideoLimits()).keys(queued)
    finally:
        store.close()
        files.close()
    pipe = FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig())
    encoded = [pipe.encode(None, JobParams.of(job).generation_request()) for job in queued]
    assert hints == [BatchKey.of_encoded(e) for e in encoded]
    assert [e.windowed for e in encoded] == [False, True, True]
