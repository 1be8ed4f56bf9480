"""`foleyrt ray-serve` on a local Ray (CPU, the tiny model): requests answered with their
sound, concurrent ones batched, refusals in one line, a clean stop on SIGTERM."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import soundfile

pytest.importorskip("ray.serve", reason="the Ray Serve deployment needs the 'ray-serve' extra")

import foleyrt
from foleyrt.config import TINY_RANDOM
from tests.server.conftest import Clips

SRC = Path(foleyrt.__file__).parents[1]
TEXT = {"prompt": "rain on a tin roof", "duration": "1", "steps": "2"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`foleyrt ray-serve` running (a local Ray, one CPU replica); stopped by SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("ray") / "ray-serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(SRC), os.environ.get("PYTHONPATH")]))}
    # The first request of a batch waits a second for the others sent with it.
    command = [sys.executable, "-m", "foleyrt.cli", "ray-serve", "--model", TINY_RANDOM,
               "--device", "cpu", "--gpus-per-replica", "0", "--port", str(port), "--steps",
               "2", "--batch-wait-ms", "1000"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _healthy(address):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"foleyrt ray-serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        assert code == 0, log.read_text()[-3000:]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _post(url: str, data: dict[str, str], video: bytes | None = None) -> httpx.Response:
    files = {"video": ("clip.mp4", video, "video/mp4")} if video is not None else None
    return httpx.post(f"{url}/v1/generate", data=data, files=files, timeout=120)


def test_text_and_video_requests_are_batched_and_answered(url: str, clips: Clips) -> None:
    video = clips.video.read_bytes()
    jobs = [(dict(TEXT, seed="1"), None), (dict(TEXT, seed="2"), None),
            ({"prompt": "footsteps", "steps": "2", "seed": "3"}, video)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: _post(url, *job), jobs))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "audio/wav"
    text, again, clip = (soundfile.read(io.BytesIO(a.content)) for a in answers)
    assert text[1] == clip[1] == 48000
    assert len(text[0]) == 48000 and abs(len(clip[0]) - 1.5 * 48000) <= 960
    assert answers[0].headers["x-seed"] == "1"
    assert int(answers[0].headers["x-batch-requests"]) == 3  # all three in one batch
    assert not (text[0] == again[0]).all()  # seeds stay per request

    mp4 = _post(url, {"prompt": "footsteps", "steps": "2", "format": "mp4"}, video)
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"


@pytest.mark.parametrize("data, video, status, message", [
    ({"prompt": "x", "steps": "2"}, None, 422, "needs a duration"),
    (dict(TEXT, samples="2"), None, 422, "samples"),
    (dict(TEXT, format="mp4"), None, 422, "format mp4 needs a video"),
    (dict(TEXT, duration="700"), None, 422, "duration must be between 1 and 600 s"),
    (dict(TEXT, overlap="9.5"), None, 422, "overlap must be between 0 and the window less 1"),
    ({"prompt": "x"}, b"not a video" * 100, 415, "uploaded file 'clip.mp4'"),
])
def test_bad_requests_are_refused_in_one_line(url: str, data: dict[str, str],
                                              video: bytes | None, status: int,
                                              message: str) -> None:
    answer = _post(url, data, video)
    assert answer.status_code == status
    detail = answer.json()["detail"]
    assert message in detail and "\n" not in detail and "/tmp" not in detail


def test_health_names_the_replica(url: str) -> None:
    body = httpx.get(f"{url}/v1/health", timeout=30).json()
    assert body["status"] == "ok" and body["model"] == TINY_RANDOM and body["device"] == "cpu"


def test_a_batch_of_no_rows_is_refused_before_ray_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    from foleyrt.cli import main

    assert main(["-q", "ray-serve", "--model", TINY_RANDOM, "--batch-rows", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "batch rows must be at least 2" in err and len(err.splitlines()) == 1
