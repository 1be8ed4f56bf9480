"""The real command line end to end: `foleyrt serve` in its own process, `foleyrt loadtest`
against it over loopback (small numbers), the faults an operator meets (kill -9 and SIGTERM
mid-job, an emptied database, a full disk, slow clients) and the start-up failures that must
be one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.app import create_app
from foleyrt.server.loadtest import LoadSpec, Outcome, run_loadtest
from tests.server.conftest import MakeSettings
from tests.server.support import live_server, service_of, submit_text

REPO = Path(__file__).resolve().parents[2]
SERVE = ("--model", "tiny-random", "--device", "cpu", "--max-queue", "4", "--steps", "2",
         "--client-timeout", "2s", "--shutdown-timeout", "3s", "--min-free-mb", "4")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "foleyrt.cli", *args]


@pytest.fixture
def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


class Served:
    """`foleyrt serve` on one port and data directory, started again after each stop."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = env
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            _cli("serve", *SERVE, "--port", str(self.port), "--data-dir", str(self.data_dir)),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/v1/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"foleyrt serve did not start:\n{self.process.communicate()[0]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60) -> tuple[int, str]:
        assert self.process is not None
        self.process.send_signal(sig)
        output = self.process.communicate(timeout=timeout_s)[0]
        return self.process.returncode, output

    def wait_running(self, timeout_s: float = 60) -> None:
        """Until some job is running (mid-job is when faults hurt)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                jobs = httpx.get(f"{self.url}/v1/jobs").json()["jobs"]
                if any(j["state"] == "running" for j in jobs):
                    return
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.05)
        pytest.fail("no job started running")


@pytest.fixture
def served(tmp_path: Path, env: dict[str, str]) -> Iterator[Served]:
    server = Served(tmp_path / "data", env)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        code, output = server.stop()
        assert code == 0, output


def _loadtest(url: str, env: dict[str, str], report: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cli("loadtest", "--url", url, "--steps", "2", "--duration", "1", "--json",
             str(report), *extra),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_loadtest_loses_no_job(served: Served, tmp_path: Path, env: dict[str, str]) -> None:
    report_path = tmp_path / "report.json"
    run = _loadtest(served.url, env, report_path, "--jobs", "10", "--clients", "4")
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output
    assert "lost 0" in output
    outcomes = json.loads(report_path.read_text())["outcomes"]
    assert outcomes.get("lost", 0) == 0 and outcomes.get("error", 0) == 0
    assert sum(outcomes.values()) == 10
    assert outcomes["completed"] >= 1


def _digests(url: str) -> dict[str, bytes]:
    jobs = httpx.get(f"{url}/v1/jobs", params={"limit": 100}).json()["jobs"]
    return {j["id"]: httpx.get(f"{url}{j['outputs'][0]['wav']}").content
            for j in jobs if j["state"] == "succeeded"}


def test_faults_lose_nothing(served: Served, tmp_path: Path, env: dict[str, str]) -> None:
    report_path = tmp_path / "report.json"
    run = _loadtest(served.url, env, report_path, "--jobs", "12", "--clients", "3",
                    "--slow-clients", "3", "--deadline", "4m")

    served.wait_running()
    assert served.stop(signal.SIGKILL)[0] == -signal.SIGKILL  # kill -9 mid-job
    served.start()
    served.wait_running()
    started = time.monotonic()
    code, output = served.stop(signal.SIGTERM)  # drains: finishes or re-queues
    assert code == 0, output
    assert time.monotonic() - started < 3 + 5 + 2  # --shutdown-timeout, grace, margin
    served.start()

    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output
    report = json.loads(report_path.read_text())
    assert report["outcomes"]["lost"] == 0 and report["outcomes"]["error"] == 0, output
    assert report["changed"] == 0 and report["outcomes"]["completed"] >= 1
    assert sum(report["outcomes"].values()) == 12
    assert report["slow_clients_cut_off"] == 3

    # An emptied database: the next start refuses in one line and deletes nothing.
    before = _digests(served.url)
    assert served.stop()[0] == 0
    database = served.data_dir / "jobs.sqlite3"
    saved = tmp_path / "jobs.sqlite3.bak"
    shutil.copy(database, saved)
    database.write_bytes(b"")
    refused = subprocess.run(
        _cli("serve", *SERVE, "--port", str(served.port), "--data-dir", str(served.data_dir)),
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("foleyrt: error:")]
    assert "is empty" in line and "nothing was deleted" in line
    shutil.copy(saved, database)
    served.start()
    assert _digests(served.url) == before  # byte for byte, after every restart


def test_a_full_disk_is_refused_and_recovered(tmp_path: Path, env: dict[str, str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)],
                             check=False)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        served = Served(disk / "data", env)
        served.start()
        filler = disk / "filler"
        with filler.open("wb") as out, pytest.raises(OSError):
            while True:
                out.write(b"\0" * 2**20)
                out.flush()
        report_path = tmp_path / "report.json"
        run = _loadtest(served.url, env, report_path, "--jobs", "3", "--clients", "1")
        assert run.communicate(timeout=120)[0] and run.returncode == 0
        assert json.loads(report_path.read_text())["outcomes"]["rejected"] == 3
        assert httpx.get(f"{served.url}/v1/ready").status_code == 503
        filler.unlink()
        assert httpx.get(f"{served.url}/v1/ready").status_code == 200
        assert served.stop()[0] == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_startup_failures_are_one_line(served: Served, tmp_path: Path,
                                       env: dict[str, str]) -> None:
    corrupt = tmp_path / "corrupt"
    (corrupt / "jobs").mkdir(parents=True)
    (corrupt / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = str(busy.getsockname()[1])
        cases = {
            "--port must be between 1 and 65535": ("--port", "99999"),
            "already in use": ("--port", busy_port, "--data-dir", str(tmp_path / "other")),
            "in use by another foleyrt server": ("--port", str(_free_port()),
                                                 "--data-dir", str(served.data_dir)),
            "cannot be read": ("--port", str(_free_port()), "--data-dir", str(corrupt)),
        }
        for expected, args in cases.items():
            run = subprocess.run(_cli("serve", *SERVE, *args), env=env, capture_output=True,
                                 text=True, timeout=120, check=False)
            assert run.returncode != 0, expected
            lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("foleyrt: error:"), run.stderr
            assert expected in lines[0]


class _FatalPipeline:
    """The real pipeline whose denoising ends the worker's thread (an error `except
    Exception` does not catch), the way a broken device or driver leaves a worker."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    def denoise(self, *args: Any, **kwargs: Any) -> Any:
        raise SystemExit("the worker's device is gone")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_refusal_that_passes_says_when_and_a_dead_worker_ends_the_load_test(
        make_settings: MakeSettings, tiny_pipeline: FoleyPipeline) -> None:
    with TestClient(create_app(make_settings(), [tiny_pipeline])) as client:
        service_of(client).drain()
        refused = submit_text(client)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    with live_server(make_settings(), _FatalPipeline(tiny_pipeline)) as url:
        assert httpx.post(f"{url}/v1/jobs", data={"prompt": "rain", "duration": "1",
                                                  "steps": "2"}).status_code == 202
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/health").status_code != 503:
            assert time.monotonic() < deadline, "the worker did not die"
            time.sleep(0.05)
        started = time.monotonic()
        report = run_loadtest(LoadSpec(url, jobs=2, clients=2, duration=1, deadline_s=120))
    assert time.monotonic() - started < 10  # not a wait until the deadline
    assert report.count(Outcome.ERROR) == 2 and not report.ok
    assert all("needs a restart" in line for line in report.errors)


def test_loadtest_without_a_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """It used to retry every submission in silence until the deadline (10 minutes)."""
    from foleyrt.cli import main

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    assert main(["loadtest", "--url", url, "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"foleyrt: error: cannot reach a server at {url} (")
    assert err.count("\n") == 1 and time.monotonic() - started < 15
