"""`foleyrt generate` end to end with the tiny random model: the container/codec families users
bring, what the outputs must hold, and bad input as one line, a status, and no file."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import pytest
import soundfile
import torch

from foleyrt.cli import main
from foleyrt.media.synthetic import ClipSpec, encode_clip, png_movie
from foleyrt.media.video import probe_video

TINY = ["--model", "tiny-random", "--steps", "2", "--seed", "7"]
LATENT_FRAME_S = 0.02

SOURCES = {
    "h264.mp4": ClipSpec("libx264", ".mp4", Fraction(30), 3.0),
    "vp9.webm": ClipSpec("libvpx-vp9", ".webm", Fraction(24), 2.0,
                         options={"deadline": "realtime", "cpu-used": "8"}),
    "mpeg4.mov": ClipSpec("mpeg4", ".mov", Fraction(30000, 1001), 3.0),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {name: encode_clip(root / name, spec) for name, spec in SOURCES.items()}


def _video_packets(path: Path) -> tuple[str, list[bytes]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [bytes(p) for p in container.demux(stream) if p.size]
        return stream.codec_context.name, packets


def _video_seconds(path: Path) -> float:
    """The video's duration as the probe measures it (WebM streams carry none of their own)."""
    return probe_video(path).duration_s


@pytest.mark.parametrize("name", list(SOURCES))
def test_generate_mp4_copies_the_video_and_adds_matching_48k_audio(
    name: str, sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = sources[name]
    out = tmp_path / "out.mp4"
    assert main(["-q", "generate", str(src), "-p", "footsteps", "-o", str(out), *TINY]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _video_packets(out) == _video_packets(src)  # same codec, same bytes, same count
    with av.open(str(out)) as container:
        assert len(container.streams.video) == 1
        (audio,) = container.streams.audio
        assert audio.codec_context.sample_rate == 48_000
        audio_s = float(audio.duration * audio.time_base)
        assert "RANDOM WEIGHTS" in container.metadata.get("comment", "")
    assert abs(audio_s - _video_seconds(src)) <= LATENT_FRAME_S


def test_generate_mp4_from_a_gif_reencodes_the_picture_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue 19: MP4 has no place for GIF (nor VP8): this was a muxer traceback."""
    src = encode_clip(tmp_path / "anim.gif",
                      ClipSpec("gif", ".gif", Fraction(25), 2.0, pix_fmt="rgb8"))
    out = tmp_path / "out.mp4"
    assert main(["generate", str(src), "-p", "x", "-o", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("re-encoding the picture to H.264") == 1 and "Traceback" not in err
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_generate_wav_matches_the_video_length(sources: dict[str, Path], tmp_path: Path) -> None:
    src = sources["vp9.webm"]
    out = tmp_path / "out.wav"
    assert main(["-q", "generate", str(src), "-p", "rain", "-o", str(out), *TINY]) == 0
    info = soundfile.info(str(out))
    assert info.samplerate == 48_000 and info.subtype == "FLOAT"
    assert abs(info.frames / info.samplerate - _video_seconds(src)) <= LATENT_FRAME_S


def test_samples_are_numbered_and_text_only_needs_a_wav(tmp_path: Path,
                                                        sources: dict[str, Path]) -> None:
    out = tmp_path / "take.wav"
    assert main(["-q", "generate", str(sources["h264.mp4"]), "-p", "x", "--samples", "2",
                 "-o", str(out), *TINY]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take_1.wav", "take_2.wav"]
    text = tmp_path / "thunder.wav"
    assert main(["-q", "generate", "--duration", "2", "-p", "thunder", "-o", str(text),
                 *TINY]) == 0
    assert soundfile.info(str(text)).duration == pytest.approx(2.0, abs=LATENT_FRAME_S)


def test_generate_with_cfg_parallel_gives_the_one_process_sound(tmp_path: Path) -> None:
    """`--parallel cfg` on the CPU (two processes over gloo): the sound of one process, and the
    second process ended with the command."""
    one, two = tmp_path / "one.wav", tmp_path / "two.wav"
    args = ["-q", "generate", "--duration", "1", "-p", "rain", *TINY, "--device", "cpu"]
    assert main([*args, "-o", str(one)]) == 0
    assert main([*args, "-o", str(two), "--parallel", "cfg"]) == 0
    assert abs(soundfile.read(one)[0] - soundfile.read(two)[0]).max() <= 1e-5
    assert not torch.distributed.is_initialized()


def test_long_text_only_in_windows(tmp_path: Path) -> None:
    """Past --window the audio is generated in windows: all of it comes out."""
    out = tmp_path / "rain.wav"
    assert main(["-q", "generate", "--duration", "16.5", "--window", "8", "--overlap", "2",
                 "-p", "rain", "-o", str(out), *TINY]) == 0
    assert soundfile.info(str(out)).frames == round(16.5 * 48_000)


def test_a_clip_past_one_pass_is_windowed_by_default_and_said_so(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Without --window or -q: the default windows, named in the log (not a crash after the
    file was written)."""
    out = tmp_path / "rain.wav"
    assert main(["generate", "--duration", "16", "-p", "rain", "-o", str(out), *TINY]) == 0
    assert soundfile.info(str(out)).frames == 16 * 48_000
    assert "in 2 windows of 10 s overlapping by at least 2 s" in capsys.readouterr().err


def _fails(args: list[str], capsys: pytest.CaptureFixture, words: str) -> None:
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's usage errors exit from `parse_args`
        status = exc.code
    assert status not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err


def test_bad_input_is_one_line_a_status_and_no_file(
    tmp_path: Path, sources: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.mp4"
    empty = tmp_path / "empty.mp4"
    empty.touch()
    long_clip = encode_clip(tmp_path / "long.mp4",
                            ClipSpec("libx264", ".mp4", Fraction(10), 16.0, size=(32, 32)))
    src = str(sources["h264.mp4"])
    cases = [
        ([str(tmp_path / "missing.mp4")], "no such file"),
        ([str(empty)], "empty"),
        ([str(long_clip), "--max-duration", "15"], "the limit is 15 s"),
        ([src, "--window", "20"], "window must be between 1 and 15 s"),
        ([src, "--overlap", "9.5"], "overlap must be between 0 and the window less 1 s"),
        (["--duration", "2000", "-o", str(tmp_path / "t.wav")], "between 1 and 1800 s"),
        ([src, "--size", "xxxl"], "invalid choice"),
        ([src, "--device", "tpu"], "device"),
        ([src, "--dtype", "fp7"], "dtype"),
        ([src, "--parallel", "cfg", "--offload", "model"], "use one or the other"),
        ([src, "-o", str(tmp_path / "no" / "dir" / "out.mp4")], "does not exist"),
        ([src, "-o", f"{src}/out.mp4"], f"{src} is a file"),
        (["--duration", "2"], ".wav"),  # an .mp4 needs a source video
        ([src, "--duration", "2"], "--duration is for text-only generation"),  # was ignored
        # Media bombs (a few MB of PNG frames of 16000x16000: 768 MB each decoded), refused
        # before one is decoded, whether the header says so or a later frame does.
        ([str(png_movie(tmp_path / "bomb.mov", [(16000, 16000)] * 2))],
         "cannot be read within the limit of 67,108,864 pixels per frame"),
        ([str(png_movie(tmp_path / "bomb2.mov", [(16000, 16000)] * 2, audio_first=True))],
         "cannot be read within the limit of 67,108,864 pixels per frame"),
        ([str(png_movie(tmp_path / "liar.mov", [(64, 48)] * 2 + [(16000, 16000)] * 2))],
         "over the limit of 67,108,864 pixels per frame"),
    ]
    for extra, words in cases:
        args = ["-q", "generate", *extra, "-p", "x", *TINY]
        if "-o" not in extra:
            args += ["-o", str(out)]
        _fails(args, capsys, words)
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    out.write_bytes(b"mine")
    _fails(["-q", "generate", src, "-p", "x", "-o", str(out), *TINY], capsys, "--overwrite")
    assert out.read_bytes() == b"mine"


def test_cuda_library_settings_are_defaults_the_environment_overrides(monkeypatch) -> None:
    """The CLI sets `CUDA_LIBRARY_ENV` before any GPU work, keeping what the user set."""
    from foleyrt.accel.process import CUDA_LIBRARY_ENV

    name, value = next(iter(CUDA_LIBRARY_ENV.items()))
    monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ[name] == value
    monkeypatch.setenv(name, "4096")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ[name] == "4096"


@pytest.mark.parametrize(("args", "words"), [
    (["generate", "CLIP", "-o", "a.wav", "--samples", "0"], "samples must be between 1 and 16"),
    (["generate", "CLIP", "-o", "a.wav", "--samples", "-1"], "samples must be between 1 and 16"),
    (["generate", "CLIP", "-o", "a.wav", "--steps", "0"], "steps must be between 1 and 500"),
    (["generate", "--duration", "99999", "-o", "a.wav"], "duration must be between 1 and 1800 s"),
    (["batch", "missing.mp4", "-o", "out"], "no such file or folder: missing.mp4"),
    (["batch", "CLIP", "-o", "out", "--guidance", "-1"], "guidance scale must be between"),
])
def test_checks_that_need_no_model_run_before_it_loads(
    args: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, sources: dict[str, Path],
) -> None:
    """A weights folder that does not exist proves nothing was loaded: its error would come
    after these."""
    monkeypatch.chdir(tmp_path)
    args = [str(sources["h264.mp4"]) if a == "CLIP" else a for a in args]
    _fails(["-q", *args, "--model", str(tmp_path / "no-weights")], capsys, words)
