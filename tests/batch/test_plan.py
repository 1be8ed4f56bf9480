"""`foleyrt batch`'s inputs and plan as units: reading CSVs, folders and files, naming the
outputs, seeds, the output folder and the resume marks (no model involved)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
    safe_name,
    scan_folder,
)
from foleyrt.errors import InputError, OutputError, UsageError
from foleyrt.request import GenerationRequest


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
    ("video,seed\nx.mp4,1_000\n", "shots.csv:2: seed '1_000' is not a whole number"),
    ("video,seed\nx.mp4,-3\n", "shots.csv:2: seed -3 is not between 0 and"),
    ("video,prompt\nx.mp4,rain\ny.mp4," + "rain " * 201 + "\n",
     "shots.csv:3: prompt is longer than 1000 characters"),
    ("video,prompt\nx.mp4,rain,heavy\n", "shots.csv:2: 3 cells but 2 columns"),
    ("video,prompt\n,rain\n", "shots.csv:2: the video cell is empty"),
    ("video,output\nx.mp4,../up\n", "shots.csv:2: output '../up' is not a plain file name"),
    # A row is named by the line it starts on, quoted line breaks before it and in it.
    ('video,prompt,seed\nx.mp4,"rain\non a roof",1\ny.mp4,"wind\n\nin trees",x\n',
     "shots.csv:4: seed 'x' is not a whole number"),
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


def test_folder_scan_and_input_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("b.MOV", "a.mp4", "c.gif", ".hidden.mp4", "._a.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.mp4").mkdir()  # a folder named like a video
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    with caplog.at_level(logging.INFO, logger="foleyrt.batch.plan"):
        assert [p.name for p in scan_folder(tmp_path)] == ["a.mp4", "b.MOV", "c.gif"]
    assert "skipped 1 file(s) without a video extension (notes.txt)" in caplog.text
    assert "skipped 1 sub-folder(s), not searched (sub.mp4)" in caplog.text
    assert "skipped 1 link(s) to no file (gone.mp4)" in caplog.text
    items = read_inputs([tmp_path], prompt="rain")
    assert [(i.video.name, i.prompt, i.source) for i in items] == [
        ("a.mp4", "rain", None), ("b.MOV", "rain", None), ("c.gif", "rain", None)]
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
    settings = BatchSettings(formats=(".mp4", ".wav"), request=GenerationRequest(samples=2))
    [job] = plan_batch([BatchItem(Path("v/k.mp4"), output="kick")], tmp_path, settings)
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
    seeded = BatchSettings(request=GenerationRequest(seed=10))
    assert [j.seed for j in plan_batch(items, tmp_path, seeded)] == [10, 99, 12]
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
        check_report_path(tmp_path / "new", [], [])
    with pytest.raises(OutputError, match="does not exist"):
        check_report_path(tmp_path / "no" / "report.json", [], [])


def test_resume_marks(tmp_path: Path) -> None:
    items = [BatchItem(Path(f"{n}.mp4")) for n in "abc"]
    jobs = plan_batch(items, tmp_path, BatchSettings(formats=(".mp4", ".wav")))
    for path in (*jobs[0].outputs, jobs[1].outputs[0]):  # a done, b half done, c not started
        path.write_bytes(b"done")
    report = BatchReport.start(jobs, overwrite=False)
    assert [r.status for r in report.items] == [Status.SKIPPED, Status.NOT_RUN, Status.NOT_RUN]
    assert report.summary() == "0 done, 1 skipped (existing), 0 failed, 2 not run"
    assert not BatchReport.start(jobs, overwrite=True).count(Status.SKIPPED)
