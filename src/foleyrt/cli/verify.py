"""`foleyrt verify`: parity against fixtures recorded from the official release."""

from __future__ import annotations

import argparse
from pathlib import Path

from foleyrt.errors import UsageError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check parity against fixtures of the official release",
                       description="Run every case of a fixture manifest; exit 1 if any fails.")
    p.add_argument("fixtures", type=Path, help="directory holding manifest.json")
    p.add_argument("--only", nargs="*", default=None, help="case id prefixes to run")
    p.add_argument("--device", default="cpu", help="device to run the models on (default: cpu)")
    p.add_argument("--accel", default="eager", help="acceleration mode under test")
    p.set_defaults(handler=_verify)


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
