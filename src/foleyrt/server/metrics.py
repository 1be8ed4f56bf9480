"""Prometheus metrics (`GET /metrics`) through `prometheus_client`, in a registry per app:
several apps in one process (the tests) never share a counter, and nothing is module-global.

Counters and histograms are updated where things happen (the workers time jobs and stages and
count the jobs of each batch, the HTTP layer counts refusals); job states, the queue and GPU
memory are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foleyrt.server.store import JobState

# From a two-step tiny job to a long clip at 50 steps on a busy GPU.
JOB_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # jobs; 32 rows hold at most 32 jobs

# The reason a refusal is counted under, by its status.
REFUSAL_REASONS: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "client_timeout", 409: "conflict", 410: "gone",
    413: "too_large", 415: "unsupported_media", 422: "invalid_input", 429: "queue_full",
    503: "unavailable", 507: "disk_full",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.job_seconds = Histogram(
            "foleyrt_job_duration_seconds", "Jobs from start to end, by how they ended",
            ["outcome"], buckets=JOB_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram(
            "foleyrt_stage_duration_seconds", "Stages of successful jobs",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.batch_jobs = Histogram(
            "foleyrt_batch_jobs", "Jobs denoised together in one batch",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.refused = Counter(
            "foleyrt_rejected_requests", "Requests answered with an error status, by reason",
            ["reason"], registry=self.registry)

    def count_refusal(self, status: int) -> None:
        if status >= 400:
            self.refused.labels(REFUSAL_REASONS.get(status, str(status))).inc()

    def watch(self, job_counts: Callable[[], dict[JobState, int]],
              devices: list[torch.device]) -> None:
        """Report jobs by state, the queue and each worker's GPU memory at every scrape."""
        self.registry.register(_StateCollector(job_counts, devices))


class _StateCollector(Collector):
    def __init__(self, job_counts: Callable[[], dict[JobState, int]],
                 devices: list[torch.device]) -> None:
        self.job_counts = job_counts
        self.devices = [d for d in dict.fromkeys(devices) if d.type == "cuda"]

    def collect(self) -> Iterator[Metric]:
        counts = self.job_counts()
        jobs = GaugeMetricFamily("foleyrt_jobs", "Jobs in the database, by state",
                                 labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state.value], n)
        yield jobs
        yield GaugeMetricFamily("foleyrt_queue_depth", "Jobs waiting to run",
                                value=counts[JobState.QUEUED])
        gpu = GaugeMetricFamily("foleyrt_gpu_memory_bytes",
                                "GPU memory of this process per worker's GPU (none on a CPU "
                                "server)", labels=["device", "kind"])
        for device in self.devices:
            name = str(device)
            gpu.add_metric([name, "allocated"], torch.cuda.memory_allocated(device))
            gpu.add_metric([name, "reserved"], torch.cuda.memory_reserved(device))
            gpu.add_metric([name, "peak"], torch.cuda.max_memory_allocated(device))
        yield gpu
