"""Video jobs' clips decoded in processes ahead of their claim (`--decode-in processes`): the
same sounds as a worker decoding each clip itself, decoded while the job before runs, and
dropped when a queued job is cancelled. Real decoding processes, a real server app."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from foleyrt.batch import DecodeIn
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.prefetch import ClipPrefetch
from foleyrt.server.schemas import JobParams
from foleyrt.server.store import JobRecord
from tests.server.conftest import Clips, MakeApp
from tests.server.support import SlowPipeline, service_of, submit_text, submit_video, wait_for


def _prefetch(client: TestClient) -> ClipPrefetch:
    clips = service_of(client).worker.clips
    assert clips is not None
    return clips


def _sound(client: TestClient, job_id: str) -> np.ndarray:
    """Sample 0's samples (not its bytes: the WAV's PEAK chunk carries the time it was
    written)."""
    response = client.get(f"/v1/jobs/{job_id}/outputs/0.wav")
    assert response.status_code == 200, response.text
    samples, _ = sf.read(io.BytesIO(response.content), dtype="float32")
    return samples


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_queued_clip_is_decoded_while_the_job_before_runs_with_the_same_sound(
        make_app: MakeApp, tiny_pipeline: FoleyPipeline, clips: Clips) -> None:
    with TestClient(make_app(decode_in=DecodeIn.THREADS)) as client:
        alone = submit_video(client, clips.video, seed="7").json()["id"]
        assert wait_for(client, alone)["state"] == "succeeded"
        expected = _sound(client, alone)
    slow = SlowPipeline(tiny_pipeline, delay_s=0.3)
    with TestClient(make_app(slow, decode_in=DecodeIn.PROCESSES, decode_workers=1)) as client:
        first = submit_video(client, clips.video, seed="1").json()["id"]
        wait_for(client, first, {"running"})
        second = submit_video(client, clips.video, seed="7").json()["id"]
        prefetch = _prefetch(client)
        _until(lambda: second in prefetch.held(), "the queued clip's decoding never started")
        assert client.get(f"/v1/jobs/{second}").json()["state"] == "queued"
        taken = prefetch.taken_ahead
        assert wait_for(client, second)["state"] == "succeeded"
        assert prefetch.taken_ahead == taken + 1 and second not in prefetch.held()
        # Decoded in a process, ahead: the sound of the clip the worker decoded itself, up to
        # float32 rounding (it may have joined the first job's batch: batched results are
        # one-at-a-time ones within 1e-5).
        np.testing.assert_allclose(_sound(client, second), expected, rtol=0, atol=1e-5)


def test_a_cancelled_queued_job_s_clip_is_dropped(
        make_app: MakeApp, tiny_pipeline: FoleyPipeline, clips: Clips) -> None:
    slow = SlowPipeline(tiny_pipeline, delay_s=0.3)
    with TestClient(make_app(slow, decode_in=DecodeIn.PROCESSES, decode_workers=1)) as client:
        first = submit_video(client, clips.video).json()["id"]
        wait_for(client, first, {"running"})
        queued = submit_video(client, clips.video).json()["id"]
        prefetch = _prefetch(client)
        _until(lambda: queued in prefetch.held(), "the queued clip's decoding never started")
        assert client.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
        later = submit_video(client, clips.video).json()["id"]  # queuing looks ahead again
        assert queued not in prefetch.held() and later in prefetch.held()
        client.delete(f"/v1/jobs/{first}")
        assert wait_for(client, later)["state"] == "succeeded"


def test_a_batch_does_not_wait_for_a_companion_still_decoding(
        make_app: MakeApp, tiny_pipeline: FoleyPipeline, clips: Clips,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two queued jobs that would share a batch, the second's clip still decoding (held
    back here until the first has ended): the first runs alone rather than holding the GPU
    for the second's frames, and the second runs once they come."""
    release = threading.Event()
    slow = SlowPipeline(tiny_pipeline, delay_s=0.3)
    with TestClient(make_app(slow, decode_in=DecodeIn.PROCESSES, decode_workers=2)) as client:
        prefetch = _prefetch(client)
        decode = prefetch._decode

        def held_back(record: JobRecord) -> object:
            if JobParams.of(record).seed == 2:
                release.wait(120)  # past `wait_for`'s 60 s: a batch waiting fails
            return decode(record)

        monkeypatch.setattr(prefetch, "_decode", held_back)
        busy = submit_text(client).json()["id"]  # holds the worker while both are queued
        wait_for(client, busy, {"running"})
        first = submit_video(client, clips.video, seed="1").json()["id"]
        second = submit_video(client, clips.video, seed="2").json()["id"]
        _until(lambda: {first, second} <= prefetch.held(), "the clips' decoding never started")
        assert wait_for(client, first)["state"] == "succeeded"
        # Now the oldest, it may be claimed: it waits alone for its frames.
        assert client.get(f"/v1/jobs/{second}").json()["state"] in ("queued", "running")
        release.set()
        assert wait_for(client, second)["state"] == "succeeded"
        metrics = client.get("/metrics").text.splitlines()
        assert "foleyrt_batch_jobs_count 3.0" in metrics  # each job a batch of its own
