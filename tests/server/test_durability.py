"""What survives a restart, what a crash leaves behind, and what expires."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from foleyrt.errors import ConfigError
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.files import DataDir, new_job_id
from foleyrt.server.schemas import JobParams
from foleyrt.server.store import RESTART_MESSAGE, JobState, JobStore
from tests.server.conftest import MakeApp
from tests.server.support import STEPS, SlowPipeline, service_of, submit_text, wait_for


def _text_params(prompt: str) -> dict[str, object]:
    return JobParams(prompt=prompt, negative_prompt=None, steps=STEPS, guidance=4.5, seed=1,
                     samples=1, duration=1.0, video_name=None).model_dump(mode="json")


def test_finished_results_survive_a_restart(make_app: MakeApp) -> None:
    with TestClient(make_app()) as client:
        job = wait_for(client, submit_text(client).json()["id"])
    with TestClient(make_app()) as client:
        again = client.get(f"/v1/jobs/{job['id']}").json()
        assert again["state"] == "succeeded" and again["outputs"] == job["outputs"]
        assert client.get(job["outputs"][0]["wav"]).status_code == 200


def test_after_a_crash_running_jobs_fail_and_queued_ones_run(
    make_app: MakeApp, data_dir: Path
) -> None:
    # What a killed server leaves: one job claimed by the worker, one still waiting.
    files = DataDir(data_dir)
    files.open()
    store = JobStore(files.database)
    cut_off, waiting = new_job_id(), new_job_id()
    for job_id in (cut_off, waiting):
        files.create_job_dir(job_id)
        assert store.add(job_id, _text_params(job_id), max_queued=10)
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == cut_off
    store.close()
    files.close()

    with TestClient(make_app()) as client:
        failed = client.get(f"/v1/jobs/{cut_off}").json()
        assert failed["state"] == "failed" and failed["error"] == RESTART_MESSAGE
        assert wait_for(client, waiting)["state"] == "succeeded"
        assert not files.job_dir(cut_off).exists()


@pytest.mark.parametrize("shutdown_timeout_s, state", [
    (0.2, JobState.QUEUED),  # past the timeout: stopped at its next step, back in the queue
    (30.0, JobState.SUCCEEDED),  # within it: finished before the stop
])
def test_a_graceful_stop_finishes_or_requeues_the_running_job(
    make_app: MakeApp, tiny_pipeline: FoleyPipeline, data_dir: Path,
    shutdown_timeout_s: float, state: JobState,
) -> None:
    slow = SlowPipeline(tiny_pipeline, 0.3)
    with TestClient(make_app(slow, shutdown_timeout_s=shutdown_timeout_s)) as client:
        job_id = submit_text(client).json()["id"]
        wait_for(client, job_id, {"running"})
    store = JobStore(data_dir / "jobs.sqlite3")
    stopped = store.get(job_id)
    store.close()
    assert stopped is not None and stopped.state is state
    with TestClient(make_app()) as client:
        assert wait_for(client, job_id)["state"] == "succeeded"


def test_results_expire_and_their_files_go(make_app: MakeApp) -> None:
    with TestClient(make_app(result_ttl_s=0.3, cleanup_interval_s=0.1)) as client:
        job = wait_for(client, submit_text(client).json()["id"])
        assert job["state"] == "succeeded"
        expired = wait_for(client, job["id"], {"expired"}, timeout_s=10)
        assert expired["outputs"] == [] and expired["expires_at"] is None
        gone = client.get(job["outputs"][0]["wav"])
        assert gone.status_code == 410
        assert gone.json()["detail"].endswith("expired (they are kept 0.3 s after the job ends)")
        assert not service_of(client).files.job_dir(job["id"]).exists()


def test_half_received_uploads_are_removed_at_start(make_app: MakeApp, data_dir: Path) -> None:
    orphan = data_dir / "jobs" / new_job_id()
    orphan.mkdir(parents=True)
    (orphan / "input").write_bytes(b"half an upload")
    with TestClient(make_app()):
        assert not orphan.exists()


def _two_results(make_app: MakeApp) -> list[dict[str, Any]]:
    with TestClient(make_app()) as client:
        return [wait_for(client, submit_text(client, seed=k).json()["id"]) for k in (1, 2)]


@pytest.mark.parametrize("damage, found", [
    (lambda db: db.write_bytes(b""), "is empty"),  # `: > jobs.sqlite3`
    (lambda db: db.unlink(), "is missing"),
    (lambda db: db.write_bytes(b"SQLite format 3\0" + b"\xff" * 4000), "cannot be read"),
])
def test_a_lost_database_never_deletes_results(
    make_app: MakeApp, data_dir: Path, damage: Callable[[Path], object], found: str
) -> None:
    jobs = _two_results(make_app)
    database = data_dir / "jobs.sqlite3"
    for leftover in data_dir.glob("jobs.sqlite3-*"):
        leftover.unlink()
    damage(database)
    before = sorted(p.relative_to(data_dir) for p in (data_dir / "jobs").rglob("*"))
    with pytest.raises(ConfigError, match=found) as refused, TestClient(make_app()):
        pass
    assert "nothing was deleted" in str(refused.value) or "not touched" in str(refused.value)
    after = sorted(p.relative_to(data_dir) for p in (data_dir / "jobs").rglob("*"))
    assert after == before and {j["id"] for j in jobs} <= {p.name for p in after}


def test_result_folders_without_rows_stop_the_start(make_app: MakeApp, data_dir: Path) -> None:
    (job,) = _two_results(make_app)[:1]
    store = JobStore(data_dir / "jobs.sqlite3")
    with store._transaction() as db:  # an older copy of the database, restored
        db.execute("DELETE FROM jobs")
    store.close()
    with pytest.raises(ConfigError, match="2 job folder.* has no row for them"), \
            TestClient(make_app()):
        pass
    assert (data_dir / "jobs" / job["id"]).is_dir()


def test_expired_records_are_purged(make_app: MakeApp) -> None:
    with TestClient(make_app(result_ttl_s=0.2, record_ttl_s=0.3,
                             cleanup_interval_s=0.1)) as client:
        job_id = wait_for(client, submit_text(client).json()["id"])["id"]
        wait_for(client, job_id, {"expired"}, timeout_s=10)
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{job_id}").status_code != 404:
            assert time.monotonic() < deadline, "the expired row was never purged"
            time.sleep(0.05)


def test_a_second_server_cannot_share_the_data_dir(data_dir: Path) -> None:
    first = DataDir(data_dir)
    first.open()
    try:
        with pytest.raises(ConfigError, match="in use by another foleyrt server"):
            DataDir(data_dir).open()
    finally:
        first.close()
    second = DataDir(data_dir)
    second.open()  # free again once the first let go
    second.close()


def test_store_rejects_a_newer_schema(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="version 99"):
        JobStore(path)


def test_a_version_1_database_gains_idempotency_keys(tmp_path: Path) -> None:
    import sqlite3

    from foleyrt.server.store import _SCHEMA, Idempotency

    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:  # what the previous release made
        db.executescript(f"{_SCHEMA} PRAGMA user_version = 1;")
    store = JobStore(path)
    first = new_job_id()
    key = Idempotency("k", "digest")
    assert store.add(first, _text_params("x"), max_queued=2, idempotency=key) == first
    assert store.add(new_job_id(), _text_params("x"), max_queued=2, idempotency=key) == first
    store.close()


def test_queue_positions_follow_submission_order(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids:
        store.add(job_id, _text_params("x"), max_queued=3)
    assert not store.add(new_job_id(), _text_params("x"), max_queued=3)

    def positions() -> list[int | None]:
        return [job.queue_position for job in map(store.get, ids) if job is not None]

    assert positions() == [1, 2, 3]
    store.claim_next()
    assert positions() == [None, 1, 2]
    store.close()
