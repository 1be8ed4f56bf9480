"""A full disk (issue 18, item 3) on a real one: a small tmpfs as the data directory (mounting
needs root; the tests skip without it). New submissions get 507 with one line and readiness
says why; a job that meets the full disk fails saying so; the server carries on."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from foleyrt.server.settings import MIB
from foleyrt.server.worker import DISK_FULL_MESSAGE
from tests.server.conftest import MakeApp
from tests.server.support import submit_text, wait_for

DISK_MB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                           str(mount)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill `disk` up to `leave_bytes` free; the filler file (delete it to free the space)."""
    filler = disk / "filler"
    block = b"\0" * MIB
    with filler.open("wb") as out:
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - leave_bytes)
    return filler


def test_submissions_get_507_when_the_disk_is_nearly_full(
    make_app: MakeApp, small_disk: Path
) -> None:
    with TestClient(make_app(data_dir=small_disk / "data", min_free_bytes=4 * MIB)) as client:
        filler = fill(small_disk, leave_bytes=MIB)
        refused = submit_text(client)
        assert refused.status_code == 507
        assert refused.json()["detail"].startswith(DISK_FULL_MESSAGE)
        ready = client.get("/v1/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["disk_space"] is False
        assert client.get("/v1/health").status_code == 200
        filler.unlink()
        assert client.get("/v1/ready").status_code == 200
        assert wait_for(client, submit_text(client).json()["id"])["state"] == "succeeded"


def test_a_job_that_meets_a_full_disk_fails_saying_so(
    make_app: MakeApp, small_disk: Path
) -> None:
    with TestClient(make_app(data_dir=small_disk / "data", min_free_bytes=0)) as client:
        assert wait_for(client, submit_text(client).json()["id"])["state"] == "succeeded"
        # Room for the database's writes, not for a 10 s WAV (1.9 MB of float samples).
        filler = fill(small_disk, leave_bytes=512 * 1024)
        job = wait_for(client, submit_text(client, duration=10).json()["id"])
        assert job["state"] == "failed" and job["error"] == DISK_FULL_MESSAGE
        filler.unlink()
        assert wait_for(client, submit_text(client).json()["id"])["state"] == "succeeded"
