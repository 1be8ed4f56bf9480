"""The HTTP API against the real tiny-random pipeline: every status code it promises."""

from __future__ import annotations

import io
from typing import Any

import av
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient
from PIL import Image

from foleyrt.pipeline.pipeline import FoleyPipeline
from tests.server.conftest import Clips, MakeApp
from tests.server.support import (
    FINAL,
    STEPS,
    SlowPipeline,
    service_of,
    submit_text,
    submit_video,
    wait_for,
)


def _job_dirs(client: TestClient) -> list[str]:
    return sorted(p.name for p in service_of(client).files.jobs.iterdir())


# ---- service documents -------------------------------------------------------------------


def test_health_is_open_and_reports_the_queue(client: TestClient) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["worker_alive"]
    assert (body["queued"], body["running"], body["auth_required"]) == (0, 0, False)


def test_models_reports_the_loaded_model_defaults_and_limits(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    (model,) = body["models"]
    assert model["id"] == "tiny-random" and model["random_weights"]
    assert model["sample_rate"] == 48000
    assert body["defaults"]["steps"] == STEPS
    assert body["limits"]["max_seconds"] == 600  # ten minutes, in windows


def test_openapi_docs_and_ui_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    assert client.get("/app.js").status_code == 200


# ---- jobs that work ----------------------------------------------------------------------


def test_video_job_gives_mp4_wav_and_spectrogram(client: TestClient, clips: Clips) -> None:
    response = submit_video(client, clips.video, seed="7")
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.json()["state"] == "queued"

    job = wait_for(client, job_id)
    assert job["state"] == "succeeded", job["error"]
    assert job["params"]["seed"] == 7 and job["params"]["video_name"] == "clip.mp4"
    assert job["expires_at"] is not None
    (output,) = job["outputs"]

    mp4 = client.get(output["mp4"])
    assert mp4.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(mp4.content)) as container:
        assert container.streams.video and container.streams.audio[0].rate == 48000
    wav = client.get(output["wav"])
    assert soundfile.info(io.BytesIO(wav.content)).samplerate == 48000
    assert Image.open(io.BytesIO(client.get(output["spectrogram"]).content)).format == "PNG"
    # The upload is dropped once the MP4s hold its picture.
    assert not (service_of(client).files.input_path(job_id)).exists()


def test_text_only_job_has_wav_but_no_mp4(client: TestClient) -> None:
    job = wait_for(client, submit_text(client).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    (output,) = job["outputs"]
    assert output["mp4"] is None
    info = soundfile.info(io.BytesIO(client.get(output["wav"]).content))
    assert (info.samplerate, round(info.duration, 2)) == (48000, 1.0)
    missing = client.get(f"/v1/jobs/{job['id']}/outputs/0.mp4")
    assert missing.status_code == 404 and "text-only" in missing.json()["detail"]


def test_several_samples_are_numbered_from_zero(client: TestClient) -> None:
    job = wait_for(client, submit_text(client, samples=2).json()["id"])
    assert [o["index"] for o in job["outputs"]] == [0, 1]
    assert client.get(job["outputs"][1]["wav"]).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}/outputs/2.wav").status_code == 404


def test_unknown_job_is_404(client: TestClient) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    assert client.get(f"/v1/jobs/{missing}").status_code == 404
    assert client.delete(f"/v1/jobs/{missing}").status_code == 404
    assert client.get(f"/v1/jobs/{missing}/outputs/0.wav").status_code == 404
    assert client.get("/v1/jobs/../../etc/passwd").status_code == 404


# ---- uploads refused -----------------------------------------------------------------------


def test_upload_over_the_limit_is_413(make_app: MakeApp, clips: Clips) -> None:
    with TestClient(make_app(max_upload_bytes=1000)) as client:
        big = b"\0" * 200_000
        announced = client.post("/v1/jobs", data={"prompt": "x"},
                                files={"video": ("big.mp4", big, "video/mp4")})
        assert announced.status_code == 413 and "limit" in announced.json()["detail"]

        def chunks():  # no Content-Length: counted while it streams
            yield from (big[i:i + 10_000] for i in range(0, len(big), 10_000))

        streamed = client.post("/v1/jobs", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
        # within the door's room for form fields, but the video itself is over the limit
        just_over = client.post("/v1/jobs", data={"prompt": "x"},
                                files={"video": ("a.mp4", big[:1001], "video/mp4")})
        assert just_over.status_code == 413 and "limit" in just_over.json()["detail"]
        assert _job_dirs(client) == []


@pytest.mark.parametrize("kind", ["text", "image"])
def test_content_is_sniffed_not_the_name_415(client: TestClient, clips: Clips, kind: str) -> None:
    response = submit_video(client, getattr(clips, kind), name="holiday.mp4")
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "'holiday.mp4'" in detail and "jobs/" not in detail  # no server path leaks
    assert _job_dirs(client) == []


def test_clip_too_short_is_422(client: TestClient, clips: Clips) -> None:
    response = submit_video(client, clips.short)
    assert response.status_code == 422
    assert "at least 1 s" in response.json()["detail"]
    assert _job_dirs(client) == []


@pytest.mark.parametrize("fields, message", [
    ({"steps": "0"}, "greater than or equal to 1"),
    ({"stepz": "3"}, "unknown field 'stepz'"),
    ({"duration": ""}, "give a duration"),
    ({"samples": "17"}, "at most 6 on this server"),
    ({"duration": "601"}, "at most 600 s on this server"),
    ({"window": "16"}, "less than or equal to 15"),
    ({"window": "4", "overlap": "3.5"}, "overlap must be between 0 and the window less 1 s"),
])
def test_bad_parameters_are_422(client: TestClient, fields: dict[str, str],
                                message: str) -> None:
    response = client.post("/v1/jobs", data={"prompt": "x", "duration": "2", **fields})
    assert response.status_code == 422
    assert message in str(response.json()["detail"])


def test_video_with_duration_is_422(client: TestClient, clips: Clips) -> None:
    response = submit_video(client, clips.video, duration="3")
    assert response.status_code == 422 and "text-only" in response.json()["detail"]


def test_samples_over_the_server_limit_are_422(make_app: MakeApp) -> None:
    with TestClient(make_app(max_samples=2)) as client:
        response = submit_text(client, samples=3)
        assert response.status_code == 422 and "at most 2" in response.json()["detail"]


# ---- queue, cancellation, limits -----------------------------------------------------------


def test_full_queue_429_then_cancel_queued_200_and_running_202(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline
) -> None:
    with TestClient(make_app(SlowPipeline(tiny_pipeline, 0.5), max_queue=1)) as client:
        running = submit_text(client).json()["id"]
        wait_for(client, running, {"running"})
        queued = submit_text(client).json()["id"]
        assert client.get(f"/v1/jobs/{queued}").json()["queue_position"] == 1

        full = submit_text(client)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        assert "queue is full" in full.json()["detail"]

        cancelled = client.delete(f"/v1/jobs/{queued}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        stopping = client.delete(f"/v1/jobs/{running}")
        assert stopping.status_code == 202 and stopping.json()["state"] == "running"
        assert wait_for(client, running)["state"] == "cancelled"
        assert _job_dirs(client) == []


def test_a_cancel_while_the_files_are_written_ends_the_job_cancelled(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answered 202 ("stops at its next step"), a cancel that came while the job's sound
    was decoded or written used to be dropped: the job succeeded."""
    from foleyrt.server import worker

    service = service_of(client)

    def cancelled_meanwhile(result: Any, job_dir: Any) -> Any:
        assert service.cancel(job_dir.name).state.value == "running"
        return write_outputs(result, job_dir)

    write_outputs = worker.write_outputs
    monkeypatch.setattr(worker, "write_outputs", cancelled_meanwhile)
    job = wait_for(client, submit_text(client).json()["id"])
    assert job["state"] == "cancelled" and job["outputs"] == []
    assert _job_dirs(client) == []


def test_ended_job_cannot_be_cancelled_409_nor_give_outputs(client: TestClient) -> None:
    job_id = submit_text(client).json()["id"]
    wait_for(client, job_id)
    conflict = client.delete(f"/v1/jobs/{job_id}")
    assert conflict.status_code == 409 and "succeeded" in conflict.json()["detail"]


def test_outputs_before_the_end_are_409(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline
) -> None:
    with TestClient(make_app(SlowPipeline(tiny_pipeline, 0.2))) as client:
        job_id = submit_text(client).json()["id"]
        early = client.get(f"/v1/jobs/{job_id}/outputs/0.wav")
        assert early.status_code == 409
        client.delete(f"/v1/jobs/{job_id}")
        wait_for(client, job_id)


def test_progress_reports_denoising_steps(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline
) -> None:
    with TestClient(make_app(SlowPipeline(tiny_pipeline, 0.15))) as client:
        job_id = submit_text(client, steps=4).json()["id"]
        seen = set()
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in FINAL:
            progress = job["progress"]
            seen.add((progress["stage"], progress["step"], progress["total"]))
        assert job["state"] == "succeeded", job["error"]
        assert {("denoise", k, 4) for k in (1, 2, 3)} <= seen


def test_job_over_its_time_limit_fails(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline
) -> None:
    with TestClient(make_app(SlowPipeline(tiny_pipeline, 0.1), job_timeout_s=0.25)) as client:
        job = wait_for(client, submit_text(client).json()["id"])
        assert job["state"] == "failed" and "timed out" in job["error"]
        assert _job_dirs(client) == []


@pytest.mark.parametrize("error, message", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
     "ran out of memory"),
    (RuntimeError("something broke"), "internal error (RuntimeError)"),
])
def test_a_failing_job_fails_alone_and_the_worker_carries_on(
    client: TestClient, tiny_pipeline: FoleyPipeline, monkeypatch: pytest.MonkeyPatch,
    error: Exception, message: str,
) -> None:
    real = type(tiny_pipeline).denoise
    calls = []

    def fails_once(self: FoleyPipeline, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipeline), "denoise", fails_once)
    first = wait_for(client, submit_text(client).json()["id"])
    second = wait_for(client, submit_text(client).json()["id"])
    assert first["state"] == "failed" and message in first["error"]
    assert second["state"] == "succeeded", second["error"]
    assert client.get("/v1/health").json()["worker_alive"]


# ---- bearer token --------------------------------------------------------------------------


def test_token_guards_v1_but_not_health_or_the_page(make_app: MakeApp) -> None:
    with TestClient(make_app(api_token="s3cret")) as client:
        assert client.get("/v1/health").json()["auth_required"] is True
        assert client.get("/").status_code == 200
        refused = client.get("/v1/models")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/v1/models", headers=wrong).status_code == 401
        assert submit_text(client).status_code == 401
        assert client.get("/v1/jobs/x").status_code == 401

        client.headers["Authorization"] = "Bearer s3cret"
        job = wait_for(client, submit_text(client).json()["id"])
        assert client.get(job["outputs"][0]["wav"]).status_code == 200
