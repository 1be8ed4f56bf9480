"""GPU measurement of the server's dynamic batcher (issue 16): jobs per second of `foleyrt
serve` under load, batching off and on, in one process.

Real-size random weights (`--size xxl`) are built once per device; for each `--batch-rows`
setting a server runs on a free loopback port with those pipelines (one worker per device),
`foleyrt loadtest`'s own client first warms it up (`--warmup` jobs: compilation and CUDA-graph
capture of the batch shapes) and then submits `--jobs` jobs from `--clients` clients. Printed
per setting: jobs/s, latency p50/p95, mean jobs per batch (of the measured jobs), the
seconds each stage took summed over the measured jobs (the server's metrics), peak GPU
memory. `--batch-rows 2` is the one-at-a-time baseline (a guided job fills two rows); `auto`
is the row budget. Measurements go to docs/benchmarks.md.

    PYTHONPATH=src python scripts/serve_throughput.py [--devices cuda:0[,cuda:1...]]
        [--accel compile] [--precision fp8] [--duration 10 | --video CLIP | --video-seconds 10]
        [--jobs 32] [--clients 32] [--steps 50] [--batch-rows 2,auto] [--batch-wait-ms 0]
        [--decode-in threads,processes] [--decode-workers 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import torch

from foleyrt.accel.process import configure_process
from foleyrt.accel.runtime import RuntimeConfig, parse_device
from foleyrt.batch.local import DecodeIn
from foleyrt.bench.throughput import CLIP_FPS, CLIP_SIZE
from foleyrt.config import PRESETS, RANDOM
from foleyrt.media.synthetic import write_test_clip
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.app import create_app, load_pipelines
from foleyrt.server.loadtest import LoadSpec, Outcome, run_loadtest
from foleyrt.server.runner import server_for
from foleyrt.server.settings import ServerSettings


@contextmanager
def serving(settings: ServerSettings, pipelines: list[FoleyPipeline]) -> Iterator[str]:
    """The server on a free loopback port, in a thread; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = server_for(create_app(settings, pipelines), settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():  # its start-up failed: say so rather than wait forever
            raise SystemExit("the server did not start; its log above says why")
        time.sleep(0.1)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop = threading.Event()
    threading.Thread(target=_watch_workers, args=(url, stop), daemon=True).start()
    try:
        yield url
    finally:
        stop.set()
        server.should_exit = True
        thread.join()
        sock.close()


def _watch_workers(url: str, stop: threading.Event) -> None:
    """End the run with one line once a worker thread is dead: its queued jobs would wait for
    ever, and the measurement with them, spending the GPU machine's time (run BF)."""
    while not stop.wait(2.0):
        if not httpx.get(f"{url}/v1/health").json()["worker_alive"]:
            print("a worker thread died (its traceback is above): no job can finish",
                  flush=True)
            os._exit(3)


def batch_totals(url: str) -> dict[str, float]:
    """Totals so far from the server's own metrics: `jobs` and `batches` (its histogram of
    jobs per batch) and each stage's seconds summed over jobs (`video`: the wait for a
    clip decoded ahead; `denoise`: each job counts its whole batch's)."""
    text = httpx.get(f"{url}/metrics").text
    totals = {name: float(re.search(rf"^foleyrt_batch_jobs_{part} (\S+)$", text, re.M)[1])
              for name, part in (("jobs", "sum"), ("batches", "count"))}
    for stage, value in re.findall(
            r'^foleyrt_stage_duration_seconds_sum\{stage="(\w+)"\} (\S+)$', text, re.M):
        totals[stage] = float(value)
    return totals


def server_settings(base: ServerSettings, data: Path, rows: str,
                    place: DecodeIn | None) -> ServerSettings:
    """The measured server's settings: one `--batch-rows` value and decoding place."""
    return replace(base, data_dir=data, batch_rows=None if rows == "auto" else int(rows),
                   decode_in=place)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="xxl", choices=list(PRESETS), help="tiny: a CPU smoke run")
    p.add_argument("--devices", default="cuda", help="one worker per device, comma-separated")
    p.add_argument("--accel", default="compile")
    p.add_argument("--precision", default=None)
    p.add_argument("--calibration", default=None)
    p.add_argument("--duration", type=float, default=10.0, help="text-only jobs of this length")
    p.add_argument("--video", type=Path, default=None, help="video jobs of this clip instead")
    p.add_argument("--video-seconds", type=float, default=None,
                   help="video jobs of a synthetic 720p clip of this length instead (the "
                        "throughput bench's clips)")
    p.add_argument("--jobs", type=int, default=32)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--warmup", type=int, default=None, help="warm-up jobs (default: --clients)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-rows", default="2,auto")
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--decode-in", default=None,
                   help="threads, processes, or both comma-separated (each batch-rows setting "
                        "runs with each; default: the server's, processes on a GPU)")
    p.add_argument("--decode-workers", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.video is not None and args.video_seconds is not None:
        p.error("--video or --video-seconds, not both")
    configure_process()
    clips = tempfile.TemporaryDirectory()  # removed when the script ends
    if args.video_seconds is not None:
        args.video = write_test_clip(Path(clips.name) / "clip.mp4", args.video_seconds,
                                     width=CLIP_SIZE[0], height=CLIP_SIZE[1], fps=CLIP_FPS)
    t0 = time.perf_counter()

    def phase(what: str) -> None:
        """A timestamped line as each phase ends: a run cut off by a time limit still shows
        where its time went."""
        print(f"[{time.perf_counter() - t0:7.1f} s] {what}", flush=True)

    devices = [parse_device(d.strip()) for d in args.devices.split(",")]
    cuda = [d for d in devices if d.type == "cuda"]
    workers = {} if args.decode_workers is None else {"decode_workers": args.decode_workers}
    base = ServerSettings(
        model=RANDOM, size=PRESETS[args.size].name,
        runtime=RuntimeConfig.build(str(devices[0]), accel=args.accel,
                                    precision=args.precision, calibration=args.calibration),
        devices=tuple(devices), default_steps=args.steps, max_queue=max(args.jobs, 16),
        max_samples=1, job_timeout_s=3600, batch_wait_s=args.batch_wait_ms / 1000,
        allowed_hosts=("127.0.0.1",), **workers)
    pipelines = load_pipelines(base)  # as `foleyrt serve` loads them: encoders compiled too
    phase(f"{len(pipelines)} pipeline(s) built")
    job = LoadSpec(url="", jobs=args.jobs, clients=args.clients, steps=args.steps,
                   video=args.video, duration=args.duration, deadline_s=3600)
    warmup = args.warmup if args.warmup is not None else args.clients
    if warmup < args.clients:  # run BM-1 (docs/benchmarks.md §8) measured its compiles
        print(f"note: {warmup} warm-up jobs for {args.clients} clients: a batch of more than "
              f"{warmup} jobs compiles and captures its shapes inside the measured run",
              flush=True)
    rows = []
    places = [None] if args.decode_in is None else [DecodeIn(d) for d in args.decode_in.split(",")]
    for rows_setting, place in itertools.product(args.batch_rows.split(","), places):
        for device in cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as data:
            settings = server_settings(base, Path(data), rows_setting, place)
            assert settings.decode_in is not None
            setting = f"{rows_setting}, decoding in {settings.decode_in.value}"
            with serving(settings, pipelines) as url:
                phase(f"batch rows {setting}: server up")
                run_loadtest(LoadSpec(**{**job.__dict__, "url": url, "jobs": warmup}))
                phase(f"batch rows {setting}: {warmup} warm-up jobs done")
                before = batch_totals(url)
                report = run_loadtest(LoadSpec(**{**job.__dict__, "url": url}))
                after = batch_totals(url)
        spent = {k: round(after[k] - before.get(k, 0.0), 2) for k in after}
        completed = report.count(Outcome.COMPLETED)
        row = {
            "batch_rows": rows_setting, "decode_in": settings.decode_in.value,
            "devices": [str(d) for d in devices],
            "jobs": args.jobs, "completed": completed, "wall_s": round(report.wall_s, 2),
            "jobs_per_s": round(completed / report.wall_s, 3),
            "mean_jobs_per_batch": round(spent["jobs"] / max(spent["batches"], 1), 2),
            "stage_s": {k: v for k, v in spent.items() if k not in ("jobs", "batches")},
            "peak_gpu_gib": round(max((torch.cuda.max_memory_allocated(d) for d in cuda),
                                      default=0) / 2**30, 1),
        }
        phase(f"batch rows {setting}: {args.jobs} measured jobs done")
        print(report.summary())
        print(json.dumps(row), flush=True)
        rows.append(row)
    if len(rows) > 1:
        base = rows[0]["jobs_per_s"]
        for row in rows[1:]:
            print(f"batch rows {row['batch_rows']}, decoding in {row['decode_in']}: "
                  f"{row['jobs_per_s'] / base:.2f}x batch rows {rows[0]['batch_rows']}, "
                  f"decoding in {rows[0]['decode_in']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
