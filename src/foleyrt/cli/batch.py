"""`foleyrt batch`: sound tracks for many clips with the models loaded once, resumable."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from foleyrt.cli.options import (
    DECODE_IN_CHOICES,
    ENCODERS_CHOICES,
    add_model_options,
    add_request_options,
    request,
    runtime,
    runtime_words,
)
from foleyrt.cli.progress import item_bar
from foleyrt.errors import UsageError

log = logging.getLogger("foleyrt")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="make sound tracks for a folder of clips, video files or a CSV",
        description="Generate a sound track for every clip of INPUT with the models loaded "
                    "once. Results go to OUTDIR as <video name>.mp4 (-2, -3, ... when names "
                    "repeat) or the CSV's output name; items whose outputs exist are skipped, "
                    "so rerunning an interrupted batch resumes it. A bad clip fails alone: "
                    "exit status 1 if any item failed. Clips are decoded in parallel while "
                    "the GPU denoises groups of clips of one length together, and finished "
                    "clips are written while it goes on.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="a CSV with columns video,prompt (or text) and optionally "
                        "negative_prompt, seed, output, index (the release's, accepted and "
                        "unused); a relative video path is looked for in the CSV's folder, "
                        "then in the working directory (the release's layout), the first "
                        "that exists is used; or a folder of videos; or video files")
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUTDIR",
                   help="folder for the results; created if its parent exists")
    add_request_options(p, prompt_help="what the sound should be, for items without a CSV "
                                       "prompt (a CSV negative_prompt likewise wins)",
                        seed_help="item i (from 0) uses SEED+i; a CSV seed wins (default: "
                                  "random, recorded in the report)")
    p.add_argument("--release-names", action="store_true",
                   help="name a CSV's outputs 0000, 0001, ... by row (from 0), as the "
                        "release's infer.py does; a row's output cell still wins")
    p.add_argument("--format", choices=("mp4", "wav", "both"), default="mp4",
                   help="mp4 (the video with its new sound), wav, or both (default: mp4)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo items whose outputs exist (default: skip them)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed item")
    p.add_argument("--report", type=Path, default=None, metavar="FILE",
                   help="write a JSON report: per item input, outputs, status, error, "
                        "seconds, seed")
    p.add_argument("--batch-rows", type=int, default=None, metavar="N",
                   help="transformer rows per forward at most: clips of one length share "
                        "forwards, each filling one row per sample, two with guidance, in "
                        "groups of a power of two of clips (default: auto, what the GPU's "
                        "free memory allows, at most 32)")
    p.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="clips decoded at once (default: up to 4, one per CPU core)")
    p.add_argument("--decode-in", choices=DECODE_IN_CHOICES, default=None,
                   help="threads: each clip decoded in a thread of this process (the "
                        "default on a CPU); processes: decoded and resized on the CPU in a "
                        "pool of processes, which frees this process from converting frames "
                        "(the default on a GPU without --offload: 11-14 %% more clips/s on an "
                        "H100, see docs/benchmarks.md)")
    p.add_argument("--encoders", choices=ENCODERS_CHOICES, default=None,
                   help="ahead: clips decoded and resized on the CPU, their features "
                        "computed by the GPU thread on a stream of its own while a second "
                        "thread queues the denoising (default); between: computed by the GPU "
                        "thread between groups, one network on the GPU at a time; "
                        "interleaved: as ahead, but queued on the denoising's stream between "
                        "its steps, one network on the GPU at a time; beside: "
                        "each clip's features computed by its decoder on a high-priority "
                        "CUDA stream, beside the transformer's denoising (which they slow "
                        "down, see docs/benchmarks.md §6)")
    add_model_options(p)
    g = p.add_argument_group("Ray (pip install 'foleyrt[ray]')")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine's GPU (default); ray: Ray Data, decoding as CPU "
                        "tasks and one GPU worker per --gpus-per-worker GPUs, on a local Ray "
                        "started for the run or the cluster at --ray-address")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing Ray cluster (auto, or ray://HEAD:10001); inputs, outputs "
                        "and --model must be at the same paths on every node")
    g.add_argument("--gpus-per-worker", type=float, default=None, metavar="N",
                   help="GPUs per generation worker; 0: CPU workers; 0.5: two per GPU "
                        "(default: 1, or 0 on a cluster without GPUs)")
    g.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="generation workers (default: the cluster's GPUs / --gpus-per-worker, "
                        "or 1 without GPUs)")
    p.set_defaults(handler=_batch)


_RAY_FLAGS = ("ray_address", "gpus_per_worker", "num_workers")
# Ray decodes as tasks on the cluster's CPUs and encodes on its GPU workers
_LOCAL_FLAGS = ("decode_workers", "decode_in", "encoders")


def _batch(args: argparse.Namespace) -> int:
    from foleyrt.accel.runtime import OffloadKind
    from foleyrt.batch import (
        DEFAULT_DECODE_WORKERS,
        FORMATS,
        BatchReport,
        BatchSettings,
        DecodeIn,
        DecodePool,
        Encoders,
        ItemResult,
        LocalOptions,
        Status,
        check_report_path,
        plan_batch,
        prepare_outdir,
        read_inputs,
        run_local,
    )
    from foleyrt.pipeline.pipeline import FoleyPipeline

    # Everything cheap first: a bad CSV or name must not cost a model load.
    settings = BatchSettings(formats=FORMATS[args.format], request=request(args),
                             overwrite=args.overwrite, fail_fast=args.fail_fast)
    on_ray = args.executor == "ray"
    misplaced = [f"--{f.replace('_', '-')}" for f in (_LOCAL_FLAGS if on_ray else _RAY_FLAGS)
                 if getattr(args, f) is not None]
    if misplaced:
        raise UsageError(f"{', '.join(misplaced)}: not with --executor {args.executor}")
    if on_ray:
        from foleyrt.batch.ray import RayOptions, require_ray

        require_ray()
        ray = RayOptions(args.ray_address, args.gpus_per_worker, args.num_workers,
                         args.batch_rows)
    else:
        config = runtime(args)
        workers = args.decode_workers
        local = LocalOptions(args.batch_rows,
                             DEFAULT_DECODE_WORKERS if workers is None else workers,
                             decode_in=(DecodeIn(args.decode_in) if args.decode_in
                                        else DecodeIn.default_for(config)),
                             encoders=Encoders(args.encoders or LocalOptions.encoders))
        if local.decode_in is DecodeIn.PROCESSES and config.offload.kind is not OffloadKind.NONE:
            raise UsageError("--decode-in processes: with --offload one thread runs every "
                             "stage in turn and decodes each clip itself; drop one of them")
    items = read_inputs(args.inputs, prompt=args.prompt, negative_prompt=args.negative_prompt,
                        release_names=args.release_names)
    jobs = plan_batch(items, args.output_dir, settings)
    if args.report is not None:
        check_report_path(args.report, args.inputs, jobs)
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
        pending = len(report.pending)
        local_run = bool(pending) and not on_ray
        with ExitStack() as stack:
            # Decoding processes start while the models load, ready for the first clips.
            decoders = (stack.enter_context(DecodePool(min(local.decode_workers, pending)))
                        if local_run and local.decode_in is DecodeIn.PROCESSES else None)
            # Loaded before the bar starts: its clips/s and ETA count generation only.
            pipe = (FoleyPipeline.from_pretrained(args.model, args.size, config)
                    .compile_encoders() if local_run else None)
            advance = stack.enter_context(item_bar(args.quiet or not pending, pending))

            def ended(result: ItemResult) -> None:
                show(result)
                if advance is not None:
                    advance()

            if pipe is not None:
                run_local(pipe, report, settings, local, on_item=ended, decoders=decoders)
            elif pending:
                from foleyrt.batch.ray import run_ray

                run_ray(args.model, args.size, runtime_words(args), report, settings, ray,
                        on_item=ended)
    finally:
        if args.report is not None:
            report.write(args.report, settings, model=args.model, size=args.size)
    print(report.summary())
    return 0 if report.ok else 1
