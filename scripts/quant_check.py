"""GPU check of `--precision` (issue 4): XXL with random weights, 8 s clip, 50 steps, CFG 4.5.

Per precision (bf16 first, the baseline): velocity cosine vs bf16 (eager, one forward of 2 rows
at t = 500), final-latent cosine vs bf16 (the compiled 50-step loop, same noise), the compiled
loop (Inductor blocks + CUDA graphs, `--accel compile`) for 1 clip (2 rows) and 8 clips (16
rows): median seconds over runs in which the precisions take turns, ms per forward, speed-up
over bf16; peak GPU memory (above what the precisions loaded before it hold); then the targets.
int8 and fp8+calibrated (fp8 with static activation scales) are calibrated on a bf16 eager loop
with other noise.

A label's `/unfused` suffix (e.g. `bf16/unfused`) keeps Inductor's own kernels for the blocks
instead of `accel.fused`'s.

    PYTHONPATH=src python scripts/quant_check.py [--precisions fp8 fp8+calibrated int8 ...]
                                                 [--runs 3] [--fp8-precise-accum]
                                                 [--profile [--profile-json PATH]]

Most of the time is Inductor compiling each precision's two block graphs (once per precision,
then cached on disk); one compile serves both row counts. Targets: fp8 loop <= 0.6 s, >= 1.2x
bf16 at 1 clip and >= 1.5x at 8 clips; fp8 / int8 final latent cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from foleyrt.accel import quant
from foleyrt.accel.calibration import ActivationRecorder, Calibration
from foleyrt.accel.process import configure_process
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules
from foleyrt.accel.recipes import apply
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.bench.models import random_conditions, random_dit
from foleyrt.bench.profile import forward_kernels
from foleyrt.cli.bench import format_profile
from foleyrt.config import PRESETS, ModelSpec
from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.conditions import cfg_rows
from foleyrt.sampling.denoiser import Denoiser, ModuleDenoiser
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import flow_schedule

SECONDS, STEPS, GUIDANCE = 8.0, 50, 4.5
TARGETS = {"loop_s": 0.6, "speedup_1": 1.2, "speedup_8": 1.5, "cosine": 0.99}


def cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


class Case:
    """The request every precision runs: conditions, noise per clip count, schedule."""

    def __init__(self, spec: ModelSpec, device: torch.device) -> None:
        self.device = device
        self.cond, self.n_latent = random_conditions(spec, SECONDS, device, seed=1)
        self.schedule = flow_schedule(STEPS, spec.diffusion, n_tokens=self.n_latent)
        g = torch.Generator(device).manual_seed(2)
        self.noise = {n: torch.randn(n, 128, self.n_latent, device=device, generator=g)
                      .bfloat16() for n in (1, 8)}

    def loop(self, denoiser: Denoiser, clips: int, noise: Tensor | None = None) -> Tensor:
        task = Task.whole(self.noise[clips] if noise is None else noise, GUIDANCE, self.cond)
        return denoise(denoiser, [task], self.schedule)[0]

    def velocity(self, dit: FoleyDiT) -> Tensor:
        rows = cfg_rows(dit, self.cond, 1, True, self.n_latent)
        prepared = dit.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
        x = torch.cat([self.noise[1]] * 2)
        return dit.velocity(x, torch.full((2,), 500.0, device=self.device), prepared)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, Tensor]:  # type: ignore[no-untyped-def]
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def calibrate_on(dit: FoleyDiT, case: Case) -> Calibration:
    other = torch.randn(1, 128, case.n_latent, device=case.device,
                        generator=torch.Generator(case.device).manual_seed(7)).bfloat16()
    with ActivationRecorder(quantizable_modules(dit)) as rec:
        case.loop(ModuleDenoiser(dit), 1, noise=other)
    return rec.calibration(AMAX_FLOOR, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["fp8", "fp8+calibrated", "int8"],
                        help="besides bf16 (always first): fp8, fp8+calibrated, int8, "
                             "int8-weight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fp8-precise-accum", action="store_true",
                        help="fp8 without Hopper's fast accumulation")
    parser.add_argument("--profile", action="store_true",
                        help="also print each precision's GPU kernel-time breakdown at 8 clips")
    parser.add_argument("--profile-json", metavar="PATH",
                        help="with --profile: every kernel (name, ms, calls) per precision")
    parser.add_argument("--size", default="xxl", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda", help="cpu runs eager: a smoke test only")
    args = parser.parse_args()
    configure_process()  # as the CLI does
    quant.FP8_FAST_ACCUM = not args.fp8_precise_accum
    device, spec = torch.device(args.device), PRESETS[args.size]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"{name}, torch {torch.__version__}, {spec.name} {SECONDS:g} s, {STEPS} steps, CFG; "
          f"fp8 fast accum {quant.FP8_FAST_ACCUM}", flush=True)
    case = Case(spec, device)
    rows, profiles = [], {}
    with torch.inference_mode():
        base = random_dit(spec, device, torch.bfloat16, seed=0)
        calibrated = any(_needs_calibration(p) for p in args.precisions)
        calibration = calibrate_on(base, case) if calibrated else None
        ref = {"velocity": case.velocity(base)}
        del base
        models = {}
        for precision in ["bf16", *[p for p in args.precisions if p != "bf16"]]:
            t0 = time.perf_counter()
            try:
                row, models[precision] = prepare(precision, spec, case, ref, calibration)
                if args.profile:
                    kernels = profile(precision, spec, case, calibration)
                    profiles[precision] = [asdict(k) for k in kernels]
                    print(format_profile(kernels,
                                         f"{spec.name} {precision} 8 clips {SECONDS:g}s"),
                          flush=True)
            except Exception as exc:  # noqa: BLE001 - report it and go on: GPU time is scarce
                print(f"  {precision}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                      flush=True)
                continue
            rows.append(row)
            print(f"  {precision}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
        time_interleaved(rows, models, case, args.runs)
    report(rows)
    if args.profile_json:
        Path(args.profile_json).write_text(json.dumps(profiles, indent=1))


def denoiser_for(precision: str, spec: ModelSpec, case: Case, calibration: Calibration | None,
                 disable: tuple[str, ...] = ()) -> tuple[FoleyDiT, Denoiser]:
    """A fresh random model of `precision` (a label: `fp8+calibrated/unfused` ...) compiled by
    the recipes; `/unfused` switches the fused kernels off (Inductor's own only)."""
    label, _, variant = precision.partition("/")
    dit = random_dit(spec, case.device, torch.bfloat16, seed=0)
    runtime = RuntimeConfig(
        device=case.device, dtype=torch.bfloat16,
        accel="compile" if case.device.type == "cuda" else "eager",
        precision=None if label == "bf16" else label.partition("+")[0],
        calibration=calibration if _needs_calibration(label) else None)
    off = ("fusion",) if variant == "unfused" else ()
    return dit, apply(dit, runtime, disable=(*off, *disable))


def profile(precision: str, spec: ModelSpec, case: Case, calibration: Calibration | None
            ) -> list:
    """Kernels of one un-graphed forward of 8 clips."""
    _, denoiser = denoiser_for(precision, spec, case, calibration, disable=("cuda-graphs",))
    task = Task.whole(case.noise[8], GUIDANCE, case.cond)
    return forward_kernels(denoiser, task, case.schedule)


def prepare(precision: str, spec: ModelSpec, case: Case, ref: dict[str, Tensor],
            calibration: Calibration | None) -> tuple[dict, Denoiser]:
    """Build, quantise and compile one precision; its row without timings (`ref` receives the
    bf16 latent: bf16 comes first). The model stays loaded for `time_interleaved`; peak memory
    is counted above what was allocated before it was built."""
    device = case.device
    gc.collect()
    base_bytes = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_bytes = torch.cuda.memory_allocated(device)
    dit, denoiser = denoiser_for(precision, spec, case, calibration)
    row = {"precision": precision, "velocity_cos": cosine(case.velocity(dit), ref["velocity"])}
    for clips in (1, 8):
        row[f"first_{clips}"], latent = timed(partial(case.loop, denoiser, clips), device)
        if clips == 1:
            ref.setdefault("latent", latent)
            row["latent_cos"] = cosine(latent, ref["latent"])
    row["peak_gb"] = ((torch.cuda.max_memory_allocated(device) - base_bytes) / 2**30
                      if device.type == "cuda" else float("nan"))
    return row, denoiser


def time_interleaved(rows: list[dict], models: dict[str, Denoiser], case: Case,
                     runs: int) -> None:
    """Median loop seconds per precision and clip count, the precisions taking turns in every
    run: clock and thermal drift over the minutes of a run then fall on all of them alike."""
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(runs):
        for row in rows:
            denoiser = models[row["precision"]]
            for clips in (1, 8):
                seconds = timed(partial(case.loop, denoiser, clips), case.device)[0]
                times.setdefault((row["precision"], clips), []).append(seconds)
    for row in rows:
        for clips in (1, 8):
            row[f"loop_{clips}"] = statistics.median(times[(row["precision"], clips)])


def _needs_calibration(label: str) -> bool:
    label = label.partition("/")[0]
    return label == "int8" or label.endswith("+calibrated")


def report(rows: list[dict]) -> None:
    if not rows or rows[0]["precision"] != "bf16":
        print("no bf16 baseline: nothing to compare")
        return
    base = rows[0]
    print(f"\n{'precision':<16}{'vel cos':>9}{'lat cos':>9}{'1 clip s':>10}{'ms/fwd':>8}"
          f"{'x bf16':>8}{'8 clips s':>10}{'ms/fwd':>8}{'x bf16':>8}{'peak GB':>9}{'1st s':>7}")
    for r in rows:
        print(f"{r['precision']:<16}{r['velocity_cos']:>9.5f}{r['latent_cos']:>9.5f}"
              f"{r['loop_1']:>10.3f}{r['loop_1'] / STEPS * 1e3:>8.2f}"
              f"{base['loop_1'] / r['loop_1']:>8.2f}{r['loop_8']:>10.3f}"
              f"{r['loop_8'] / STEPS * 1e3:>8.2f}{base['loop_8'] / r['loop_8']:>8.2f}"
              f"{r['peak_gb']:>9.1f}{r['first_1']:>7.0f}")
    checks = {f"{r['precision']} latent cos >= {TARGETS['cosine']}":
              r["latent_cos"] >= TARGETS["cosine"] for r in rows if r["precision"] != "bf16"}
    for r in rows:
        if r["precision"].startswith("fp8"):
            label = r["precision"]
            checks[f"{label} loop <= {TARGETS['loop_s']} s"] = r["loop_1"] <= TARGETS["loop_s"]
            for clips in (1, 8):
                target = TARGETS[f"speedup_{clips}"]
                checks[f"{label} >= {target}x bf16 ({clips} clip(s))"] = (
                    base[f"loop_{clips}"] / r[f"loop_{clips}"] >= target)
    print("\n" + "\n".join(f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks.items()))


if __name__ == "__main__":
    main()
