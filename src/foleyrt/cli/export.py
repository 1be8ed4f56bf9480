"""`foleyrt export onnx` (the per-step transformer graph and the VAE decoder) and `foleyrt
export tensorrt` (engines built from those graphs)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foleyrt.cli.options import Parser
from foleyrt.config import HUB_REPO, PRESETS, TINY, TINY_RANDOM
from foleyrt.errors import OutputError, UsageError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the transformer and VAE decoder (ONNX, TensorRT)",
                       description="Export the per-step transformer graph and the VAE decoder "
                                   "to ONNX, or build TensorRT engines from those graphs.")
    formats = p.add_subparsers(dest="format", required=True, parser_class=Parser)
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
    o.add_argument("--overwrite", action="store_true", help="replace graphs already there")
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


_GRAPH_FILES = {"dit": "velocity.onnx", "vae": "vae_decoder.onnx"}


def _export_onnx(args: argparse.Namespace) -> int:
    from foleyrt.accel.runtime import RuntimeConfig
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
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UsageError(f"--tolerance must be a positive number, got {args.tolerance:g}")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UsageError(f"{args.output_dir}: is a file; -o names a directory for the graphs")
    for part in args.parts:
        graph = args.output_dir / _GRAPH_FILES[part]
        if graph.exists() and not args.overwrite:
            raise OutputError(f"{graph}: exists; pass --overwrite to replace it")
    models = load_models(args.model, args.size, runtime=RuntimeConfig())
    # Per part: exporter, validation cases, module (the two parts' modules differ)
    parts: dict[str, tuple[Callable[..., Path], Callable[..., Any], object]] = {
        "dit": (export_velocity, velocity_cases, models.dit),
        "vae": (export_decoder, decoder_cases, models.vae),
    }
    worst = 0.0
    for part in dict.fromkeys(args.parts):
        export, cases, module = parts[part]
        name = _GRAPH_FILES[part]
        path = export(module, args.output_dir / name, config, source=models.source)
        print(path)
        if args.validate:
            errors = validate(path, cases(module, VALIDATION_SECONDS))
            measured = zip(errors, VALIDATION_SECONDS, strict=True)
            print(f"{name}: max abs vs PyTorch "
                  + ", ".join(f"{e:.2e} ({s:g} s)" for e, s in measured), flush=True)
            worst = max(worst, *errors)
    if worst > args.tolerance:
        print(f"FAIL: max abs {worst:.2e} is over --tolerance {args.tolerance:g}", flush=True)
        return 1
    return 0


def _export_tensorrt(args: argparse.Namespace) -> int:
    from foleyrt.accel.engines import EngineCache
    from foleyrt.export.build_config import BuildConfig, ProfileSpec
    from foleyrt.export.tensorrt import build_engine

    ranges = {"seconds": args.durations, "rows": args.rows}
    profile = ProfileSpec(**{k: tuple(v) for k, v in ranges.items() if v is not None})
    build = BuildConfig(precision=args.precision, profile=profile, calibration=args.calibration,
                        optimization_level=args.opt_level, workspace_gib=args.workspace_gib,
                        timing_cache=args.timing_cache)
    print(build_engine(args.onnx, build, EngineCache(args.cache_dir), force=args.force))
    return 0
