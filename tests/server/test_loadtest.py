"""The real command line end to end: `foleyrt serve` in its own process, `foleyrt loadtest`
against it over loopback (small numbers), then a clean stop on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        _cli("serve", "--model", "tiny-random", "--device", "cpu", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--max-queue", "2", "--steps", "2"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v1/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"foleyrt serve did not start:\n{process.communicate()[0]}")
        time.sleep(0.2)
    yield url
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output


def test_loadtest_loses_no_job(server: str, tmp_path: Path, env: dict[str, str]) -> None:
    report_path = tmp_path / "report.json"
    run = subprocess.run(
        _cli("loadtest", "--url", server, "--jobs", "10", "--clients", "4", "--steps", "2",
             "--duration", "1", "--json", str(report_path)),
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "lost 0" in run.stdout
    outcomes = json.loads(report_path.read_text())["outcomes"]
    assert outcomes.get("lost", 0) == 0 and outcomes.get("error", 0) == 0
    assert sum(outcomes.values()) == 10
    assert outcomes["completed"] >= 1
