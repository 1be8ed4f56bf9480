"""`foleyrt serve` (the web UI and HTTP API) and `foleyrt loadtest` (many jobs against a
running server)."""

from __future__ import annotations

import argparse
import logging
from contextlib import ExitStack
from pathlib import Path

from foleyrt.cli.options import add_model_options, runtime
from foleyrt.errors import UsageError
from foleyrt.request import DEFAULT_STEPS

log = logging.getLogger("foleyrt")


def add(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
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
                   help="longest video (and text-only duration) taken; past 10 s it is "
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
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per log line, with request ids (default: text)")
    add_model_options(p)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from foleyrt.errors import DependencyError

    try:
        from foleyrt.server.app import create_app, load_pipeline
        from foleyrt.server.recovery import open_data
        from foleyrt.server.runner import bind, server_for
    except ImportError as exc:
        raise DependencyError(
            f"the server needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'foleyrt[serve]'"
        ) from None
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
        api_token=token_from_env(), allowed_hosts=tuple(args.allowed_host),
    )
    # Everything that can fail without the model is checked before it loads: the data
    # directory (another server on it, a damaged database) and the port. (Closing twice is
    # harmless: the service closes the store and the directory when it stops.)
    with ExitStack() as stack:
        files, store = open_data(settings)
        stack.callback(files.close)
        stack.callback(store.close)
        sock = stack.enter_context(bind(args.host, args.port))
        pipeline = load_pipeline(settings)
        log.info("data directory %s; results kept %s", settings.data_dir, args.result_ttl)
        log.info("listening on http://%s:%d", args.host, args.port)
        app = create_app(settings, pipeline, (files, store))
        server_for(app, settings, access_log=args.access_log).run(sockets=[sock])
    return 0


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
    from foleyrt.server.loadtest import LoadSpec, run_loadtest
    from foleyrt.server.settings import parse_duration, token_from_env

    if args.jobs < 1 or args.clients < 1 or args.slow_clients < 0:
        raise UsageError("--jobs and --clients must be at least 1, --slow-clients at least 0")
    if args.video is not None and not args.video.is_file():
        raise UsageError(f"{args.video}: no such file")
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
