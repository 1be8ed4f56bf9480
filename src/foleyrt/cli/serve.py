"""`foleyrt serve` (the web UI and HTTP API), `foleyrt ray-serve` (the pipeline as a Ray Serve
deployment) and `foleyrt loadtest` (many jobs against a running server)."""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from foleyrt.cli.options import DECODE_IN_CHOICES, add_model_options, runtime, runtime_words
from foleyrt.errors import UsageError
from foleyrt.request import DEFAULT_STEPS

if TYPE_CHECKING:
    import torch

log = logging.getLogger("foleyrt")


def add(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    _add_ray_serve(sub)
    _add_loadtest(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the web UI and the HTTP API",
                       description="Serve the web UI at / and the JSON API under /v1 (OpenAPI "
                                   "at /docs), the model loaded once and kept warm. Set "
                                   "FOLEYRT_API_TOKEN to require a bearer token on /v1.")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="job database and results (default: ~/.local/share/foleyrt/server)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="jobs allowed to wait; more are refused with 429 (default: 16)")
    p.add_argument("--max-upload-mb", type=float, default=2048,
                   help="largest video upload in MiB (default: 2048, a ten-minute 1080p "
                        "clip with room to spare)")
    p.add_argument("--max-video-seconds", type=float, default=None,
                   help="longest video (and text-only duration) taken; past 15 s it is "
                        "generated in windows (default: 600, ten minutes)")
    p.add_argument("--job-timeout", default="10m",
                   help="time limit of one job, e.g. 90s, 10m (default: 10m)")
    p.add_argument("--result-ttl", default="24h",
                   help="how long results are kept after a job ends, e.g. 2h, 7d (default: 24h)")
    p.add_argument("--record-ttl", default="30d",
                   help="how long an expired job's record is kept after that (default: 30d)")
    p.add_argument("--min-free-mb", type=float, default=1024,
                   help="free disk space below which jobs are refused (507) and /v1/ready "
                        "fails (default: 1024)")
    p.add_argument("--shutdown-timeout", default="30s",
                   help="on SIGTERM, how long the running job may take to finish before it is "
                        "re-queued (default: 30s)")
    p.add_argument("--client-timeout", default="30s",
                   help="a client silent this long while sending a request is dropped "
                        "(default: 30s)")
    p.add_argument("--max-connections", type=int, default=64,
                   help="open HTTP connections; more get 503 (default: 64)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name this server is reached by, besides its IP addresses and "
                        "localhost (only checked when no token is set; repeatable)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"default sampler steps (default: {DEFAULT_STEPS})")
    p.add_argument("--gpus", default=None, metavar="LIST",
                   help="one worker per GPU, e.g. 0,1,2,3: each loads the model and runs "
                        "batches from the one queue (default: one worker on --device)")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="transformer rows a batch of queued jobs may fill (a job fills one row "
                        "per sample, two with guidance) (default: auto, from the GPU's free "
                        "memory)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                   help="how long a batch's first job waits for more jobs to share its "
                        "forwards (default: 0, take those already queued)")
    p.add_argument("--decode-in", choices=DECODE_IN_CHOICES, default=None,
                   help="threads: a worker decodes each video job's clip when it claims the "
                        "job; processes: queued jobs' clips are decoded ahead in a pool of "
                        "processes while the GPU runs the batch before (default on a GPU "
                        "without --offload; threads elsewhere)")
    p.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="decoding processes with --decode-in processes (default: up to 4, "
                        "one per CPU core)")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per log line, with request ids (default: text)")
    add_model_options(p)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from foleyrt.errors import DependencyError

    devices = _gpus(args)
    try:
        from foleyrt.server.app import create_app, load_pipelines
        from foleyrt.server.recovery import open_data
        from foleyrt.server.runner import bind, server_for
    except ImportError as exc:
        raise DependencyError(
            f"the server needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'foleyrt[serve]'"
        ) from None
    from foleyrt.batch import DecodeIn
    from foleyrt.media.video import VideoLimits
    from foleyrt.server.logs import tag_request_ids, use_json_logs
    from foleyrt.server.settings import (
        MIB,
        ServerSettings,
        default_data_dir,
        parse_duration,
        token_from_env,
    )

    if args.log_format == "json":
        use_json_logs(logging.getLogger("foleyrt").level)
    else:
        tag_request_ids()
    if not args.quiet:
        logging.getLogger("uvicorn").setLevel(logging.INFO)
    settings = ServerSettings(
        data_dir=args.data_dir or default_data_dir(), model=args.model, size=args.size,
        runtime=runtime(args), max_queue=args.max_queue,
        max_upload_bytes=round(args.max_upload_mb * MIB),
        video_limits=(VideoLimits() if args.max_video_seconds is None
                      else VideoLimits(max_seconds=args.max_video_seconds)),
        job_timeout_s=parse_duration(args.job_timeout),
        result_ttl_s=parse_duration(args.result_ttl),
        record_ttl_s=parse_duration(args.record_ttl),
        min_free_bytes=round(args.min_free_mb * MIB),
        shutdown_timeout_s=parse_duration(args.shutdown_timeout),
        client_timeout_s=parse_duration(args.client_timeout),
        max_connections=args.max_connections, default_steps=args.steps,
        api_token=token_from_env(), allowed_hosts=tuple(args.allowed_host), devices=devices,
        batch_rows=args.batch_rows, batch_wait_s=args.batch_wait_ms / 1000,
        decode_in=DecodeIn(args.decode_in) if args.decode_in else None,
        **({} if args.decode_workers is None else {"decode_workers": args.decode_workers}),
    )
    # Everything that can fail without the model is checked before it loads: the data
    # directory (another server on it, a damaged database) and the port. (Closing twice is
    # harmless: the service closes the store and the directory when it stops.)
    with ExitStack() as stack:
        files, store = open_data(settings)
        stack.callback(files.close)
        stack.callback(store.close)
        sock = stack.enter_context(bind(args.host, args.port))
        pipelines = load_pipelines(settings)
        for pipeline in pipelines:  # after the server stops: --parallel cfg's 2nd process
            stack.callback(pipeline.close)
        log.info("data directory %s; results kept %s", settings.data_dir, args.result_ttl)
        log.info("%d worker(s) on %s", len(pipelines),
                 ", ".join(str(p.runtime.device) for p in pipelines))
        log.info("listening on http://%s:%d", args.host, args.port)
        app = create_app(settings, pipelines, (files, store))
        server_for(app, settings, access_log=args.access_log).run(sockets=[sock])
    return 0


def _gpus(args: argparse.Namespace) -> tuple[torch.device, ...]:
    """`--gpus 0,1` -> the CUDA devices, each checked to exist; () without the option."""
    if args.gpus is None:
        return ()
    from foleyrt.accel.runtime import parse_device

    if args.device not in ("auto", "cuda"):
        raise UsageError(f"--gpus puts a worker on each listed GPU; drop --device {args.device}")
    indices = [part.strip() for part in args.gpus.split(",")]
    if not all(index.isdigit() for index in indices):
        raise UsageError(f"--gpus takes GPU numbers separated by commas, e.g. 0,1; got "
                         f"{args.gpus!r}")
    return tuple(parse_device(f"cuda:{int(index)}") for index in indices)


def _add_ray_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ray-serve", help="serve the pipeline from a Ray cluster (Ray Serve)",
                       description="Deploy the pipeline on Ray Serve: REPLICAS replicas (a GPU "
                                   "each by default) behind Ray's HTTP proxy, answering POST "
                                   "/v1/generate with the sound itself; concurrent requests "
                                   "are batched per replica. Runs until Ctrl-C or SIGTERM, "
                                   "then removes the deployment. Needs the 'ray-serve' extra.")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing cluster (e.g. auto, or ray://head:10001) (default: start "
                        "a local Ray for this run)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default: 1)")
    p.add_argument("--gpus-per-replica", type=float, default=1.0, metavar="N",
                   help="GPUs Ray reserves for each replica; 0 for CPU replicas (default: 1)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface of Ray's HTTP proxy (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="its port (default: %(default)s)")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="transformer rows a replica's batch may fill (a request fills two with "
                        "guidance, else one) (default: 32)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                   help="how long a batch's first request waits for more (default: 0)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"default sampler steps (default: {DEFAULT_STEPS})")
    p.add_argument("--max-upload-mb", type=float, default=200,
                   help="largest video upload in MiB (default: 200)")
    add_model_options(p)
    p.set_defaults(handler=_ray_serve)


def _ray_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from foleyrt.errors import DependencyError, FoleyError

    try:
        from foleyrt.server.ray_serve import RayServeConfig, deploy, shutdown
    except ImportError as exc:
        raise DependencyError(
            f"ray-serve needs the 'ray-serve' extra ({exc.name} is missing): "
            "pip install 'foleyrt[ray-serve]'"
        ) from None
    from foleyrt.pipeline.budget import DEFAULT_MAX_ROWS
    from foleyrt.server.settings import MIB

    config = RayServeConfig(
        model=args.model, size=args.size, runtime_words=runtime_words(args),
        default_steps=args.steps,
        batch_rows=DEFAULT_MAX_ROWS if args.batch_rows is None else args.batch_rows,
        batch_wait_s=args.batch_wait_ms / 1000,
        max_upload_bytes=round(args.max_upload_mb * MIB),
    )
    stop = threading.Event()
    try:
        try:
            deploy(config, replicas=args.replicas, gpus_per_replica=args.gpus_per_replica,
                   host=args.host, port=args.port, address=args.ray_address)
        except FoleyError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors carry whole remote tracebacks
            raise FoleyError(f"the Ray Serve deployment failed: {_last_line(exc)}") from None
        # After `ray.init`, which installs a SIGTERM handler of its own that aborts.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        log.info("%d replica(s) serving POST http://%s:%d/v1/generate (Ctrl-C stops)",
                 args.replicas, args.host, args.port)
        stop.wait()
    finally:
        shutdown()
    return 0


def _last_line(exc: Exception) -> str:
    """The cause at the end of a (remote) traceback's text."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _add_loadtest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="submit many jobs to a running server and count losses",
                       description="Submit JOBS jobs from CLIENTS concurrent clients to a running "
                                   "server; report completed / failed / rejected (429) / lost. "
                                   "Exit status 1 if any job was lost or answered unexpectedly.")
    p.add_argument("--url", default="http://127.0.0.1:7860", help="server (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=50, help="jobs to submit (default: 50)")
    p.add_argument("--clients", type=int, default=10, help="concurrent clients (default: 10)")
    p.add_argument("--steps", type=int, default=2, help="sampler steps per job (default: 2)")
    p.add_argument("--video", type=Path, default=None, help="clip to upload (default: text-only)")
    p.add_argument("--duration", type=float, default=2.0,
                   help="seconds of audio of text-only jobs (default: 2)")
    p.add_argument("--slow-clients", type=int, default=0,
                   help="connections that trickle their headers meanwhile (default: 0)")
    p.add_argument("--deadline", default="10m", help="time limit of the whole run (default: 10m)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(handler=_loadtest)


def _loadtest(args: argparse.Namespace) -> int:
    from foleyrt.server.loadtest import LoadSpec, check_reachable, run_loadtest
    from foleyrt.server.settings import parse_duration, token_from_env

    if args.jobs < 1 or args.clients < 1 or args.slow_clients < 0:
        raise UsageError("--jobs and --clients must be at least 1, --slow-clients at least 0")
    if args.video is not None and not args.video.is_file():
        raise UsageError(f"{args.video}: no such file")
    check_reachable(args.url)
    report = run_loadtest(LoadSpec(
        url=args.url, jobs=args.jobs, clients=args.clients, steps=args.steps, video=args.video,
        duration=args.duration, token=token_from_env(), deadline_s=parse_duration(args.deadline),
        slow_clients=args.slow_clients,
    ))
    for line in report.errors:
        log.warning("%s", line)
    print(report.summary())
    if args.json:
        args.json.write_text(report.to_json())
    return 0 if report.ok else 1
