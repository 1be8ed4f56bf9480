"""`foleyrt batch` end to end through `cli.main` on the tiny-random model (each run loads
the model, so there are few of them): reports, resume, names, failures, options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from foleyrt import cli
from foleyrt.config import TINY_RANDOM
from foleyrt.media.synthetic import write_test_clips
from foleyrt.pipeline.pipeline import FoleyPipeline
from tests.batch.test_plan import write_csv

STEPS = "2"
NO_MODEL = "/nonexistent/weights"  # loading this fails: proves a run never loaded a model


def run_cli(
    capsys: pytest.CaptureFixture[str], *args: Any, quiet: bool = False
) -> tuple[int, str, str]:
    """`foleyrt [-q] batch ARGS --steps 2 --device cpu` -> (exit status, stdout, stderr)."""
    options = ["-q"] if quiet else []
    code = cli.main([*options, "batch", *map(str, args), "--steps", STEPS, "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_batch_bad_clip_report_and_resume(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = []
    real_load = FoleyPipeline.from_pretrained
    monkeypatch.setattr(FoleyPipeline, "from_pretrained",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))
    csv = write_csv(library / "shots.csv",  # relative paths, from the CSV's folder
                    "video,text,seed,output\n"
                    "clips/a.mp4,door slam,42,intro\n"
                    "clips/short.mp4,steps,,\n"
                    "other/b.mp4,rain,,\n")
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    args = (csv, "-o", out, "--format", "both", "--seed", "7", "--report", report_path,
            "--model", TINY_RANDOM)

    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 1 and len(loads) == 1
    assert stdout.splitlines()[-1] == "2 done, 0 skipped (existing), 1 failed"
    assert f"foleyrt: shots.csv:3 failed: {library / 'clips/short.mp4'}: video is 0.50 s" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["b.mp4", "b.wav", "intro.mp4", "intro.wav"]
    report = json.loads(report_path.read_text())
    assert report["summary"] == {"done": 2, "skipped": 0, "failed": 1, "not run": 0}
    rows = [(r["source"], r["status"], r["seed"], [Path(p).name for p in r["outputs"]])
            for r in report["items"]]
    assert rows == [("shots.csv:2", "done", 42, ["intro.mp4", "intro.wav"]),
                    ("shots.csv:3", "failed", 8, ["short.mp4", "short.wav"]),
                    ("shots.csv:4", "done", 9, ["b.mp4", "b.wav"])]
    assert report["items"][1]["error"].endswith("at least 1 s is needed")

    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, stderr = run_cli(capsys, *args)  # resume: only the bad clip is retried
    assert code == 1 and stdout.splitlines()[-1] == "0 done, 2 skipped (existing), 1 failed"
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_release_csv_runs_unchanged_with_release_names(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The release's layout: run from the folder its CSV's paths start from, outputs named
    by row like its infer.py's."""
    monkeypatch.chdir(library)
    csv = write_csv(library / "assets" / "test.csv",
                    "index,video,prompt\n0,clips/a.mp4,door slam\n1,other/b.mp4,rain\n")
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, csv, "-o", out, "--release-names", "--format", "wav",
                              "--model", TINY_RANDOM, quiet=True)
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["0000.wav", "0001.wav"]


def test_files_with_duplicate_stems_then_rerun_without_loading(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = (library / "clips/b.mp4", library / "other/b.mp4")
    out = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, *files, "-o", out, "--format", "wav", "--prompt", "rain",
                              "--model", TINY_RANDOM, "--decode-in", "processes")
    assert code == 0
    *written, summary = stdout.splitlines()  # paths as items end, in any order
    assert sorted(written) == [str(out / "b-2.wav"), str(out / "b.wav")]
    assert summary == "2 done, 0 skipped (existing), 0 failed"
    # Everything exists: no model is needed (this one would fail to load).
    code, stdout, _ = run_cli(capsys, *files, "-o", out, "--format", "wav", "--model", NO_MODEL)
    assert (code, stdout) == (0, "0 done, 2 skipped (existing), 0 failed\n")


def test_folder_fail_fast(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "1_broken.mp4").write_text("not a video")
    os.symlink(library / "clips/a.mp4", folder / "2_good.mp4")
    code, stdout, stderr = run_cli(capsys, folder, "-o", tmp_path / "out", "--fail-fast",
                                   "--model", TINY_RANDOM, quiet=True)
    assert code == 1
    assert stdout == "0 done, 0 skipped (existing), 1 failed, 1 not run\n"
    assert stderr.startswith("foleyrt: item 1 failed: ") and "not a readable media file" in stderr


@pytest.mark.parametrize(("csv_text", "message"), [
    ("video,prompt,speed\na.mp4,rain,2\n", "unknown column(s) 'speed'; the known columns are"),
    ("video,output\na.mp4,sub/dir\n", "shots.csv:2: output 'sub/dir' is not a plain file name"),
])
def test_cheap_errors_come_before_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv_text: str, message: str
) -> None:
    csv = write_csv(tmp_path / "shots.csv", csv_text)
    code, stdout, stderr = run_cli(capsys, csv, "-o", tmp_path / "out", "--model", NO_MODEL)
    assert code == 2 and stdout == ""
    assert stderr.startswith("foleyrt: error: ") and message in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--batch-rows", "0"], "--batch-rows must be at least 1, got 0"),
    (["--decode-workers", "0"], "--decode-workers must be at least 1, got 0"),
    (["--ray-address", "auto"], "--ray-address: not with --executor local"),
    (["--executor", "ray", "--decode-workers", "2"], "--decode-workers: not with --executor ray"),
])
def test_executor_options_are_checked_before_the_model(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str],
    message: str,
) -> None:
    code, stdout, stderr = run_cli(capsys, library / "clips/a.mp4", "-o", tmp_path / "out",
                                   *options, "--model", NO_MODEL)
    assert (code, stdout) == (2, "")
    assert stderr == f"foleyrt: error: {message}\n"


def test_a_report_never_replaces_a_file_of_the_run(
    library: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The report path may not be the CSV, a clip or an output (it used to replace them:
    the CSV or the clip became JSON, an output became a "done" item)."""
    csv = write_csv(library / "shots.csv", "video,prompt,output\nclips/a.mp4,door,intro\n")
    before = {p: p.read_bytes() for p in (csv, library / "clips/a.mp4")}
    out = tmp_path / "out"
    for report in (csv, library / "clips/a.mp4", out / "intro.wav"):
        code, stdout, stderr = run_cli(capsys, csv, "-o", out, "--format", "wav",
                                       "--report", report, "--model", NO_MODEL)
        assert (code, stdout) == (2, "")
        assert stderr == (f"foleyrt: error: {report}: is an input or an output of this "
                          "batch; choose another report name\n")
    assert {p: p.read_bytes() for p in before} == before and not out.exists()


def test_sigterm_stops_a_batch_as_ctrl_c_does(tmp_path: Path) -> None:
    """A `kill` (a scheduler's stop) mid-run: exit 143 with one line, finished items kept,
    no partial file, the report written, and the next run resumes. (Both signals used to
    leave stage threads running into the interpreter's exit, which aborted the process,
    and SIGTERM skipped every cleanup.)"""
    write_test_clips(tmp_path / "in", 8, 1.2, width=64, height=48, fps=10)
    out, report = tmp_path / "out", tmp_path / "report.json"
    command = [sys.executable, "-c", "import sys; from foleyrt.cli import main; sys.exit(main())",
               "batch", str(tmp_path / "in"), "-o", str(out), "--model", TINY_RANDOM,
               "--steps", "50", "--samples", "2", "--format", "both", "--device", "cpu",
               "--report", str(report)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("*.wav")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.splitlines()[-1] == "foleyrt: terminated"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    statuses = [item["status"] for item in json.loads(report.read_text())["items"]]
    assert statuses[0] == "done" and "not run" in statuses

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[-1] == (
        f"{statuses.count('not run')} done, {statuses.count('done')} skipped (existing), "
        "0 failed")
