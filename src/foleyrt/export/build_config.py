"""What engine to build: precision, optimisation profile, builder settings (`BuildConfig`).
Plain values and functions, checked and tested without TensorRT or a GPU.

Profiles. Users think in seconds: `ProfileSpec` takes min/opt/max durations and CFG rows, and
the axes of the graph follow from the pipeline's own length rules (`foleyrt.lengths`):
`audio_len` (latent frames), `visual_len` (SigLIP2 frames), `text_len` (the CLAP length, fixed),
`batch` (rows: two per sample with guidance). Sync tokens are not an engine axis: `prepare`
resamples them to the audio frames before the loop.

Precision (weakly typed network; TensorRT 10.12+ deprecates this for strong typing, still
supported through 10.x):
    fp32        no flag (TensorRT's default TF32 for matmuls)
    fp16, bf16  that flag: TensorRT picks per layer between it and fp32
    int8, fp8   a Q/DQ copy of the graph from a calibration file (`export.qdq`) + INT8|FP8 and
                BF16: the calibrated GEMMs quantised, everything else bf16 (the release's dtype)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from foleyrt.accel.engine_io import AUDIO_LEN, BATCH, TEXT_LEN, VELOCITY, VISUAL_LEN, GraphInput
from foleyrt.accel.engines import DimRange
from foleyrt.errors import ConfigError
from foleyrt.lengths import SequenceLengths

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
QUANTIZED = ("fp8", "int8")
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {
    "fp32": (), "fp16": ("FP16",), "bf16": ("BF16",),
    "fp8": ("FP8", "BF16"), "int8": ("INT8", "BF16"),
}


def _ordered(name: str, values: Sequence[float]) -> None:
    if len(values) != 3 or not 0 < values[0] <= values[1] <= values[2]:
        raise ConfigError(f"{name} must be three positive values MIN <= OPT <= MAX, "
                          f"got {list(values)}")


@dataclass(frozen=True)
class ProfileSpec:
    """The requests an engine serves: durations in seconds and CFG rows, each min/opt/max."""

    seconds: tuple[float, float, float] = (1.0, 8.0, 15.0)
    rows: tuple[int, int, int] = (1, 2, 8)

    def __post_init__(self) -> None:
        _ordered("profile durations", self.seconds)
        _ordered("profile rows", self.rows)


def dim_ranges(kind: str, spec: ProfileSpec, text_length: int) -> dict[str, DimRange]:
    """Range of every dynamic axis of a `kind` graph (velocity or decoder) for `spec`."""
    lengths = [SequenceLengths.of_duration(s) for s in spec.seconds]
    ranges = {BATCH: DimRange(*spec.rows), AUDIO_LEN: DimRange(*(n.latent_frames for n in lengths))}
    if kind == VELOCITY:
        ranges[VISUAL_LEN] = DimRange(*(n.clip_frames for n in lengths))
        ranges[TEXT_LEN] = DimRange(text_length, text_length, text_length)
    return ranges


Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def profile_shapes(
    inputs: Iterable[GraphInput], ranges: Mapping[str, DimRange]
) -> dict[str, Shapes]:
    """min/opt/max shape of every graph input (what `IOptimizationProfile.set_shape` takes)."""
    shapes: dict[str, Shapes] = {}
    for inp in inputs:
        unknown = [d for d in inp.dims if isinstance(d, str) and d not in ranges]
        if unknown:
            raise ConfigError(f"input {inp.name!r} has axis {unknown[0]!r} with no profile range")
        low, opt, high = (
            tuple(ranges[d][i] if isinstance(d, str) else d for d in inp.dims) for i in range(3)
        )
        shapes[inp.name] = (low, opt, high)
    return shapes


@dataclass(frozen=True)
class BuildConfig:
    precision: str = "bf16"
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    calibration: Path | None = None  # amax file, for int8 / fp8
    optimization_level: int = 3  # TensorRT's builder optimisation level, 0..5
    workspace_gib: float | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None  # None: the engine cache's file for this GPU + TensorRT

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of "
                              f"{', '.join(PRECISIONS)}")
        if (self.precision in QUANTIZED) != (self.calibration is not None):
            raise ConfigError("--calibration is needed by, and only by, int8 and fp8 engines")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimisation level must be 0..5, got {self.optimization_level}")
