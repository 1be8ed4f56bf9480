"""The HTTP surface (issue 18, items 4 and 7 and the operations list): one-line refusals that
echo nothing big, methods and headers, idempotent submission, the job list, readiness,
metrics, request ids, security headers and the same-site checks of a server without token."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi.testclient import TestClient

from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.logs import RequestIdFilter
from tests.server.conftest import Clips, MakeApp
from tests.server.support import (
    SlowPipeline,
    service_of,
    submit_text,
    submit_video,
    wait_for,
)

MISSING = "00000000-0000-4000-8000-000000000000"


# ---- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, files, expected", [
    ({"steps": "abc"}, None, ("steps: input should be a valid integer, unable to parse "
                              "string as an integer")),
    ({"seed": "-1"}, None, "seed: input should be greater than or equal to 0"),
    ({"guidance": "1e9"}, None, "guidance: input should be less than or equal to 100"),
    ({"prompt": "x" * 100_000}, None, "prompt: string should have at most 1000 characters"),
    ({}, {"notes": ("a.txt", b"hello", "text/plain")}, "unknown field 'notes'"),
    ({"x" * 5000: "1"}, None, "unknown field '" + "x" * 40 + "...'"),
    ({"prompt": "rain\x00drop"}, None, ("prompt contains a control character (U+0000); send "
                                         "plain text")),
    ({"video": "clip.mp4"}, None, ("video: send the clip as a file (a part with a filename), "
                                   "not as text")),
])
def test_parameter_errors_are_one_line_without_the_input(
    client: TestClient, fields: dict[str, str], files: object, expected: str
) -> None:
    response = client.post("/v1/jobs", data={"duration": "2", **fields}, files=files)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail == expected
    for leaked in ("SpooledTemporaryFile", "/tmp", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"):
        assert leaked not in detail


def test_a_long_id_is_not_echoed(client: TestClient) -> None:
    response = client.get(f"/v1/jobs/{'a' * 5000}")
    assert response.status_code == 404 and len(response.text) < 200
    assert client.get(f"/v1/jobs/{MISSING}").json()["detail"] == f"no job '{MISSING}'"


def test_unknown_api_paths_and_sample_numbers_say_so_briefly(client: TestClient) -> None:
    job = wait_for(client, submit_text(client).json()["id"])
    huge = client.get(f"/v1/jobs/{job['id']}/outputs/{'9' * 4000}.wav")
    assert huge.status_code == 404 and len(huge.text) < 200
    assert huge.json()["detail"].endswith("has 1 sample(s), numbered 0 to 0")
    slash = client.post("/v1/jobs/", data={"prompt": "x", "duration": "2"})
    assert slash.status_code == 404
    assert slash.json()["detail"] == "no API path /v1/jobs/; use /v1/jobs (no trailing slash)"
    assert client.get("/v1/nothing").json()["detail"] == ("no API path /v1/nothing; the API is "
                                                          "listed at /docs")
    assert client.get(f"/v1/{'a' * 5000}").json()["detail"] == ("no API path; the API is "
                                                                "listed at /docs")
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1  # the POST above made no job


def test_downloads_serve_ranges_and_ignore_unreadable_ones(client: TestClient) -> None:
    """RFC 9110: a Range the server cannot read is ignored (the whole file); one past the end
    is 416, here with the API's one-line detail."""
    job = wait_for(client, submit_text(client).json()["id"])
    url = job["outputs"][0]["wav"]
    whole = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole[4:12]
    for unreadable in ("bytes=abc", "bytes=9-2", "items=0-1", "bytes"):
        ignored = client.get(url, headers={"Range": unreadable})
        assert ignored.status_code == 200 and ignored.content == whole, unreadable
    past = client.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"
    assert past.json()["detail"] == (f"the range starts past the end of the file ({len(whole)} "
                                     "bytes)")


def test_two_video_parts_are_refused(client: TestClient, clips: Clips) -> None:
    video = clips.video.read_bytes()
    response = client.post("/v1/jobs", data={"prompt": "x"},
                           files=[("video", ("a.mp4", video)), ("video", ("b.mp4", video))])
    assert response.status_code == 422
    assert response.json()["detail"] == ("field 'video' was sent 2 times; send each field "
                                         "once")
    assert service_of(client).files.folders() == []


def test_a_succeeded_job_whose_files_are_gone_is_410(client: TestClient) -> None:
    job = wait_for(client, submit_text(client).json()["id"])
    for path in service_of(client).files.job_dir(job["id"]).iterdir():
        path.unlink()
    gone = client.get(job["outputs"][0]["wav"])
    assert gone.status_code == 410 and "no longer on the server" in gone.json()["detail"]


def test_a_cut_short_or_unformed_body_is_400_and_makes_no_job(client: TestClient) -> None:
    """A multipart body without its closing boundary would lose its last field to the form
    parser (here the seed): refused, as is a body that is not a form."""
    head = "multipart/form-data; boundary=B"
    fields = (b'--B\r\nContent-Disposition: form-data; name="duration"\r\n\r\n2\r\n'
              b'--B\r\nContent-Disposition: form-data; name="seed"\r\n\r\n42')
    cut = client.post("/v1/jobs", content=fields, headers={"Content-Type": head})
    assert cut.status_code == 400 and "without its closing boundary" in cut.json()["detail"]
    assert cut.headers["connection"] == "close"
    whole = client.post("/v1/jobs", content=fields + b"\r\n--B--\r\n",
                        headers={"Content-Type": head})
    assert whole.status_code == 202 and whole.json()["params"]["seed"] == 42
    wait_for(client, whole.json()["id"])
    empty = client.post("/v1/jobs", content=b"", headers={"Content-Type": head})
    assert (empty.status_code, empty.json()["detail"]) == (400, "the body is empty; send the "
                                                                "job as a multipart form")
    as_json = client.post("/v1/jobs", json={"duration": 2})
    assert as_json.status_code == 400
    assert as_json.json()["detail"] == ("send the job as a multipart form (Content-Type: "
                                        "multipart/form-data); got 'application/json'")
    assert len(service_of(client).files.folders()) == 1


# ---- methods ---------------------------------------------------------------------------------


def test_head_options_and_allow(client: TestClient) -> None:
    job = wait_for(client, submit_text(client).json()["id"])
    wav = job["outputs"][0]["wav"]
    head = client.head(wav)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(client.get(wav).content)
    for path in ("/v1/health", "/metrics", f"/v1/jobs/{job['id']}", "/docs"):
        get, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head(f"/v1/jobs/{MISSING}").status_code == 404
    assert client.options("/v1/jobs").headers["allow"] == "GET, HEAD, OPTIONS, POST"
    options = client.options(f"/v1/jobs/{job['id']}")
    assert options.status_code == 204
    assert options.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"
    put = client.put(f"/v1/jobs/{job['id']}")
    assert put.status_code == 405 and put.headers["allow"] == "DELETE, GET, HEAD, OPTIONS"
    assert put.json()["detail"] == "PUT is not allowed here; use DELETE, GET, HEAD, OPTIONS"
    assert client.options("/").headers["allow"] == "GET, HEAD, OPTIONS"


# ---- submission: idempotency and the list ----------------------------------------------------


def test_idempotency_key_makes_retries_safe(client: TestClient, clips: Clips) -> None:
    key = {"Idempotency-Key": "retry-7f3a"}
    first = submit_video(client, clips.video, seed="3", headers=key)
    again = submit_video(client, clips.video, seed="3", headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    other = submit_video(client, clips.video, seed="4", headers=key)
    assert other.status_code == 409 and first.json()["id"] in other.json()["detail"]
    bad = submit_text(client, headers={"Idempotency-Key": "k" * 300})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1
    assert len(service_of(client).files.folders()) == 1


def test_jobs_are_listed_newest_first_a_page_at_a_time(client: TestClient) -> None:
    ids = [submit_text(client, seed=k).json()["id"] for k in range(5)]
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["jobs"]] == ids[:-3:-1]
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/v1/jobs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [j["id"] for j in second["jobs"] + third["jobs"]] == ids[2::-1]
    assert third["next_cursor"] is None
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    for job_id in ids:
        wait_for(client, job_id)


# ---- the published schema --------------------------------------------------------------------


def test_schema_states_the_servers_limits_and_error_shape(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    form = spec["components"]["schemas"]["JobRequest"]
    assert form["properties"]["samples"]["maximum"] == 6
    assert {"type": "number", "minimum": 1.0, "maximum": 600.0}.items() <= next(
        o for o in form["properties"]["duration"]["anyOf"] if o.get("type") == "number").items()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    post = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert post["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


def test_docs_page_needs_nothing_from_outside(client: TestClient) -> None:
    page = client.get("/docs").text
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert all(s.startswith(("/", "data:")) for s in scripts), scripts
    assert "<script>" not in page  # nothing inline: the CSP would block it
    for asset in scripts:
        if asset.startswith("/"):
            assert client.get(asset).status_code == 200, asset


# ---- operations ------------------------------------------------------------------------------


def test_ready_says_which_check_fails(make_app: MakeApp, tiny_pipeline: FoleyPipeline) -> None:
    with TestClient(make_app(SlowPipeline(tiny_pipeline, 0.3), max_queue=1)) as client:
        assert client.get("/v1/ready").json() == {"ready": True, "checks": {
            "models_loaded": True, "worker_alive": True, "accepting": True,
            "queue_has_room": True, "disk_space": True}}
        running = submit_text(client).json()["id"]
        wait_for(client, running, {"running"})
        queued = submit_text(client).json()["id"]
        busy = client.get("/v1/ready")
        assert busy.status_code == 503 and busy.json()["checks"]["queue_has_room"] is False
        assert client.get("/v1/health").status_code == 200  # alive all the same
        for job_id in (queued, running):
            client.delete(f"/v1/jobs/{job_id}")
            wait_for(client, job_id)


def test_metrics_in_prometheus_format(client: TestClient) -> None:
    wait_for(client, submit_text(client).json()["id"])
    client.post("/v1/jobs", data={"steps": "0", "duration": "1"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('foleyrt_jobs{state="succeeded"} 1.0', "foleyrt_queue_depth 0.0",
                 'foleyrt_job_duration_seconds_count{outcome="succeeded"} 1.0',
                 'foleyrt_stage_duration_seconds_count{stage="denoise"} 1.0',
                 'foleyrt_rejected_requests_total{reason="invalid_input"} 1.0',
                 "# TYPE foleyrt_gpu_memory_bytes gauge"):
        assert line in text, line


def test_request_ids_in_responses_and_logs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="foleyrt.server"):
        response = submit_text(client, headers={"X-Request-ID": "client-42"})
    assert response.headers["x-request-id"] == "client-42"
    queued = [r for r in caplog.records if r.getMessage().endswith(" queued")]
    assert [r.request_id for r in queued] == ["client-42"]  # type: ignore[attr-defined]
    made = client.get("/v1/health", headers={"X-Request-ID": "bad id; <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    wait_for(client, response.json()["id"])


def test_security_headers(client: TestClient) -> None:
    for path in ("/", "/v1/health", "/docs", "/v1/jobs/x"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src 'self'" in headers["content-security-policy"]


def test_without_a_token_other_sites_are_kept_out(make_app: MakeApp) -> None:
    with TestClient(make_app(allowed_hosts=())) as client:
        rebound = client.get("/v1/health", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and "localhost" in rebound.json()["detail"]
        assert client.get("/", headers={"Host": "localhost:7860"}).status_code == 200
        client.headers["Host"] = "127.0.0.1:7860"
        assert client.get("/v1/health").status_code == 200
        cross = submit_text(client, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403 and "other web sites" in cross.json()["detail"]
        fetch = submit_text(client, headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403
        own = submit_text(client, headers={"Origin": "http://127.0.0.1:7860"})
        assert own.status_code == 202
        wait_for(client, own.json()["id"])
    with TestClient(make_app(allowed_hosts=(), api_token="s3cret")) as client:
        client.headers["Authorization"] = "Bearer s3cret"
        assert client.get("/v1/health", headers={"Host": "foley.example"}).status_code == 200
