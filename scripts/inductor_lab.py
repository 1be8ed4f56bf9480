"""GPU experiment: one XXL transformer block (16 rows, 8 s) compiled under Inductor variants.

Times each block class's compiled forward replayed from a CUDA graph (median over replays),
per precision and per variant, and prints the slowest kernels of each: the evidence for
choosing compile settings (dynamic vs static shapes, wider persistent reductions, coordinate-
descent tuning of launch configs, Triton GEMM templates autotuned against cuBLAS) and the
formulation of the temporal convs' unfold. Output code of every variant can be copied for
reading.

    PYTHONPATH=src python scripts/inductor_lab.py [--precisions bf16 fp8+calibrated]
        [--variants base fused static pers cdt] [--blocks single triple] [--code-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quant_check import Case, _needs_calibration, calibrate_on

from foleyrt.accel.cudagraph import capture
from foleyrt.accel.fused import FUSED
from foleyrt.accel.process import configure_process
from foleyrt.accel.quant import quantize_
from foleyrt.bench.models import random_dit
from foleyrt.bench.profile import profiled_kernels
from foleyrt.config import PRESETS
from foleyrt.sampling.conditions import cfg_rows

# name: (Inductor config patch, dynamic shapes, wide persistent reductions: None, "inner"
# (reductions Inductor hints as inner only) or "any" (every reduction not hinted outer),
# another unfold formulation: None, "gather" or "cat" (see `unfold_mode`), the blocks on the
# hand-fused kernels of `accel.fused`)
VARIANTS = {
    "base": ({}, True, None, None, False),
    "fused": ({}, True, None, None, True),
    "static": ({}, False, None, None, False),
    "pers": ({}, True, "inner", None, False),
    "pers2": ({}, True, "any", None, False),
    "cdt": ({"coordinate_descent_tuning": True}, True, None, None, False),
    "blockptr": ({"triton.use_block_ptr": True}, True, None, None, False),
    "all": ({"coordinate_descent_tuning": True}, False, "inner", None, False),
    "mat": ({"max_autotune_gemm": True}, True, None, None, False),
    "gather": ({}, True, None, "gather", False),
    "cat": ({}, True, None, "cat", False),
}


def _unfold_as(mode: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """`TapLayout.gemm_input` written another way: "gather" (advanced indexing of the padded
    tokens) or "cat" (shifted slices side by side)."""

    def gemm_input(self: Any, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if k == 1 or self.taps_on_output:
            return x
        n = x.shape[1]
        xp = torch.nn.functional.pad(x, (0, 0, k // 2, k // 2))
        if mode == "gather":
            idx = torch.arange(n, device=x.device)[:, None] + torch.arange(k, device=x.device)
            return xp[:, idx].flatten(-2)
        return torch.cat([xp[:, j:j + n] for j in range(k)], dim=-1)

    return gemm_input


@contextlib.contextmanager
def unfold_mode(mode: str | None) -> Iterator[None]:
    """The temporal convs' unfold as `_unfold_as(mode)` (None: as written in the model)."""
    from foleyrt.models.layers import TapLayout

    old = TapLayout.gemm_input
    if mode is not None:
        TapLayout.gemm_input = _unfold_as(mode)
    try:
        yield
    finally:
        TapLayout.gemm_input = old


@contextlib.contextmanager
def wide_persistent_reductions(hints: str | None, limit: int = 2048) -> Iterator[None]:
    """Inductor keeps a row reduction in registers (one pass) only up to 1024 elements;
    allow `limit`."""
    if hints is None:
        yield
        return
    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    class Wide(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features: Any, cooperative_reduction: bool) -> bool:
            if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction):
                return True
            from torch._inductor.runtime.hints import ReductionHint

            hint = features.get_reduction_hint()
            ok = hint == ReductionHint.INNER if hints == "inner" else hint in (
                ReductionHint.INNER, ReductionHint.DEFAULT)
            return (ok and not cooperative_reduction
                    and V.graph.sizevars.statically_known_leq(features.reduction_numel, limit))

    old = V.choices
    V.set_choices_handler(Wide())
    try:
        yield
    finally:
        V.set_choices_handler(old)


def capture_calls(dit: Any, case: Case, clips: int) -> dict[str, tuple]:
    """The args of the first single and first triple block in one eager forward."""
    calls: dict[str, tuple] = {}

    def hook(name: str) -> Callable:
        def grab(module: Any, args: tuple, kwargs: dict) -> None:
            calls.setdefault(name, (module, args, kwargs))
        return grab

    handles = [dit.single_blocks[0].register_forward_pre_hook(hook("single"), with_kwargs=True),
               dit.triple_blocks[0].register_forward_pre_hook(hook("triple"), with_kwargs=True)]
    rows = cfg_rows(dit, case.cond, clips, True, case.n_latent)
    prepared = dit.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
    x = torch.cat([case.noise[clips]] * 2)
    dit.velocity(x, torch.full((x.shape[0],), 500.0, device=x.device), prepared)
    for h in handles:
        h.remove()
    return calls


def repeated_graph(fn: Callable[[], Any], calls: int = 10) -> torch.cuda.CUDAGraph:
    """`calls` calls of `fn` in one CUDA graph (after one warm-up round of them)."""
    return capture(lambda: [fn() for _ in range(calls)], warmup=1)[0]


def replay_ms(graph: torch.cuda.CUDAGraph, calls: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def median_ms(graph: torch.cuda.CUDAGraph, replays: int = 15) -> float:
    """Median ms per call of one graph replayed `replays` times in a row."""
    return statistics.median(replay_ms(graph) for _ in range(replays))


def interleaved(graphs: dict[str, torch.cuda.CUDAGraph], rounds: int = 30) -> dict[str, float]:
    """Median ms per call of each graph, replayed round-robin (clock drift hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in graphs}
    for _ in range(rounds):
        for label, graph in graphs.items():
            times[label].append(replay_ms(graph))
    return {k: statistics.median(v) for k, v in times.items()}


def output_code(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.py") if "async_compile" in p.read_text(errors="ignore")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=["fp8+calibrated", "bf16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--blocks", nargs="+", default=["single", "triple"])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--code-dir", type=Path)
    args = parser.parse_args()
    configure_process()  # as the CLI does
    device, spec = torch.device("cuda"), PRESETS["xxl"]
    import torch._inductor.config as inductor_config

    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_root"))
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, xxl 8 s, "
          f"{2 * args.clips} rows", flush=True)
    case = Case(spec, device)
    results = []
    with torch.inference_mode():
        calibration = None
        if any(_needs_calibration(p) for p in args.precisions):
            base = random_dit(spec, device, torch.bfloat16, seed=0)
            calibration = calibrate_on(base, case)
            del base
        graphs, keep = {}, []
        for precision in args.precisions:
            dit = random_dit(spec, device, torch.bfloat16, seed=0)
            if precision != "bf16":
                quantize_(dit, precision.partition("+")[0], calibration=calibration
                          if _needs_calibration(precision) else None)
            calls = capture_calls(dit, case, args.clips)
            for variant in args.variants:
                patch, dynamic, wide, unfold, fused = VARIANTS[variant]
                for block in args.blocks:
                    module, a, kw = calls[block]
                    if fused:
                        module = FUSED[type(module)].adopt(module)  # same weights
                    torch._dynamo.reset()
                    before = output_code(cache) if args.code_dir else set()
                    compiled = torch.compile(type(module).forward, fullgraph=True,
                                             dynamic=dynamic)

                    def run(c: Callable = compiled, m: Any = module, a: tuple = a,
                            kw: dict = kw) -> Any:
                        return c(m, *a, **kw)

                    # The formulation stays patched while the block runs (Dynamo guards on it).
                    formulation = contextlib.ExitStack()
                    formulation.enter_context(unfold_mode(unfold))
                    t0 = time.perf_counter()
                    with inductor_config.patch(patch), wide_persistent_reductions(wide):
                        run()
                        torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                    graph = graphs[(precision, variant, block)] = repeated_graph(run)
                    ms = median_ms(graph)
                    label = f"{precision:<15} {variant:<7} {block:<7}"
                    results.append((label, ms, compile_s))
                    print(f"{label} {ms * 1e3:8.1f} us/call  compile {compile_s:5.1f} s",
                          flush=True)
                    kernels = sorted(profiled_kernels(run, device), key=lambda k: -k.ms)
                    for k in kernels[:args.top]:
                        print(f"    {k.ms * 1e3:7.1f} us x{k.calls:<3} {k.name[:110]}")
                    formulation.close()
                    if args.code_dir:
                        name = precision.replace("+", "_")
                        dest = args.code_dir / f"{name}-{variant}-{block}"
                        dest.mkdir(parents=True, exist_ok=True)
                        for p in output_code(cache) - before:
                            shutil.copy(p, dest / p.name)
            keep.append((dit, calls))  # the graphs read these weights and inputs
        medians = interleaved(graphs)
    print("\nsummary (us per block call; interleaved: medians of round-robin replays)")
    for (label, ms, compile_s), key in zip(results, graphs, strict=True):
        print(f"{label} {ms * 1e3:8.1f}  interleaved {medians[key] * 1e3:8.1f}  "
              f"compile {compile_s:5.1f} s")


if __name__ == "__main__":
    main()
