"""A bounded load and fault test of a running server, over loopback (`foleyrt loadtest`).

`clients` threads share `jobs` submissions. Each client submits a job and follows it to its
end before taking the next, as a real caller would; a 429 or 507 counts as rejected and is
not retried (the test measures the back-pressure, it does not fight it), though the client
waits the Retry-After it was given before its next submission. Every submission carries an
Idempotency-Key, and one that meets no server (killed, restarting) or a passing 503 (shutting
down: it carries Retry-After; the connection cap's plain one) is sent again with the same key
until the deadline, so the faults a test inflicts meanwhile (kill -9, SIGTERM, restarts) never
make a duplicate. A 503 that will not pass (a dead worker: JSON without Retry-After) is an
error at once, not a wait until the deadline. Every accepted job must reach a final
state before the deadline: one that does not, or that vanishes, is *lost*, and a healthy
server loses none. At the end the outputs of completed jobs are downloaded again and must be
byte for byte what they were when the job completed (`changed` counts those that are not).
`slow_clients` connections trickle request headers meanwhile; the server should cut them off.
"""

from __future__ import annotations

import hashlib
import json
import socket
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import httpx

from foleyrt.errors import UsageError

FINAL_STATES = {"succeeded", "failed", "cancelled", "expired"}
MAX_BACKOFF_S = 30.0
RETRY_S = 0.5  # between submissions of the same job to a server that is not there
TRICKLE_S = 0.5  # a slow client sends a header byte this often


class Outcome(Enum):
    COMPLETED = "completed"  # succeeded
    FAILED = "failed"  # reached failed / cancelled / expired
    REJECTED = "rejected"  # 429 (queue full) or 507 (disk full) at submission
    ERROR = "error"  # any other refusal or a transport error at submission
    LOST = "lost"  # accepted, then never seen to end (or gone)


@dataclass
class LoadReport:
    jobs: int
    clients: int
    wall_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    latencies_s: list[float] = field(default_factory=list)  # submit -> succeeded
    errors: list[str] = field(default_factory=list)  # one line per unexpected answer
    changed: int = 0  # completed jobs whose output differs at the end
    slow_clients_cut_off: int = 0
    outputs: dict[str, str] = field(default_factory=dict)  # job id -> SHA-256 of sample 0

    def count(self, outcome: Outcome) -> int:
        return self.outcomes[outcome.value]

    @property
    def ok(self) -> bool:
        return (self.count(Outcome.LOST) == 0 and self.count(Outcome.ERROR) == 0
                and self.changed == 0)

    def summary(self) -> str:
        lat = sorted(self.latencies_s)
        p50 = statistics.median(lat) if lat else float("nan")
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else float("nan")
        counts = ", ".join(f"{o.value} {self.count(o)}" for o in Outcome)
        rate = self.count(Outcome.COMPLETED) / self.wall_s if self.wall_s else float("nan")
        return (f"{self.jobs} jobs from {self.clients} clients in {self.wall_s:.1f} s: {counts} "
                f"({rate:.2f} completed/s); "
                f"latency p50 {p50:.2f} s, p95 {p95:.2f} s; outputs changed {self.changed}; "
                f"slow clients cut off {self.slow_clients_cut_off}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class LoadSpec:
    url: str
    jobs: int = 50
    clients: int = 10
    steps: int = 2
    video: Path | None = None  # None: text-only jobs of `duration` seconds
    duration: float = 2.0
    token: str | None = None
    deadline_s: float = 600.0  # for the whole run
    poll_s: float = 0.25
    slow_clients: int = 0


def check_reachable(url: str) -> None:
    """Refuse in one line a run against a server that is not there: every submission would
    be retried until the deadline (the retries are for servers restarted mid-run)."""
    try:
        httpx.get(f"{url}/v1/health", timeout=10)
    except httpx.TransportError as exc:
        raise UsageError(f"cannot reach a server at {url} ({exc}); start one (foleyrt serve) "
                         "or pass --url") from None


def run_loadtest(spec: LoadSpec) -> LoadReport:
    """The run; a Ctrl-C or SIGTERM stops every client at its next request or wait."""
    report = LoadReport(spec.jobs, spec.clients)
    stop = threading.Event()
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {spec.token}"} if spec.token else {}
    video = spec.video.read_bytes() if spec.video is not None else None
    deadline = time.monotonic() + spec.deadline_s
    limits = httpx.Limits(max_connections=spec.clients)
    run_id = uuid.uuid4().hex[:12]

    def record(outcome: Outcome, latency: float | None = None, error: str | None = None) -> None:
        with lock:
            report.outcomes[outcome.value] += 1
            if latency is not None:
                report.latencies_s.append(latency)
            if error is not None:
                report.errors.append(error)

    def one_job(client: httpx.Client, k: int) -> None:
        data = {"prompt": f"load test job {k}", "steps": str(spec.steps), "seed": str(k)}
        files = None
        if video is not None:
            files = {"video": (spec.video.name if spec.video else "clip", video)}
        else:
            data["duration"] = str(spec.duration)
        key = {"Idempotency-Key": f"loadtest-{run_id}-{k}"}
        t0 = time.monotonic()
        while True:
            try:
                response = client.post("/v1/jobs", data=data, files=files, headers=key)
                error = f"job {k}: {response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                response, error = None, f"job {k}: submit failed: {exc!r}"
            if (response is None or _passing_refusal(response)) and \
                    time.monotonic() + RETRY_S < deadline and not stop.wait(RETRY_S):
                continue  # a server stopping or restarting: same key again
            break
        if response is not None and response.status_code in (429, 507):
            record(Outcome.REJECTED)
            # A well-behaved client waits as told before its next submission.
            time.sleep(min(MAX_BACKOFF_S, float(response.headers.get("Retry-After", 1))))
            return
        if response is None or response.status_code != 202:
            record(Outcome.ERROR, error=error)
            return
        job_id = response.json()["id"]
        outcome, latency, line = _follow(client, job_id, t0, deadline, spec.poll_s, stop)
        if outcome is Outcome.COMPLETED:
            digest = _output_digest(client, job_id)
            with lock:
                report.outputs[job_id] = digest
        record(outcome, latency, line)

    started = time.monotonic()
    stop_slow = threading.Event()
    with httpx.Client(base_url=spec.url, headers=headers, limits=limits, timeout=60) as client, \
            ThreadPoolExecutor(spec.clients + spec.slow_clients,
                               thread_name_prefix="load-client") as pool:
        slow = [pool.submit(_slow_client, spec.url, stop_slow, deadline)
                for _ in range(spec.slow_clients)]
        try:
            for future in [pool.submit(one_job, client, k) for k in range(spec.jobs)]:
                future.result()
        except BaseException:
            stop.set()
            stop_slow.set()
            raise
        stop_slow.set()
        report.slow_clients_cut_off = sum(f.result() for f in slow)
        for job_id, digest in report.outputs.items():
            if _output_digest(client, job_id) != digest:
                report.changed += 1
                report.errors.append(f"job {job_id}: sample 0 changed since it completed")
    report.wall_s = time.monotonic() - started
    return report


def _output_digest(client: httpx.Client, job_id: str) -> str:
    response = client.get(f"/v1/jobs/{job_id}/outputs/0.wav")
    return hashlib.sha256(response.content).hexdigest() if response.status_code == 200 else \
        f"HTTP {response.status_code}"


def _passing_refusal(response: httpx.Response) -> bool:
    """A 503 that goes away by itself: the server's own say so (Retry-After) or uvicorn's
    connection cap (plain text). The server's JSON 503 without Retry-After needs a restart."""
    if response.status_code != 503:
        return False
    json_answer = response.headers.get("content-type", "").startswith("application/json")
    return "Retry-After" in response.headers or not json_answer


def _slow_client(url: str, stop: threading.Event, deadline: float) -> bool:
    """Trickle a request's headers a byte at a time until the server hangs up (True) or the
    run ends (False)."""
    parts = httpx.URL(url)
    try:
        sock = socket.create_connection((parts.host, parts.port or 80), timeout=5)
    except OSError:
        return False
    with sock:
        try:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: " + parts.host.encode())
            sock.settimeout(TRICKLE_S)
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    if sock.recv(1) == b"":
                        return True
                except TimeoutError:
                    sock.sendall(b"x")
        except OSError:
            return True  # reset by the server
    return False


def _follow(
    client: httpx.Client, job_id: str, t0: float, deadline: float, poll_s: float,
    stop: threading.Event,
) -> tuple[Outcome, float | None, str | None]:
    """Poll one accepted job to its end (or the run's stop): (outcome, latency if it
    succeeded, error line)."""
    while time.monotonic() < deadline and not stop.is_set():
        try:
            response = client.get(f"/v1/jobs/{job_id}")
        except httpx.HTTPError:
            stop.wait(poll_s)  # a dropped poll is not a lost job: ask again
            continue
        if response.status_code == 404:
            return Outcome.LOST, None, f"job {job_id}: accepted, then unknown to the server"
        state = response.json()["state"]
        if state == "succeeded":
            return Outcome.COMPLETED, time.monotonic() - t0, None
        if state in FINAL_STATES:
            return Outcome.FAILED, None, f"job {job_id}: {state}: {response.json()['error']}"
        stop.wait(poll_s)
    return Outcome.LOST, None, f"job {job_id}: not finished by the deadline"
