"""CFG-parallel on the CPU: two processes over gloo give one process's numbers (fp32, max abs
<= 1e-5), stop together on a cancel, survive the loss of the second process, and end cleanly.

The tests share one parallel pipeline (each start is a fresh Python process) and run in file
order: a process holds one torch.distributed group at a time, so the start-up failure comes
before the shared pipeline exists and the close comes last.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from foleyrt.accel.parallel import CfgParallel
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.errors import Cancelled, ParallelError, UsageError, WeightsError
from foleyrt.pipeline.models import load_denoiser, random_models
from foleyrt.pipeline.pipeline import Encoded, FoleyPipeline, Progress
from foleyrt.request import GenerationRequest
from foleyrt.sampling.loop import Task, Window, denoise
from foleyrt.sampling.schedule import flow_schedule
from tests.tiny import tiny_conditions

TOLERANCE = 1e-5  # fp32: the halves' GEMMs have fewer rows than the whole, so round apart
GUIDED = GenerationRequest(prompt="a ball", duration=1.0, steps=3, samples=2, seed=3)
TEXT = GenerationRequest(prompt="rain", duration=1.0, steps=3, seed=8)
UNGUIDED = GenerationRequest(prompt="rain", duration=1.0, steps=3, guidance=1.0, seed=9)


def test_a_second_rank_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    parallel = CfgParallel(RuntimeConfig(parallel="cfg"),
                           partial(load_denoiser, str(tmp_path / "no-weights"), "xxl"))
    local = random_models().place(RuntimeConfig()).denoiser
    assert local is not None
    try:
        with pytest.raises(WeightsError, match="no-weights"):
            parallel.attach(local)
    finally:
        parallel.close()
    assert not dist.is_initialized()


def test_a_parallel_runtime_needs_its_second_process() -> None:
    with pytest.raises(UsageError, match="from_pretrained"):
        FoleyPipeline(random_models().place(RuntimeConfig()), RuntimeConfig(parallel="cfg"))


@pytest.fixture(scope="module")
def single() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig())


@pytest.fixture(scope="module")
def parallel() -> Iterator[FoleyPipeline]:
    with FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig(parallel="cfg")) as pipe:
        yield pipe


def _max_abs(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    assert a is not None and b is not None
    return (a - b).abs().max().item()


@torch.inference_mode()
def test_two_cpu_processes_give_one_process_numbers(single: FoleyPipeline,
                                                    parallel: FoleyPipeline) -> None:
    one, two = single.generate(None, GUIDED), parallel.generate(None, GUIDED)
    assert _max_abs(one.latents, two.latents) <= TOLERANCE
    assert _max_abs(one.audio, two.audio) <= TOLERANCE


@pytest.fixture(scope="module")
def encoded(single: FoleyPipeline) -> list[Encoded]:
    """Text-only requests with their features: guided, then unguided."""
    with torch.inference_mode():
        return [single.encode(None, r) for r in (TEXT, UNGUIDED)]


@torch.inference_mode()
def test_guided_and_unguided_requests_together(single: FoleyPipeline, parallel: FoleyPipeline,
                                               encoded: list[Encoded]) -> None:
    """An unguided request runs whole on both ranks: its numbers are exactly one process's."""
    (guided, plain), (guided2, plain2) = single.denoise(encoded), parallel.denoise(encoded)
    assert _max_abs(guided, guided2) <= TOLERANCE
    assert torch.equal(plain, plain2)


@torch.inference_mode()
def test_the_windows_of_a_long_latent_split_alike(single: FoleyPipeline,
                                                  parallel: FoleyPipeline) -> None:
    """Overlapping windows (long clips): every window's guided rows are split over the ranks
    and blended as in one process (the tasks travel to rank 1 whole, windows and taper)."""
    assert parallel.parallel is not None
    windows = tuple(Window(start, 40, tiny_conditions(start)) for start in (0, 30))
    noise = torch.randn(2, 128, 70, generator=torch.Generator().manual_seed(0))
    task = Task(noise, 4.5, windows, taper=6)
    schedule = flow_schedule(3, single.models.spec.diffusion, n_tokens=70)
    (want,) = denoise(single.denoiser, [task], schedule)
    assert _max_abs(want, parallel.parallel.denoise([task], schedule)[0]) <= TOLERANCE


@torch.inference_mode()
def test_a_cancel_stops_both_ranks_and_the_next_request_runs(
        single: FoleyPipeline, parallel: FoleyPipeline, encoded: list[Encoded]) -> None:
    def cancel_at_step_2(event: Progress) -> bool:
        return event.step == 2

    with pytest.raises(Cancelled):
        parallel.denoise(encoded[:1], progress=cancel_at_step_2)
    assert _max_abs(single.denoise(encoded[:1])[0], parallel.denoise(encoded[:1])[0]) <= TOLERANCE


@torch.inference_mode()
def test_a_lost_second_rank_fails_one_request_and_is_replaced(
        single: FoleyPipeline, parallel: FoleyPipeline, encoded: list[Encoded]) -> None:
    assert parallel.parallel is not None

    def kill_rank1(event: Progress) -> None:
        if event.step == 1:
            peer = parallel.parallel._peer  # type: ignore[union-attr]
            os.kill(peer.process.pid, signal.SIGKILL)
            peer.process.wait()

    with pytest.raises(ParallelError, match="peer on cpu failed: its process ended"):
        parallel.denoise(encoded[:1], progress=kill_rank1)
    (want,) = single.denoise(encoded[:1])
    assert _max_abs(want, parallel.denoise(encoded[:1])[0]) <= TOLERANCE
    # Lost between requests: the next request starts a new one first.
    kill_rank1(Progress("denoise", 1, 1))
    assert _max_abs(want, parallel.denoise(encoded[:1])[0]) <= TOLERANCE


def test_close_ends_the_second_process(parallel: FoleyPipeline,
                                       encoded: list[Encoded]) -> None:
    assert parallel.parallel is not None
    process = parallel.parallel._peer.process  # type: ignore[union-attr]
    parallel.close()
    assert process.poll() == 0 and not dist.is_initialized()
    with pytest.raises(UsageError, match="closed"):
        parallel.denoise(encoded[:1])
