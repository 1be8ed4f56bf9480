"""Calibration files (`accel.calibration`): what `foleyrt calibrate` writes on the example clip
with the tiny random model, read back by int8 and by the engine builder, the one-line errors
of a missing or mismatched file, and the recorder's hooks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from foleyrt.accel.calibration import (
    CHANNEL_KEY,
    CONFIG_KEY,
    ActivationRecorder,
    Calibration,
    read_calibration,
    save_calibration,
)
from foleyrt.accel.quant import Int8Gemm, quantizable_modules, quantizable_names
from foleyrt.cli import main
from foleyrt.config import TINY
from foleyrt.errors import ConfigError
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.layers import Linear, TemporalConv
from foleyrt.request import MAX_SEED

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "examples" / "clip.mp4"
TINY_ARGS = ["--model", "tiny-random", "--device", "cpu"]


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    """Written by the CLI from a CSV (`video,prompt`, paths relative to the CSV); two clips
    from the largest seed: the second one's wraps round, as `foleyrt batch` seeds them."""
    folder = tmp_path_factory.mktemp("calib")
    (folder / "clip.mp4").symlink_to(CLIP)
    (folder / "clips.csv").write_text("video,prompt\nclip.mp4,rain on a tin roof\n"
                                      "clip.mp4,footsteps\n")
    out = folder / "calib.safetensors"
    assert main(["-q", "calibrate", str(folder / "clips.csv"), "-o", str(out), "--steps", "2",
                 "--seed", str(MAX_SEED), *TINY_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def meta_dit() -> FoleyDiT:
    with torch.device("meta"):
        return FoleyDiT(TINY.dit)


def load_calibration(path: Path, dit: FoleyDiT) -> Calibration:
    """As the pipeline checks a file before loading the weights."""
    return read_calibration(path).check(dit, quantizable_modules(dit))


def test_calibration_file_is_valid_for_int8_and_tensorrt(calib_file, meta_dit) -> None:
    names = set(quantizable_names(TINY.dit))
    calib = load_calibration(calib_file, meta_dit)
    amax = calib.amax  # what the TensorRT engine builder reads too
    assert set(amax) == names and all(v > 0 for v in amax.values())
    assert set(calib.channel_amax) == names
    for name, ranges in calib.channel_amax.items():
        assert float(ranges.max()) == pytest.approx(amax[name])
    assert calib.metadata["clips"] == "2" and calib.metadata["source"] == "tiny-random"


@pytest.mark.parametrize("precision", ["int8", "fp8", "fp8+calibrated", "int8-weight"])
def test_generate_with_a_quantised_precision(calib_file, tmp_path, capsys, precision) -> None:
    out = tmp_path / "out.wav"
    precision, _, calibrated = precision.partition("+")
    extra = ["--calibration", str(calib_file)] if calibrated or precision == "int8" else []
    assert main(["-q", "generate", str(CLIP), "-p", "rain", "-o", str(out), "--steps", "2",
                 "--seed", "1", "--precision", precision, *extra, *TINY_ARGS]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--precision", "int8", "--calibration", "missing.safetensors"],
     "calibration file not found: missing.safetensors"),
    (["--precision", "int8"], "needs activation statistics"),
    (["--precision", "int8-weight", "--calibration", "x.safetensors"],
     "used by --precision int8 or fp8"),
])
def test_generate_refuses_bad_calibration_options(tmp_path, capsys, monkeypatch, args,
                                                  message) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["-q", "generate", str(CLIP), "-o", "out.wav", "--steps", "1", *args, *TINY_ARGS])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()


def _rewrite(src: Path, dst: Path, *, drop: str = "", **metadata: str) -> Path:
    """`src` without tensor or metadata key `drop`, metadata updated."""
    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != drop}  # noqa: SIM118
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != drop}
    save_file(tensors, str(dst), metadata={**meta, **metadata})
    return dst


def test_mismatched_calibration_files_are_one_line_errors(calib_file, meta_dit, tmp_path) -> None:
    cases = [
        (_rewrite(calib_file, tmp_path / "other.safetensors", **{CONFIG_KEY: "0" * 64}),
         "calibrated on another model configuration"),
        (_rewrite(calib_file, tmp_path / "partial.safetensors",
                  drop="single_blocks.1.linear2.w2"),
         "no activation range for 1 of the 29 quantised GEMMs (e.g. single_blocks.1.linear2.w2)"),
        (_rewrite(calib_file, tmp_path / "foreign.safetensors", drop=CONFIG_KEY,
                  format="other"),
         "not a foleyrt calibration file"),
        (_rewrite(calib_file, tmp_path / "blob.safetensors", **{CHANNEL_KEY: "%%%"}),
         "unreadable per-channel ranges"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match="^" + re.escape(str(path))) as info:
            load_calibration(path, meta_dit)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_channel_ranges_must_fit_the_modules(calib_file, meta_dit, tmp_path) -> None:
    calib = read_calibration(calib_file)
    wrong = dict(calib.channel_amax, **{"triple_blocks.0.audio_mlp.fc2": torch.ones(3)})
    path = save_calibration(dataclasses.replace(calib, channel_amax=wrong),
                            tmp_path / "wrong.safetensors")
    with pytest.raises(ConfigError, match="input channels"):
        load_calibration(path, meta_dit)


def test_recorder_keeps_the_range_of_each_input_channel() -> None:
    linear, conv = Linear(4, 3), TemporalConv(4, 3, 3, bias=False)
    xs = [torch.randn(2, 5, 4) for _ in range(3)]
    with torch.no_grad(), ActivationRecorder({"a": linear, "b": conv}) as rec:
        for x in xs:
            linear(x)
            conv(x)
    expected = torch.stack(xs).abs().amax(dim=(0, 1, 2))
    assert torch.equal(rec.channel_amax["a"], expected)
    assert torch.equal(rec.channel_amax["b"], expected)
    linear(xs[0])  # hooks removed on exit: nothing more recorded
    assert torch.equal(rec.channel_amax["a"], expected)


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "calib.safetensors"
    out.write_bytes(b"keep")
    assert main(["-q", "calibrate", str(CLIP), "-o", str(out), *TINY_ARGS]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"
    clip = tmp_path / "clip.mp4"  # an input: never the output, --overwrite or not
    clip.write_bytes(CLIP.read_bytes())
    assert main(["-q", "calibrate", str(clip), "-o", str(clip), "--overwrite",
                 *TINY_ARGS]) == 2
    assert capsys.readouterr().err == (f"foleyrt: error: {clip}: a calibration file must end "
                                       "in .safetensors\n")
    assert clip.read_bytes() == CLIP.read_bytes()


def test_int8_module_reads_the_smoothing_ranges(calib_file) -> None:
    """The SmoothQuant path is the one a recorded file takes."""
    calib = read_calibration(calib_file)
    name = "single_blocks.0.linear1"
    layer = TemporalConv(TINY.dit.hidden_size, TINY.dit.hidden_size, 3, bias=True)
    module = Int8Gemm(layer, calib.amax[name], calib.channel_amax[name])
    assert layer.taps_on_output and module.taps_on_output  # plain tokens: a range per channel
    assert module.input_scale.shape == (TINY.dit.hidden_size,)
    assert module.input_scale.unique().numel() > 1  # per-column, not one per-tensor scale
