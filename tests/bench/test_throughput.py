"""`foleyrt bench --throughput` on the CPU with the tiny config: every mode (batched with
decoding threads, batched with decoding processes, one at a time) runs the batch code path
over the same clips, files written, and the JSON carries every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foleyrt.cli import main


def test_throughput_batched_and_one_at_a_time(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "throughput.json"
    assert main(["bench", "--throughput", "--size", "tiny", "--clips", "2", "--clip-seconds",
                 "1.2", "--steps", "2", "--device", "cpu", "--decode-in", "threads",
                 "processes", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clips/s" in printed and "gain: " in printed
    data = json.loads(out.read_text())
    threads, processes, alone = data["throughput"]
    assert [r["mode"] for r in data["throughput"]] == [
        "batched, threads, encoders ahead", "batched, processes, encoders ahead",
        "one at a time"]
    assert alone["groups"] == [1, 1] and sum(threads["groups"]) == sum(processes["groups"]) == 2
    for row in (threads, processes, alone):
        assert row["clips"] == 2 and row["failed"] == 0 and row["clips_per_s"] > 0
        assert row["audio_s_per_s"] == pytest.approx(1.2 * row["clips_per_s"])
        assert set(row["stages_s"]) == {"decode", "encode", "denoise", "finish", "write"}
        assert row["gpu_busy"] is None and row["peak_host_gb"] > 0
        assert 0 < row["first_group_s"] <= row["wall_s"]
    assert processes["stages_s"]["decode"] > 0 and threads["stages_s"]["decode"] > 0
    best = max(threads["clips_per_s"], processes["clips_per_s"])
    assert data["gain"] == pytest.approx(best / alone["clips_per_s"])


def test_a_second_run_reuses_the_clips_without_the_baseline(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`--workdir` keeps the clips for another precision's run; `--no-baseline` skips the
    one-at-a-time run that the first run already has."""
    args = ["bench", "--throughput", "--size", "tiny", "--clips", "1", "--clip-seconds", "1.2",
            "--steps", "1", "--device", "cpu", "--workdir", str(tmp_path)]
    assert main(args) == 0
    clip = tmp_path / "clips" / "clip_0000.mp4"
    written = clip.stat().st_mtime_ns
    out = tmp_path / "again.json"
    assert main([*args, "--no-baseline", "--json", str(out)]) == 0
    assert clip.stat().st_mtime_ns == written
    (row,) = json.loads(out.read_text())["throughput"]
    assert row["mode"] == "batched, threads, encoders ahead"
    assert "gain" not in capsys.readouterr().out.splitlines()[-1]
