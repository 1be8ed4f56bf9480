"""`RuntimeConfig`: typed options, and every conflict refused once, with one line, when it is
built (before any weight is read)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foleyrt.accel.runtime import (
    AccelMode,
    OffloadKind,
    ParallelMode,
    Precision,
    RuntimeConfig,
)
from foleyrt.cli import main
from foleyrt.errors import ConfigError


def test_strings_are_parsed_into_types() -> None:
    rt = RuntimeConfig(accel="eager", precision="int8-weight", offload="none")
    assert rt.accel is AccelMode.EAGER and rt.precision is Precision.INT8_WEIGHT
    assert rt.offload.kind is OffloadKind.NONE and rt.quantized and not rt.fast_encoders


@pytest.mark.parametrize(("fields", "message"), [
    ({"accel": "turbo"}, "unknown acceleration mode 'turbo'"),
    ({"precision": "fp4"}, "unknown precision 'fp4'"),
    ({"offload": "disk"}, "unknown offload mode 'disk'"),
    ({"accel": "compile"}, "--accel compile needs a CUDA device (have cpu)"),
    ({"accel": "tensorrt"}, "--accel tensorrt needs a CUDA device"),
    ({"offload": "blocks:4"}, "it needs a CUDA device"),
    ({"precision": "int8"}, "--precision int8 needs activation statistics"),
    ({"engine": "x.plan"}, "--engine is the TensorRT plan of --accel tensorrt"),
    ({"precision": "fp16"}, "contradicts --dtype float32"),
    ({"parallel": "pipeline"}, "unknown parallel mode 'pipeline'"),
    ({"parallel": "cfg", "device": torch.device("cuda", 7)}, "needs two GPUs, cuda:7 and the"),
    ({"parallel": "cfg", "device": torch.device("mps")}, "runs on CUDA GPUs (or the CPU"),
    ({"parallel": "cfg", "offload": "model"}, "--offload is for one GPU too small for it"),
])
def test_conflicts_raise_one_line(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RuntimeConfig(**fields)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_build_defaults_and_the_asked_for_fallback() -> None:
    rt = RuntimeConfig.build("cpu")
    assert rt.device == torch.device("cpu") and rt.dtype == torch.float32
    assert RuntimeConfig.build("cpu", precision="bf16").dtype == torch.bfloat16
    assert RuntimeConfig.build("cpu", accel="auto").accel is AccelMode.EAGER  # no CUDA here
    assert RuntimeConfig.build("cpu", parallel="cfg").parallel is ParallelMode.CFG  # gloo
    with pytest.raises(ConfigError, match="--accel auto to compile only where it can"):
        RuntimeConfig.build("cpu", accel="compile")


def test_options_conflict_before_the_calibration_file_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ConfigError, match="used by --precision int8 or fp8 only"):
        RuntimeConfig.build("cpu", precision="int8-weight", calibration=missing)
    with pytest.raises(ConfigError, match="calibration file not found"):
        RuntimeConfig.build("cpu", precision="int8", calibration=missing)


def test_cli_conflict_is_one_line_before_any_load(tmp_path: Path, capsys) -> None:
    code = main(["-q", "generate", "--text-only", "--duration", "2", "-o",
                 str(tmp_path / "a.wav"), "--model", str(tmp_path / "no-weights"),
                 "--device", "cpu", "--accel", "compile"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs a CUDA device" in err
