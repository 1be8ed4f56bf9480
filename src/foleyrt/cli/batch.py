"""`foleyrt batch`: sound tracks for many clips with the models loaded once, resumable."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from foleyrt.cli.options import add_model_options, add_request_options, request, runtime
from foleyrt.cli.progress import progress_bar

log = logging.getLogger("foleyrt")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="make sound tracks for a folder of clips, video files or a CSV",
        description="Generate a sound track for every clip of INPUT with the models loaded "
                    "once. Results go to OUTDIR as <video name>.mp4 (-2, -3, ... when names "
                    "repeat) or the CSV's output name; items whose outputs exist are skipped, "
                    "so rerunning an interrupted batch resumes it. A bad clip fails alone: "
                    "exit status 1 if any item failed.")
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
    add_model_options(p)
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
    settings = BatchSettings(formats=FORMATS[args.format], request=request(args),
                             overwrite=args.overwrite, fail_fast=args.fail_fast)
    config = runtime(args)
    items = read_inputs(args.inputs, prompt=args.prompt, negative_prompt=args.negative_prompt,
                        release_names=args.release_names)
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
            pipe = FoleyPipeline.from_pretrained(args.model, args.size, config)
            with progress_bar(args.quiet) as progress:
                run_batch(pipe, report, settings, progress=progress, on_item=show)
    finally:
        if args.report is not None:
            report.write(args.report, settings, model=args.model, size=args.size)
    print(report.summary())
    return 0 if report.ok else 1
