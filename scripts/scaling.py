"""Data-parallel scaling of `foleyrt batch` (issue 20): clips/s on one GPU (the local executor)
and through the Ray executor on N GPUs, one fresh batch process each, in one run; prints
clips/s per N and the scaling efficiency (clips/s on N GPUs over N times one GPU's). How the
rates are measured: `foleyrt.bench.scaling`. Figures go to docs/benchmarks.md.

    PYTHONPATH=src python scripts/scaling.py --gpus 2 4 8 [--clips-per-gpu 16] [--duration 10]
        [--warmup-per-gpu 2] [--json scaling.json] -- --model random --size xxl
        --accel compile --steps 50

Everything after `--` goes to every `foleyrt batch` (model, size, acceleration, request).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from foleyrt.bench.scaling import ScalingSpec, run_scaling
from foleyrt.errors import FoleyError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="*", default=[2, 4, 8],
                        help="GPU counts of the Ray runs (default: 2 4 8)")
    parser.add_argument("--clips-per-gpu", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    parser.add_argument("--warmup-per-gpu", type=int, default=2,
                        help="completions per GPU left out of the steady rate")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="clips and outputs (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("options", nargs="*", help="after --: options of every foleyrt batch")
    args = parser.parse_args()
    spec = ScalingSpec(gpus=tuple(args.gpus), clips_per_gpu=args.clips_per_gpu,
                       duration_s=args.duration, warmup_per_gpu=args.warmup_per_gpu,
                       options=tuple(args.options))
    print(f"{'engine':<8}{'GPUs':>5}{'clips':>7}{'wall s':>9}{'clips/s wall':>14}"
          f"{'clips/s steady':>16}{'efficiency':>12}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for row in run_scaling(spec, args.work_dir or Path(scratch)):
                print(f"{row.engine:<8}{row.gpus:>5}{row.clips:>7}{row.wall_s:>9.1f}"
                      f"{row.wall_clips_per_s:>14.3f}{row.steady_clips_per_s:>16.3f}"
                      f"{row.efficiency:>12.3f}", flush=True)
                rows.append({**asdict(row), "wall_clips_per_s": row.wall_clips_per_s})
        except FoleyError as exc:
            print(f"scaling: error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        args.json.write_text(json.dumps({"spec": asdict(spec), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
