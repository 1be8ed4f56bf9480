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
from foleyrt.config import HUB_REPO, PRESETS, TINY, TINY_RANDOM
from foleyrt.errors import FoleyError, UsageError

log = logging.getLogger("foleyrt")

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default=HUB_REPO,
                   help=f"weights directory, hub repo id, or {TINY_RANDOM!r} (default: %(default)s)")
    sizes = [s for s in PRESETS if s != TINY.name]
    g.add_argument("--size", default="xxl", choices=sizes, help="transformer size (default: xxl)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=None,
                   help="transformer dtype: bf16, fp16 or fp32 (default: bf16 on CUDA, else fp32)")
    g.add_argument("--accel", default="eager", help="acceleration mode (default: eager)")


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
    p.add_argument("--modes", nargs="+", default=["release-pattern", "eager", "compile"])
    p.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the fp32 eager reference (no accuracy columns)")
    p.add_argument("--pipeline", action="store_true",
                   help="also time video file -> MP4 (size of --sizes[0], modes eager/compile)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from foleyrt.bench import MODES, bench_loop, bench_pipeline
    from foleyrt.config import parse_device

    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        raise UsageError(f"unknown bench mode(s) {unknown}; choose from {list(MODES)}")
    device = parse_device(args.device)
    report = bench_loop(args.sizes, args.durations, args.modes, args.runs, args.steps,
                        args.guidance, device, reference=not args.no_reference)
    if args.pipeline:
        modes = [m for m in args.modes if m != "release-pattern"]
        report.pipeline = bench_pipeline(args.sizes[0], args.durations, modes, args.runs,
                                         args.steps, device)
    print(report.table())
    if args.json:
        args.json.write_text(report.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foleyrt", description="Fast, faithful HunyuanVideo-Foley runtime.")
    parser.add_argument("--version", action="version", version=f"foleyrt {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_verify(sub)
    _add_bench(sub)
    return parser


# ---- handlers ------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from foleyrt.config import RuntimeConfig
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
    runtime = RuntimeConfig.auto(args.device, args.dtype, accel=args.accel)
    from foleyrt.accel import check_mode

    check_mode(args.accel)
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
