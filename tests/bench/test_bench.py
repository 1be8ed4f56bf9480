"""`foleyrt bench` end to end on the CPU with the tiny config: the library yields rows of
numbers, the CLI prints them and writes the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foleyrt.cli import main


def test_bench_loop_and_pipeline_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "tiny", "--durations", "2", "--runs", "1", "--steps", "2",
                 "--device", "cpu", "--modes", "release-pattern", "eager",
                 "eager:int8-weight", "--pipeline", "eager", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "release-pattern" in printed and "pipeline tiny 2s eager" in printed
    data = json.loads(out.read_text())
    rows = {r["mode"]: r for r in data["loop"]}
    assert set(rows) == {"release-pattern", "eager", "eager:int8-weight"}
    assert rows["eager"]["latent_frames"] == 100 and rows["eager"]["gflop_per_forward"] > 0
    assert rows["eager"]["cos_vs_fp32"] > 0.9999  # bf16 against the fp32 run
    assert 0.99 < rows["eager:int8-weight"]["cos_vs_fp32"] < 1
    (pipeline,) = data["pipeline"]
    assert pipeline["latent_cos_vs_first"] == pytest.approx(1.0) and pipeline["median_s"] > 0
    assert {"video", "features", "denoise", "decode", "mux"} <= set(pipeline["stages"])


def test_unknown_mode_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--sizes", "tiny", "--modes", "turbo", "--device", "cpu"]) == 2
    assert "unknown bench mode" in capsys.readouterr().err


def test_bench_cfg_parallel_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One GPU against two, here one CPU process against two (gloo), same session."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "tiny", "--durations", "1", "--runs", "1", "--steps", "2",
                 "--device", "cpu", "--modes", "--cfg-parallel", "eager", "--json",
                 str(out)]) == 0
    assert "cfg-parallel tiny 1s eager: one GPU" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["cfg_parallel"]
    assert row["latent_frames"] == 50 and row["speedup"] > 0 and len(row["two_gpu_s"]) == 1
    assert row["cos_vs_one_gpu"] > 0.9999  # bf16: the halves round apart, slightly


def test_bench_long_rows(tmp_path: Path) -> None:
    """Long rows on the CPU: a short reference clip, then a clip in windows."""
    import torch

    from foleyrt.bench.long import bench_long
    from foleyrt.cli.bench import long_line

    ref, long = bench_long("tiny", [16.0], ["eager"], runs=1, steps=1,
                           device=torch.device("cpu"), video_dir=tmp_path, frame_size=(32, 32),
                           reference_s=1.0)
    assert (ref.duration_s, ref.windows, long.duration_s, long.windows) == (1.0, 1, 16.0, 2)
    assert long.median_s > long.denoise_s > 0 and long.peak_host_gb > 0
    assert "long tiny 16s eager: 2 window(s)" in long_line(long)


def test_a_calibrated_variant_records_its_own_ranges() -> None:
    """`PRECISION+calibrated`: static scales recorded on the bench's random weights, so the
    calibrated modes are measured without a calibration file of real weights."""
    import torch

    from foleyrt.bench.pipeline import variant_pipeline
    from foleyrt.config import PRESETS

    pipe = variant_pipeline(PRESETS["tiny"], "eager/int8+calibrated", torch.device("cpu"))
    assert pipe.runtime.precision is not None and pipe.runtime.precision.value == "int8"
    assert pipe.runtime.calibration is not None
