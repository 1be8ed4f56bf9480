"""`foleyrt` command line: generate | verify (and the commands of later modules).

Every user error ends as one line on stderr and a non-zero exit status (see `errors.py`);
results (written paths, verification lines) go to stdout.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from foleyrt import __version__
from foleyrt.config import HUB_REPO, PRECISIONS, PRESETS, TINY, TINY_RANDOM, RuntimeConfig
from foleyrt.errors import FoleyError, UsageError

log = logging.getLogger("foleyrt")

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_weight_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model, on which device, in which dtype."""
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default=HUB_REPO,
                   help=f"weights directory, hub repo id, or {TINY_RANDOM!r} (default: %(default)s)")
    sizes = [s for s in PRESETS if s != TINY.name]
    g.add_argument("--size", default="xxl", choices=sizes, help="transformer size (default: xxl)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None,
                   help="transformer dtype: bf16, fp16 or fp32 (default: bf16 on CUDA, else fp32)")
    return g


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """`_add_weight_options` plus how the transformer runs; `_runtime` reads them all."""
    g = _add_weight_options(p)
    g.add_argument("--accel", default="eager", help="eager, compile or tensorrt (default: eager)")
    g.add_argument("--engine", default=None,
                   help="TensorRT plan for --accel tensorrt (default: newest matching engine "
                        "in the cache)")
    g.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="transformer precision: bf16, fp16, or quantised fp8 (Ada/Hopper GPUs), "
                        "int8-weight, int8 (needs --calibration) (default: the --dtype)")
    g.add_argument("--calibration", default=None, metavar="FILE",
                   help="activation ranges for --precision int8 (from 'foleyrt calibrate')")
    g.add_argument("--offload", default="none", metavar="MODE",
                   help="GPU memory mode: none, model (networks in pinned host memory, brought "
                        "in per stage) or blocks:N (transformer blocks streamed through N GPU "
                        "slots; slower) (default: none)")


def _runtime(args: argparse.Namespace) -> RuntimeConfig:
    """The runtime of `_add_model_options`' flags."""
    return RuntimeConfig.auto(args.device, args.dtype, accel=args.accel, engine=args.engine,
                              precision=args.precision, calibration=args.calibration,
                              offload=args.offload)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="make the sound track of a video (or text-only audio)",
                       description="Generate Foley audio for VIDEO (or from text alone).")
    p.add_argument("video", nargs="?", type=Path, help="input video (omit for text-only)")
    p.add_argument("-p", "--prompt", default="", help="what the sound should be")
    p.add_argument("--negative-prompt", default=None,
                   help="what to steer away from (default: 'noisy, harsh')")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .mp4 (video with the new sound) or .wav; several samples are "
                        "numbered out_1.mp4, out_2.mp4, ...")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default: 50)")
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale (default: 4.5)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: random, printed)")
    p.add_argument("--samples", type=int, default=1, help="number of sound tracks (default: 1)")
    p.add_argument("--text-only", action="store_true", help="ignore any video; needs --duration")
    p.add_argument("--duration", type=float, default=None, help="seconds, for text-only")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_model_options(p)
    p.set_defaults(handler=_generate)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check parity against fixtures of the official release",
                       description="Run every case of a fixture manifest; exit 1 if any fails.")
    p.add_argument("fixtures", type=Path, help="directory holding manifest.json")
    p.add_argument("--only", nargs="*", default=None, help="case id prefixes to run")
    p.add_argument("--device", default="cpu", help="device to run the models on (default: cpu)")
    p.add_argument("--accel", default="eager", help="acceleration mode under test")
    p.set_defaults(handler=_verify)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed, memory and accuracy of each mode",
                       description="Benchmark the denoising loop (and optionally the whole "
                                   "pipeline) with random weights; prints a table.")
    p.add_argument("--sizes", nargs="+", default=["xxl", "xl"], choices=sorted(PRESETS))
    p.add_argument("--durations", nargs="+", type=float, default=[5, 8, 10, 15])
    p.add_argument("--modes", nargs="*", default=["release-pattern", "eager", "compile"],
                   help="loop modes: release-pattern, eager, compile, ACCEL:PRECISION (e.g. "
                        "compile:fp8); none to time only --pipeline")
    p.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the fp32 eager reference (no accuracy columns)")
    p.add_argument("--pipeline", nargs="*", default=None, metavar="VARIANT",
                   help="also time video file -> MP4 for the first size, per variant "
                        "ACCEL[/PRECISION[/OFFLOAD]] (default variants: eager compile), e.g. "
                        "compile/fp8 eager/bf16/model eager/fp8/blocks:4")
    p.add_argument("--profile", action="store_true",
                   help="also print the GPU kernel-time breakdown of one compiled forward")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from foleyrt.bench import MODES, bench_loop, bench_pipeline
    from foleyrt.config import parse_device

    unknown = sorted({m for m in args.modes if m.split(":")[0] not in MODES})
    if unknown:
        raise UsageError(f"unknown bench mode(s) {unknown}; choose from {list(MODES)}")
    device = parse_device(args.device)
    report = bench_loop(args.sizes if args.modes else [], args.durations, args.modes,
                        args.runs, args.steps, args.guidance, device,
                        reference=not args.no_reference, profile=args.profile)
    if args.pipeline is not None:
        variants = args.pipeline or ["eager", "compile"]
        report.pipeline = bench_pipeline(args.sizes[0], args.durations, variants, args.runs,
                                         args.steps, device)
    print(report.table())
    if args.json:
        args.json.write_text(report.to_json())
    return 0


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
    p.add_argument("--max-upload-mb", type=float, default=200,
                   help="largest video upload in MiB (default: 200)")
    p.add_argument("--job-timeout", default="10m",
                   help="time limit of one job, e.g. 90s, 10m (default: 10m)")
    p.add_argument("--result-ttl", default="24h",
                   help="how long results are kept after a job ends, e.g. 2h, 7d (default: 24h)")
    p.add_argument("--steps", type=int, default=50, help="default sampler steps (default: 50)")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")
    _add_model_options(p)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from foleyrt.errors import DependencyError

    try:
        import uvicorn

        from foleyrt.server.app import create_app, load_pipeline
    except ImportError as exc:
        raise DependencyError(
            f"the server needs the 'serve' extra ({exc.name} is missing): "
            "pip install 'foleyrt[serve]'"
        ) from None
    from foleyrt.server.settings import (
        MIB,
        ServerSettings,
        default_data_dir,
        parse_duration,
        token_from_env,
    )

    settings = ServerSettings(
        data_dir=args.data_dir or default_data_dir(), model=args.model, size=args.size,
        runtime=_runtime(args), max_queue=args.max_queue,
        max_upload_bytes=round(args.max_upload_mb * MIB),
        job_timeout_s=parse_duration(args.job_timeout),
        result_ttl_s=parse_duration(args.result_ttl), default_steps=args.steps,
        api_token=token_from_env(),
    )
    # Load before binding the port: a bad model path is a one-line error, not a failed start.
    pipeline = load_pipeline(settings)
    if not args.quiet:
        logging.getLogger("uvicorn").setLevel(logging.INFO)
    log.info("data directory %s; results kept %s", settings.data_dir, args.result_ttl)
    uvicorn.run(create_app(settings, pipeline), host=args.host, port=args.port,
                log_config=None, access_log=args.access_log)
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
    p.add_argument("--deadline", default="10m", help="time limit of the whole run (default: 10m)")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    p.set_defaults(handler=_loadtest)


def _loadtest(args: argparse.Namespace) -> int:
    from foleyrt.server.loadtest import LoadSpec, run_loadtest
    from foleyrt.server.settings import parse_duration, token_from_env

    if args.jobs < 1 or args.clients < 1:
        raise UsageError("--jobs and --clients must be at least 1")
    if args.video is not None and not args.video.is_file():
        raise UsageError(f"{args.video}: no such file")
    report = run_loadtest(LoadSpec(
        url=args.url, jobs=args.jobs, clients=args.clients, steps=args.steps, video=args.video,
        duration=args.duration, token=token_from_env(), deadline_s=parse_duration(args.deadline),
    ))
    for line in report.errors:
        log.warning("%s", line)
    print(report.summary())
    if args.json:
        args.json.write_text(report.to_json())
    return 0 if report.ok else 1


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the transformer and VAE decoder (ONNX, TensorRT)",
                       description="Export the per-step transformer graph and the VAE decoder "
                                   "to ONNX, or build TensorRT engines from those graphs.")
    formats = p.add_subparsers(dest="format", required=True, parser_class=_Parser)
    o = formats.add_parser("onnx", help="write velocity.onnx and vae_decoder.onnx (fp32)",
                           description="Export the transformer's per-step velocity graph (the "
                                       "prepared conditions are inputs) and the VAE decoder, "
                                       "fp32, with dynamic batch and lengths; weights over 2 GB "
                                       "go to external data beside the graph.")
    o.add_argument("-o", "--output-dir", type=Path, required=True,
                   help="directory for the graphs")
    o.add_argument("--parts", nargs="+", choices=("dit", "vae"), default=["dit", "vae"],
                   help="what to export (default: dit vae)")
    o.add_argument("--opset", type=int, default=None, help="ONNX opset, 17 or newer (default: 19)")
    o.add_argument("--validate", action="store_true",
                   help="compare onnxruntime (CPU) with PyTorch at two durations; exit 1 above "
                        "--tolerance")
    o.add_argument("--tolerance", type=float, default=1e-3,
                   help="max abs difference --validate accepts (default: %(default)g)")
    o.add_argument("--model", default=HUB_REPO,
                   help=f"weights directory, hub repo id or {TINY_RANDOM!r} (default: %(default)s)")
    o.add_argument("--size", default="xxl", choices=[s for s in PRESETS if s != TINY.name],
                   help="transformer size (default: xxl)")
    o.set_defaults(handler=_export_onnx)
    t = formats.add_parser("tensorrt", help="build a TensorRT engine from an exported graph",
                           description="Build (or find in the engine cache) a TensorRT engine for "
                                       "ONNX, a graph written by 'foleyrt export onnx', and print "
                                       "its path. Needs the 'tensorrt' extra and a GPU.")
    t.add_argument("onnx", type=Path, help="velocity.onnx or vae_decoder.onnx")
    t.add_argument("--precision", default="bf16",
                   help="fp32, fp16, bf16, fp8 or int8 (default: bf16)")
    t.add_argument("--calibration", type=Path, default=None,
                   help="activation ranges for fp8/int8 (written by 'foleyrt calibrate')")
    t.add_argument("--durations", nargs=3, type=float, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="seconds of audio the engine serves (default: 1 8 15)")
    t.add_argument("--rows", nargs=3, type=int, default=None, metavar=("MIN", "OPT", "MAX"),
                   help="model rows per step, two per sample with guidance (default: 1 2 8)")
    t.add_argument("--cache-dir", type=Path, default=None,
                   help="engine cache (default: $FOLEYRT_ENGINE_CACHE or ~/.cache/foleyrt/engines)")
    t.add_argument("--timing-cache", type=Path, default=None,
                   help="TensorRT timing cache (default: one per GPU and version in the cache)")
    t.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5")
    t.add_argument("--workspace-gib", type=float, default=None, help="builder workspace limit")
    t.add_argument("--force", action="store_true", help="rebuild even if the cache has the engine")
    t.set_defaults(handler=_export_tensorrt)


def _export_onnx(args: argparse.Namespace) -> int:
    from foleyrt.config import RuntimeConfig
    from foleyrt.export.onnx import (
        VALIDATION_SECONDS,
        ExportConfig,
        decoder_cases,
        export_decoder,
        export_velocity,
        require_onnx,
        validate,
        velocity_cases,
    )
    from foleyrt.pipeline.models import load_models

    require_onnx()
    config = ExportConfig() if args.opset is None else ExportConfig(opset=args.opset)
    models = load_models(args.model, args.size, runtime=RuntimeConfig())
    parts = {"dit": (export_velocity, velocity_cases, models.dit, "velocity.onnx"),
             "vae": (export_decoder, decoder_cases, models.vae, "vae_decoder.onnx")}
    worst = 0.0
    for part in dict.fromkeys(args.parts):
        export, cases, module, name = parts[part]
        path = export(module, args.output_dir / name, config, source=models.source)
        print(path)
        if args.validate:
            errors = validate(path, cases(module, VALIDATION_SECONDS))
            measured = zip(errors, VALIDATION_SECONDS, strict=True)
            print(f"{name}: max abs vs PyTorch "
                  + ", ".join(f"{e:.2e} ({s:g} s)" for e, s in measured), flush=True)
            worst = max(worst, *errors)
    return 1 if worst > args.tolerance else 0


def _export_tensorrt(args: argparse.Namespace) -> int:
    from foleyrt.export.tensorrt import BuildConfig, EngineCache, ProfileSpec, build_engine

    ranges = {"seconds": args.durations, "rows": args.rows}
    profile = ProfileSpec(**{k: tuple(v) for k, v in ranges.items() if v is not None})
    build = BuildConfig(precision=args.precision, profile=profile, calibration=args.calibration,
                        optimization_level=args.opt_level, workspace_gib=args.workspace_gib,
                        timing_cache=args.timing_cache)
    print(build_engine(args.onnx, build, EngineCache(args.cache_dir), force=args.force))
    return 0


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="record activation ranges for --precision int8",
                       description="Run the pipeline on clips and record the input range of "
                                   "every quantised transformer GEMM, for --precision int8 "
                                   "(and int8/fp8 TensorRT engines). Runs eager, unquantised.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="VIDEO_OR_CSV",
                   help="a CSV with columns video,prompt (as for 'foleyrt batch'), a folder of "
                        "videos, or video files")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="calibration file to write (.safetensors)")
    p.add_argument("-p", "--prompt", default="", help="prompt of clips without a CSV one")
    p.add_argument("--steps", type=int, default=50, help="sampler steps per clip (default: 50)")
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale (default: 4.5)")
    p.add_argument("--seed", type=int, default=0, help="clip i uses SEED+i (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    _add_weight_options(p)
    p.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from foleyrt.accel.calibrate import calibrate, check_output, read_clips, save_calibration
    from foleyrt.pipeline.pipeline import FoleyPipeline

    check_output(args.output, overwrite=args.overwrite)
    clips = read_clips(args.inputs, prompt=args.prompt)
    pipe = FoleyPipeline.from_pretrained(args.model, args.size,
                                         RuntimeConfig.auto(args.device, args.dtype))
    calib = calibrate(pipe, clips, steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed)
    print(save_calibration(calib, args.output, overwrite=args.overwrite))
    return 0


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="make sound tracks for a folder of clips, video files or a CSV",
        description="Generate a sound track for every clip of INPUT with the models loaded "
                    "once. Results go to OUTDIR as <video name>.mp4 (-2, -3, ... when names "
                    "repeat) or the CSV's output name; items whose outputs exist are skipped, "
                    "so rerunning an interrupted batch resumes it. A bad clip fails alone: "
                    "exit status 1 if any item failed.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="a CSV with columns video,prompt (or text) and optionally "
                        "negative_prompt, seed, output (paths relative to the CSV's folder); "
                        "or a folder of videos; or video files")
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUTDIR",
                   help="folder for the results; created if its parent exists")
    p.add_argument("-p", "--prompt", default="", metavar="TEXT",
                   help="what the sound should be, for items without a CSV prompt")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what to steer away from, for items without a CSV one "
                        "(default: 'noisy, harsh')")
    p.add_argument("--format", choices=("mp4", "wav", "both"), default="mp4",
                   help="mp4 (the video with its new sound), wav, or both (default: mp4)")
    p.add_argument("--samples", type=int, default=1, metavar="N",
                   help="sound tracks per clip, numbered NAME_1, NAME_2, ... (default: 1)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (default: 50)")
    p.add_argument("--guidance", type=float, default=4.5, help="CFG scale (default: 4.5)")
    p.add_argument("--seed", type=int, default=None,
                   help="item i (from 0) uses SEED+i; a CSV seed wins (default: random, "
                        "recorded in the report)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo items whose outputs exist (default: skip them)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed item")
    p.add_argument("--report", type=Path, default=None, metavar="FILE",
                   help="write a JSON report: per item input, outputs, status, error, "
                        "seconds, seed")
    _add_model_options(p)
    p.set_defaults(handler=_batch)


def _batch(args: argparse.Namespace) -> int:
    from foleyrt.batch import (
        FORMATS,
        BatchReport,
        BatchSettings,
        ItemResult,
        Status,
        check_report_path,
        plan_batch,
        prepare_outdir,
        read_inputs,
        run_batch,
    )
    from foleyrt.pipeline.pipeline import FoleyPipeline

    # Everything cheap first: a bad CSV or name must not cost a model load.
    settings = BatchSettings(formats=FORMATS[args.format], samples=args.samples,
                             steps=args.steps, guidance=args.guidance, seed=args.seed,
                             overwrite=args.overwrite, fail_fast=args.fail_fast)
    runtime = _runtime(args)
    items = read_inputs(args.inputs, prompt=args.prompt, negative_prompt=args.negative_prompt)
    jobs = plan_batch(items, args.output_dir, settings)
    if args.report is not None:
        check_report_path(args.report)
    prepare_outdir(args.output_dir, args.inputs)
    report = BatchReport.start(jobs, overwrite=args.overwrite)

    def show(result: ItemResult) -> None:
        if result.status is Status.DONE:
            print(*result.job.outputs, sep="\n", flush=True)
        else:
            print(f"foleyrt: {result.line()}", file=sys.stderr, flush=True)

    log.info("%d item(s): %d to do, %d already done", len(jobs), len(report.pending),
             report.count(Status.SKIPPED))
    try:
        if report.pending:
            pipe = FoleyPipeline.from_pretrained(args.model, args.size, runtime)
            with _progress_bar(args.quiet) as progress:
                run_batch(pipe, report, settings, progress=progress, on_item=show)
    finally:
        if args.report is not None:
            report.write(args.report, settings, model=args.model, size=args.size)
    print(report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foleyrt", description="Fast, faithful HunyuanVideo-Foley runtime.")
    parser.add_argument("--version", action="version", version=f"foleyrt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_batch(sub)
    _add_verify(sub)
    _add_bench(sub)
    _add_serve(sub)
    _add_loadtest(sub)
    _add_export(sub)
    _add_calibrate(sub)
    return parser


# ---- handlers ------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from foleyrt.media.audio import check_output_path, numbered_paths
    from foleyrt.media.video import probe_video
    from foleyrt.pipeline.pipeline import FoleyPipeline

    video: Path | None = None if args.text_only else args.video
    if video is None and args.duration is None:
        raise UsageError("give a VIDEO, or --text-only/no video with --duration SECONDS")
    if video is None and args.output.suffix.lower() == ".mp4":
        raise UsageError("an .mp4 output needs a source video; use a .wav for text-only")
    # Cheap checks first: a bad path must not cost a model load.
    for path in numbered_paths(args.output, args.samples):
        check_output_path(path, overwrite=args.overwrite, inputs=[video] if video else [])
    if video is not None:
        probe_video(video)
    runtime = _runtime(args)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    log.info("seed %d", seed)
    pipe = FoleyPipeline.from_pretrained(args.model, args.size, runtime)
    with _progress_bar(args.quiet) as progress:
        result = pipe.generate(
            video, prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
            guidance_scale=args.guidance, num_samples=args.samples, seed=seed,
            duration=args.duration if video is None else None, progress=progress,
        )
    for path in result.save(args.output, overwrite=args.overwrite):
        print(path)
    log.info("timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from foleyrt.verify import run_manifest

    failed = total = 0
    for result in run_manifest(args.fixtures, only=args.only, device=args.device,
                               accel=args.accel):
        print(result.line(), flush=True)
        total += 1
        failed += not result.passed
    if total == 0:
        raise UsageError(f"no cases matched in {args.fixtures}")
    print(f"{total - failed}/{total} cases passed")
    return 1 if failed else 0


class _progress_bar:
    """A rich progress bar on stderr fed by the pipeline's progress callback."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.quiet:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        self._bar.start()
        self._task = self._bar.add_task("preparing", total=None)

        def update(event) -> None:  # type: ignore[no-untyped-def]
            self._bar.update(self._task, description=event.stage, completed=event.step,
                             total=event.total)

        return update

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self._bar.stop()


def _configure_logging(quiet: bool, verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s",
                        force=True)
    logging.getLogger("foleyrt").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    try:
        return args.handler(args)
    except FoleyError as exc:
        print(f"foleyrt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("foleyrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
