"""Decoding limits against media made to exhaust a server (issue 18, item 2; the truncated
MP4 of item 7): each refused before decoding, or stopped while decoding, with one line that
names the limit; and a job's time limit and cancellation reaching into decoding."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from foleyrt.errors import MediaError
from foleyrt.media.synthetic import ClipSpec, encode_clip, png_movie
from foleyrt.media.video import VideoLimits, iter_ticks
from foleyrt.pipeline.pipeline import FoleyPipeline
from tests.server.conftest import Clips, MakeApp
from tests.server.support import (
    SlowPipeline,
    service_of,
    submit_video,
    wait_for,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def test_a_png_bomb_is_refused_before_decoding(client: TestClient, media: Path) -> None:
    # 2.3 MB on disk, 200 MB per decoded frame: the probe itself must not decode one.
    bomb = png_movie(media / "bomb.mov", [(8192, 8192)] * 4)
    started = time.monotonic()
    response = submit_video(client, bomb)
    assert response.status_code == 415, response.text
    assert "8192x8192" in response.json()["detail"] or "cannot be read" in response.json()["detail"]
    assert "pixels per frame" in response.json()["detail"]
    assert time.monotonic() - started < 5
    assert service_of(client).files.folders() == []


def test_frames_larger_than_the_header_stop_the_decode(
    make_app: MakeApp, media: Path
) -> None:
    # The header and the first frames say 64x64; later frames are 8192x8192.
    liar = png_movie(media / "liar.mov", [(64, 64)] * 4 + [(8192, 8192)] * 4)
    with TestClient(make_app()) as client:
        response = submit_video(client, liar)
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"])
    assert job["state"] == "failed"
    assert "cannot be decoded" in job["error"] or "pixels per frame" in job["error"]
    with pytest.raises(MediaError):  # the same, decoding directly
        list(iter_ticks(liar, limits=VideoLimits()))


def test_frame_rate_over_the_limit_is_415(make_app: MakeApp, media: Path) -> None:
    fast = encode_clip(media / "fast.mp4", ClipSpec("libx264", ".mp4", Fraction(120), 1.5))
    with TestClient(make_app(video_limits=VideoLimits(max_fps=60))) as client:
        response = submit_video(client, fast)
    assert response.status_code == 415
    assert response.json()["detail"].endswith("the limit is 60 fps, convert it to a lower "
                                              "frame rate")


def test_decoded_frames_are_counted_against_the_limit(clips: Clips) -> None:
    # 36 frames at 24 fps; 4 fps over 1 s allows 8 (a header claiming fewer would lie).
    with pytest.raises(MediaError, match="more than 8 frames; the limit is 4 fps over 1 s"):
        list(iter_ticks(clips.video, limits=VideoLimits(max_fps=4, max_seconds=1)))


def test_the_longest_video_is_a_setting(make_app: MakeApp, clips: Clips) -> None:
    with TestClient(make_app(video_limits=VideoLimits(max_seconds=1.2))) as client:
        video = submit_video(client, clips.video)  # 1.5 s
        text = client.post("/v1/jobs", data={"prompt": "x", "duration": "2"})
        limits = client.get("/v1/models").json()["limits"]
    assert video.status_code == 422 and "the limit is 1.2 s" in video.json()["detail"]
    assert text.status_code == 422 and "at most 1.2 s" in text.json()["detail"]
    assert limits["max_seconds"] == 1.2 and limits["max_frames"] == 132


def test_an_mp4_cut_short_with_its_index_in_front_is_415(client: TestClient,
                                                          media: Path) -> None:
    whole = encode_clip(media / "whole.mp4", ClipSpec(
        "libx264", ".mp4", Fraction(24), 3.0, size=(320, 240),
        container_options={"movflags": "faststart"}))
    cut = media / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    response = submit_video(client, cut)
    assert response.status_code == 415
    assert "truncated" in response.json()["detail"]


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_time_limit_and_cancel_reach_into_decoding(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, clips: Clips, stop: str
) -> None:
    # Every decoded frame waits 0.1 s: decoding the 36-frame clip would take 3.6 s.
    slow = SlowPipeline(tiny_pipeline, 0.1)
    with TestClient(make_app(slow, job_timeout_s=0.5)) as client:
        job_id = submit_video(client, clips.video).json()["id"]
        job = wait_for(client, job_id, {"running"})
        while job["progress"]["stage"] != "video":
            job = client.get(f"/v1/jobs/{job_id}").json()
        started = time.monotonic()
        if stop == "cancel":
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
        job = wait_for(client, job_id)
        assert time.monotonic() - started < 1.5  # not the 3.6 s a stage-level check takes
    if stop == "timeout":
        assert job["state"] == "failed" and "timed out" in job["error"]
    else:
        assert job["state"] == "cancelled"
