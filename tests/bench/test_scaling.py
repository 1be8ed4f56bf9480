"""The data-parallel scaling harness: its rates from completion times, its `foleyrt batch`
command lines, and the one-GPU baseline run for real (the tiny model on the CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from foleyrt.bench.scaling import (
    ONE_GPU,
    RAY,
    ScalingSpec,
    batch_command,
    run_scaling,
    steady_rate,
)
from foleyrt.errors import FoleyError


def test_the_steady_rate_leaves_out_the_warm_up_completions() -> None:
    done = [9.0, 10.0, 10.5, 11.0, 11.5, 12.0]  # the first clip paid the start-up
    assert steady_rate(done, 1) == pytest.approx(5 / 3)
    assert steady_rate(done, 2) == pytest.approx(4 / 2)
    assert steady_rate(done, 0) == pytest.approx(5 / 3)
    with pytest.raises(FoleyError, match="too few"):
        steady_rate(done[:2], 2)


def test_ray_runs_ask_for_one_gpu_per_worker(tmp_path: Path) -> None:
    spec = ScalingSpec(options=("--model", "random", "--size", "xxl"))
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    ray = batch_command(spec, RAY, 4, clips, tmp_path / "out")
    assert ray[:3] == [sys.executable, "-m", "foleyrt.cli"]
    assert ray[ray.index("batch") + 1:][:2] == [str(c) for c in clips]
    assert ray[-6:] == ["--executor", "ray", "--num-workers", "4", "--gpus-per-worker", "1"]
    assert "--executor" not in batch_command(spec, ONE_GPU, 1, clips, tmp_path / "out")


def test_the_one_gpu_baseline_runs_foleyrt_batch(tmp_path: Path) -> None:
    spec = ScalingSpec(gpus=(), clips_per_gpu=3, duration_s=1.0, warmup_per_gpu=1,
                       options=("--model", "tiny-random", "--device", "cpu", "--steps", "2"))
    (row,) = run_scaling(spec, tmp_path)
    assert (row.engine, row.gpus, row.clips, row.efficiency) == (ONE_GPU, 1, 3, 1.0)
    assert row.steady_clips_per_s > 0 and row.wall_clips_per_s > 0
    assert len(list((tmp_path / "out-1").glob("*.wav"))) == 3
