"""`foleyrt batch`: input parsing and output planning as units, the run loop against the
tiny-random pipeline, and the command end to end through `cli.main` (each of those runs loads
the model, so there are few of them)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from foleyrt import cli
from foleyrt.batch import (
    BatchItem,
    BatchReport,
    BatchSettings,
    Status,
    check_name,
    check_report_path,
    plan_batch,
    prepare_outdir,
    read_csv,
    read_inputs,
    run_batch,
    safe_name,
    scan_folder,
)
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.request import GenerationRequest
from foleyrt.errors import InputError, OutputError, UsageError
from foleyrt.media.synthetic import write_test_clip
from foleyrt.pipeline.pipeline import FoleyPipeline, Progress

STEPS = "2"
NO_MODEL = "/nonexistent/weights"  # loading this fails: proves a run never loaded a model


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clips/{a,b}.mp4 (good, tiny), clips/short.mp4 (0.5 s: too short), clips/text.mp4 (not
    a video), other/b.mp4 (good; shares its stem with clips/b.mp4)."""
    root = tmp_path_factory.mktemp("library")
    (root / "clips").mkdir()
    (root / "other").mkdir()
    for name in ("clips/a.mp4", "clips/b.mp4", "other/b.mp4"):
        write_test_clip(root / name, 1.2, width=64, height=48, fps=10)
    write_test_clip(root / "clips/short.mp4", 0.5, width=64, height=48, fps=10)
    (root / "clips/text.mp4").write_text("not a video\n" * 20)
    return root


@pytest.fixture(scope="module")
def pipe() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cpu"))


def run_cli(
    capsys: pytest.CaptureFixture[str], *args: Any, quiet: bool = False
) -> tuple[int, str, str]:
    """`foleyrt [-q] batch ARGS --steps 2 --device cpu` -> (exit status, stdout, stderr)."""
    options = ["-q"] if quiet else []
    code = cli.main([*options, "batch", *map(str, args), "--steps", STEPS, "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


def test_csv_columns_paths_and_defaults(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "lib" / "shots.csv",
                    "\ufeffVideo, Text ,seed,output,negative_prompt\n"
                    'clips/a.mp4,"rain, heavy",7,intro.mp4,\n'
                    "\n"
                    "/abs/b.mp4,,,,wind\n")
    a, b = read_csv(csv, prompt="default", negative_prompt="hiss")
    assert a == BatchItem(tmp_path / "lib/clips/a.mp4", "rain, heavy", "hiss", 7, "intro.mp4",
                          "shots.csv:2")
    assert b == BatchItem(Path("/abs/b.mp4"), "default", "wind", None, None, "shots.csv:4")


@pytest.mark.parametrize(("text", "message"), [
    ("video,promt\nx.mp4,rain\n", "unknown column(s) 'promt'; the known columns are video, "
                                  "prompt, negative_prompt, seed, output"),
    ("video,prompt,text\nx.mp4,a,b\n", "column(s) prompt appear more than once"),
    ("prompt\nrain\n", "needs a 'video' column"),
    ("video,seed\nx.mp4,1.5\n", "shots.csv:2: seed '1.5' is not a whole number"),
    ("video,prompt\nx.mp4,rain,heavy\n", "shots.csv:2: 3 cells but 2 columns"),
    ("video,prompt\n,rain\n", "shots.csv:2: the video cell is empty"),
    ("video,output\nx.mp4,../up\n", "shots.csv:2: output '../up' is not a plain file name"),
    ("", "the CSV is empty"),
    ("video,prompt\n", "has a header but no rows"),
])
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        read_csv(write_csv(tmp_path / "shots.csv", text))
    assert message in str(info.value)


def test_release_csv_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19: the release's own CSV (`index,video,prompt`, paths from the folder the
    command runs in) reads unchanged; a path that exists beside the CSV still wins."""
    monkeypatch.chdir(tmp_path)
    for name in ("assets/clips/a.mp4", "assets/clips/b.mp4", "assets/assets/clips/b.mp4"):
        write_csv(tmp_path / name, "")
    csv = write_csv(tmp_path / "assets/test.csv",
                    "index,video,prompt\n"
                    "0,assets/clips/a.mp4,rain\n"
                    "1,assets/clips/b.mp4,steps\n"
                    "2,assets/clips/missing.mp4,wind\n")
    a, b, missing = read_csv(Path("assets/test.csv"))
    assert (a.video, a.prompt, a.output) == (Path("assets/clips/a.mp4"), "rain", None)
    assert b.video == Path("assets/assets/clips/b.mp4")  # beside the CSV: found there first
    assert missing.video == Path("assets/assets/clips/missing.mp4")  # fails naming this
    numbered = read_inputs([csv], release_names=True)
    assert [item.output for item in numbered] == ["0000", "0001", "0002"]
    with pytest.raises(UsageError, match="--release-names numbers the rows of a CSV"):
        read_inputs([tmp_path / "assets/clips"], release_names=True)


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "shots.csv").write_bytes("video,prompt\nx.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_csv(tmp_path / "shots.csv")


def test_folder_scan_and_input_kinds(tmp_path: Path) -> None:
    for name in ("b.MOV", "a.mp4", ".hidden.mp4", "._a.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.mp4").mkdir()  # a folder named like a video
    assert [p.name for p in scan_folder(tmp_path)] == ["a.mp4", "b.MOV"]
    items = read_inputs([tmp_path], prompt="rain")
    assert [(i.video.name, i.prompt, i.source) for i in items] == [("a.mp4", "rain", None),
                                                                    ("b.MOV", "rain", None)]
    files = read_inputs([tmp_path / "notes.txt", tmp_path / "a.mp4"])  # named: all taken
    assert [i.video.name for i in files] == ["notes.txt", "a.mp4"]
    with pytest.raises(InputError, match="no such file or folder: .*missing.mp4"):
        read_inputs([tmp_path / "a.mp4", tmp_path / "missing.mp4"])
    with pytest.raises(UsageError, match="one CSV, one folder, or one or more video files"):
        read_inputs([tmp_path, tmp_path / "a.mp4"])
    with pytest.raises(InputError, match="no videos in this folder"):
        read_inputs([tmp_path / "sub.mp4"])


# --------------------------------------------------------------------------------------------
# Planning outputs
# --------------------------------------------------------------------------------------------


def test_names_are_safe_unique_and_explicit_names_reserved(tmp_path: Path) -> None:
    items = [BatchItem(Path("x/clip.mp4")), BatchItem(Path("y/Clip.mov")),
             BatchItem(Path("z/clip.mkv")), BatchItem(Path("w/a.mp4"), output="clip-2.mp4",
                                                      source="s.csv:5"),
             BatchItem(Path('q/.a:b*c? .mp4'))]
    jobs = plan_batch(items, tmp_path, BatchSettings())
    # The CSV's clip-2 is reserved first, so the second derived clip becomes clip-3.
    assert [j.name for j in jobs] == ["clip", "Clip-3", "clip-4", "clip-2", "a_b_c_"]
    assert jobs[0].outputs == (tmp_path / "clip.mp4",)


def test_outputs_for_samples_and_formats(tmp_path: Path) -> None:
    [job] = plan_batch([BatchItem(Path("v/k.mp4"), output="kick")], tmp_path,
                       BatchSettings(formats=(".mp4", ".wav"), request=GenerationRequest(samples=2)))
    assert job.bases == (tmp_path / "kick.mp4", tmp_path / "kick.wav")
    assert [p.name for p in job.outputs] == ["kick_1.mp4", "kick_2.mp4", "kick_1.wav",
                                             "kick_2.wav"]


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a:b",
                                  "tab\there", "trailing.", "nul\x00"])
def test_output_name_must_be_plain(name: str) -> None:
    with pytest.raises(InputError, match="s.csv:2: output .* is not a plain file name"):
        check_name(name, "s.csv:2")


def test_output_names_keep_what_is_safe() -> None:
    for name in ("Kick drum (take 2).v1", "雨の音", "a..b"):
        assert check_name(name, "s.csv:2") == name == safe_name(name)


def test_plan_errors(tmp_path: Path) -> None:
    twice = [BatchItem(Path("a.mp4"), output="x", source="s.csv:2"),
             BatchItem(Path("b.mp4"), output="X.mp4", source="s.csv:3")]
    with pytest.raises(InputError, match="s.csv:3: output 'X' is also used at s.csv:2"):
        plan_batch(twice, tmp_path, BatchSettings())
    wav_name = [BatchItem(Path("a.mp4"), output="x.wav", source="s.csv:2")]
    with pytest.raises(InputError, match="ends in .wav but the batch writes .mp4"):
        plan_batch(wav_name, tmp_path, BatchSettings())
    with pytest.raises(UsageError, match="would replace the input of item 1"):
        plan_batch([BatchItem(tmp_path / "a.mp4")], tmp_path, BatchSettings())
    with pytest.raises(InputError, match="steps must be between 1 and"):
        BatchSettings(request=GenerationRequest(steps=0))


def test_seeds(tmp_path: Path) -> None:
    items = [BatchItem(Path("a.mp4")), BatchItem(Path("b.mp4"), seed=99),
             BatchItem(Path("c.mp4"))]
    assert [j.seed for j in plan_batch(items, tmp_path, BatchSettings(request=GenerationRequest(seed=10)))] == [10, 99, 12]
    assert [j.seed for j in plan_batch(items, tmp_path, BatchSettings())] == [None, 99, None]


def test_outdir(tmp_path: Path) -> None:
    assert prepare_outdir(tmp_path / "new", []).is_dir()
    with pytest.raises(OutputError, match="parent folder .* does not exist"):
        prepare_outdir(tmp_path / "no" / "deeper", [])
    with pytest.raises(UsageError, match="is the input folder"):
        prepare_outdir(tmp_path / "new", [tmp_path / "new"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare_outdir(tmp_path / "file", [])
    with pytest.raises(OutputError, match="is a folder; give a file name"):
        check_report_path(tmp_path / "new")
    with pytest.raises(OutputError, match="does not exist"):
        check_report_path(tmp_path / "no" / "report.json")


def test_resume_marks(tmp_path: Path) -> None:
    items = [BatchItem(Path(f"{n}.mp4")) for n in "abc"]
    jobs = plan_batch(items, tmp_path, BatchSettings(formats=(".mp4", ".wav")))
    for path in (*jobs[0].outputs, jobs[1].outputs[0]):  # a done, b half done, c not started
        path.write_bytes(b"done")
    report = BatchReport.start(jobs, overwrite=False)
    assert [r.status for r in report.items] == [Status.SKIPPED, Status.NOT_RUN, Status.NOT_RUN]
    assert report.summary() == "0 done, 1 skipped (existing), 0 failed, 2 not run"
    assert not BatchReport.start(jobs, overwrite=True).count(Status.SKIPPED)


# --------------------------------------------------------------------------------------------
# The run loop
# --------------------------------------------------------------------------------------------


def test_partial_item_is_redone_whole(pipe: FoleyPipeline, library: Path, tmp_path: Path) -> None:
    settings = BatchSettings(formats=(".wav",), request=GenerationRequest(samples=2, steps=2, seed=3))
    [job] = plan_batch([BatchItem(library / "clips/a.mp4")], tmp_path, settings)
    job.outputs[0].write_bytes(b"stale")  # sample 1 of an interrupted run
    events: list[Progress] = []
    report = run_batch(pipe, BatchReport.start([job], overwrite=False), settings,
                       progress=events.append)
    assert report.items[0].status is Status.DONE and report.items[0].seed == 3
    assert Progress("1/1 a.mp4 denoise", 2, 2) in events
    assert all(p.stat().st_size > 1000 for p in job.outputs)


def failing_generate(pipe: FoleyPipeline, bad: str, exc: BaseException) -> Callable[..., Any]:
    real = pipe.generate

    def generate(video: Path, *args: Any, **kwargs: Any) -> Any:
        if video.name == bad:
            raise exc
        return real(video, *args, **kwargs)

    return generate


def test_out_of_memory_fails_the_item_only(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    monkeypatch.setattr(pipe, "generate", failing_generate(pipe, "a.mp4", oom))
    settings = BatchSettings(formats=(".wav",), request=GenerationRequest(steps=2))
    items = [BatchItem(library / "clips/a.mp4"), BatchItem(library / "clips/b.mp4")]
    report = run_batch(pipe, BatchReport.start(plan_batch(items, tmp_path, settings),
                                               overwrite=False), settings)
    first, second = report.items
    assert first.status is Status.FAILED and second.status is Status.DONE
    assert first.line() == (f"item 1 failed: {library / 'clips/a.mp4'}: the GPU ran out of "
                            "memory on this clip; try fewer --samples, a shorter clip, or a "
                            "smaller --size")


def test_a_bug_is_recorded_then_raised(
    pipe: FoleyPipeline, library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipe, "generate", failing_generate(pipe, "a.mp4", KeyError("oops")))
    settings = BatchSettings(formats=(".wav",), request=GenerationRequest(steps=2))
    items = [BatchItem(library / "clips/a.mp4"), BatchItem(library / "clips/b.mp4")]
    report = BatchReport.start(plan_batch(items, tmp_path, settings), overwrite=False)
    with pytest.raises(KeyError):
        run_batch(pipe, report, settings)
    assert [r.status for r in report.items] == [Status.FAILED, Status.NOT_RUN]
    assert "internal error (KeyError: 'oops')" in str(report.items[0].error)


# --------------------------------------------------------------------------------------------
# End to end through the CLI
# --------------------------------------------------------------------------------------------


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
                              "--model", TINY_RANDOM)
    assert code == 0
    assert stdout.splitlines() == [str(out / "b.wav"), str(out / "b-2.wav"),
                                   "2 done, 0 skipped (existing), 0 failed"]
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
