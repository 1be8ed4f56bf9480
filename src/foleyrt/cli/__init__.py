"""`foleyrt` command line: generate | batch | verify | bench | serve | loadtest | export |
calibrate, one module per command group, each registering its sub-parsers with `add(sub)`.

Every user error ends as one line on stderr and a non-zero exit status (see `errors.py`);
results (written paths, verification lines) go to stdout. Handlers import what they run
(the pipeline, the server, ONNX, TensorRT) themselves, so that no command needs another's
optional extras or pays for importing them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from foleyrt.cli import batch, bench, calibrate, export, generate, serve, verify
from foleyrt.cli.options import Parser
from foleyrt.errors import FoleyError
from foleyrt.version import __version__

Handler = Callable[[argparse.Namespace], int]


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's stop), unwinding as Ctrl-C does: partial files removed,
    finished batch items kept for the resume."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread while a command runs (`serve` installs
    its own handler once its server starts); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="only errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (`export onnx`, not `export`)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for sub in subs for child in sub.choices.values() for leaf in _leaf_parsers(child)]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="foleyrt", description="Fast, faithful HunyuanVideo-Foley runtime.")
    parser.add_argument("--version", action="version", version=f"foleyrt {__version__}")
    _add_verbosity(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in (generate, batch, verify, bench, serve, export, calibrate):
        command.add(sub)
    # `-q`/`-v` also after the command (`foleyrt generate ... -q`); SUPPRESS keeps a value
    # given before the command.
    for leaf in _leaf_parsers(parser):
        _add_verbosity(leaf, default=argparse.SUPPRESS)
    return parser


def _configure_logging(quiet: bool, verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s",
                        force=True)
    logging.getLogger("foleyrt").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    from foleyrt.accel.process import configure_process

    configure_process()  # before anything touches the GPU
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    handler: Handler = args.handler
    try:
        with _sigterm_unwinds():
            return handler(args)
    except FoleyError as exc:
        print(f"foleyrt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("foleyrt: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("foleyrt: interrupted", file=sys.stderr)
        return 130
