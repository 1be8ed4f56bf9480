"""`foleyrt generate`: one video (or a text prompt alone) to its sound track(s)."""

from __future__ import annotations

import argparse
import logging
import secrets
from pathlib import Path

from foleyrt.cli.options import add_model_options, add_request_options, request, runtime
from foleyrt.cli.progress import progress_bar
from foleyrt.errors import UsageError

log = logging.getLogger("foleyrt")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="make the sound track of a video (or text-only audio)",
                       description="Generate Foley audio for VIDEO (or from text alone).")
    p.add_argument("video", nargs="?", type=Path, help="input video (omit for text-only)")
    add_request_options(p, prompt_help="what the sound should be")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .mp4 (video with the new sound) or .wav; several samples are "
                        "numbered out_1.mp4, out_2.mp4, ...")
    p.add_argument("--text-only", action="store_true", help="ignore any video; needs --duration")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds, for text-only (past --window: generated in windows)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_model_options(p)
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from foleyrt.media.audio import check_output_path, numbered_paths
    from foleyrt.media.video import probe_video
    from foleyrt.pipeline.pipeline import FoleyPipeline

    video: Path | None = None if args.text_only else args.video
    if video is None and args.duration is None:
        raise UsageError("give a VIDEO, or --text-only/no video with --duration SECONDS")
    if video is not None and args.duration is not None:
        raise UsageError("--duration is for text-only generation: the video sets the length "
                         "(add --text-only to ignore the video)")
    if video is None and args.output.suffix.lower() == ".mp4":
        raise UsageError("an .mp4 output needs a source video; use a .wav for text-only")
    # Everything that can fail without a model first: a bad value or path must not cost a load.
    wanted = request(args, duration=args.duration)
    wanted.check_source(video is not None)
    for path in numbered_paths(args.output, wanted.samples):
        check_output_path(path, overwrite=args.overwrite, inputs=[video] if video else [])
    if video is not None:
        probe_video(video, max_seconds=wanted.max_duration)
    config = runtime(args)
    wanted = wanted.with_seed(wanted.seed if wanted.seed is not None
                              else secrets.randbelow(2**31))
    log.info("seed %d", wanted.seed)
    with (FoleyPipeline.from_pretrained(args.model, args.size, config) as pipe,
          progress_bar(args.quiet) as progress):
        result = pipe.generate(video, wanted, progress=progress)
    for path in result.save(args.output, overwrite=args.overwrite):
        print(path)
    if result.windows > 1:
        log.info("generated in %d windows of %g s overlapping by at least %g s",
                 result.windows, wanted.windowing.window_s, wanted.windowing.overlap_s)
    log.info("timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))
    return 0
