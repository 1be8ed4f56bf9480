"""Calibration files: activation ranges for `--precision int8` and static-scale fp8, and for
the TensorRT engines' Q/DQ rewrite (`export.qdq`). This module owns the format; `foleyrt
calibrate` (`foleyrt.calibrate`) records the ranges by running whole generations.

The file is safetensors with header metadata `{"format": "foleyrt.amax", "version": "1"}` and
one tensor per calibrated GEMM module, keyed by its name in `FoleyDiT.named_modules()` (e.g.
`triple_blocks.0.audio_self_attn_qkv`, `single_blocks.3.linear2.w13`): float32, shape `[]` (or
`[1]`), positive: the max |x| over the calibration set of the module's input as the GEMM sees
it (after the module's own cast to its weight dtype; a temporal conv's unfolded window has the
same range, padding only adds zeros). Other metadata keys are free; foleyrt writes:
- `config_sha256`: digest of the transformer configuration (the one engine sidecars record), so
  a file made for another model is refused rather than quantising with wrong ranges;
- `channel_amax`: the per-channel ranges SmoothQuant needs, as a nested safetensors blob in
  base64 (every tensor of the file itself must stay a scalar);
- `clips`, `steps`, `source`, `foleyrt`: provenance.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foleyrt.atomic import check_parent, write_atomic
from foleyrt.config import config_digest
from foleyrt.errors import ConfigError, OutputError, UsageError
from foleyrt.models.dit import FoleyDiT

CALIBRATION_SUFFIX = ".safetensors"
AMAX_FORMAT = "foleyrt.amax"
AMAX_VERSION = "1"
CONFIG_KEY = "config_sha256"
CHANNEL_KEY = "channel_amax"


@dataclass(frozen=True)
class Calibration:
    """Per module (`FoleyDiT.named_modules()` name): max |input| (`amax`) and, where recorded,
    max |input| per input channel (`channel_amax`, `[in_channels]` float32); `source` names
    where it came from (the file) in messages."""

    amax: dict[str, float]
    channel_amax: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "the calibration"

    def check(self, dit: FoleyDiT, modules: Mapping[str, nn.Module]) -> Calibration:
        """`self` if it fits `dit` (which may be on meta) and covers its quantised GEMMs
        `modules`, else a one-line `ConfigError` that names the file."""
        rerun = "run `foleyrt calibrate` with this model"
        digest = self.metadata.get(CONFIG_KEY)
        if digest is not None and digest != config_digest(dit.config):
            raise ConfigError(f"{self.source} was calibrated on another model configuration; "
                              f"{rerun}")
        missing = [name for name in modules if name not in self.amax]
        if missing:
            raise ConfigError(f"{self.source} has no activation range for {len(missing)} of the "
                              f"{len(modules)} quantised GEMMs (e.g. {missing[0]}); {rerun}")
        for name, ranges in self.channel_amax.items():
            channels = _weight(modules[name]).shape[1] if name in modules else None
            if channels is not None and tuple(ranges.shape) != (channels,):
                raise ConfigError(f"{self.source}: per-channel ranges of {name} have shape "
                                  f"{tuple(ranges.shape)}, the module has {channels} input "
                                  f"channels; {rerun}")
        return self


def _weight(module: nn.Module) -> Tensor:
    """A GEMM layer's weight (`nn.Module` types its attributes as tensors or modules)."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


class ActivationRecorder:
    """Forward pre-hooks keeping max |x| per input channel of each module, on the device (no
    host sync per call); removed on exit."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.channel_amax: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> ActivationRecorder:
        self._handles = [m.register_forward_pre_hook(self._hook(name))
                         for name, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().to(_weight(module).dtype)
            amax = x.abs().flatten(0, -2).amax(dim=0).float()
            seen = self.channel_amax.get(name)
            self.channel_amax[name] = amax if seen is None else torch.maximum(seen, amax)

        return record

    def calibration(self, floor: float, metadata: Mapping[str, str]) -> Calibration:
        """What was recorded, ranges at least `floor` (a dead channel must not give a zero
        scale)."""
        channel = {name: t.cpu() for name, t in self.channel_amax.items()}
        return Calibration({name: max(float(t.max()), floor) for name, t in channel.items()},
                           channel, dict(metadata))


def save_calibration(calib: Calibration, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `calib` atomically."""
    from safetensors.torch import save

    path = check_output(path, overwrite=overwrite)
    metadata = {**calib.metadata, "format": AMAX_FORMAT, "version": AMAX_VERSION}
    if calib.channel_amax:
        blob = save({k: v.float().contiguous() for k, v in calib.channel_amax.items()})
        metadata[CHANNEL_KEY] = base64.b64encode(blob).decode("ascii")
    tensors = {name: torch.tensor(value, dtype=torch.float32) for name, value in calib.amax.items()}
    return write_atomic(path, save(tensors, metadata=metadata), overwrite=overwrite)


def check_output(path: str | Path, *, overwrite: bool) -> Path:
    """Fail before a (long) calibration if `path` cannot receive the file. It must end in
    .safetensors, so that no `--overwrite` can make an input clip or CSV the calibration."""
    path = Path(path)
    if path.suffix.lower() != CALIBRATION_SUFFIX:
        raise UsageError(f"{path}: a calibration file must end in {CALIBRATION_SUFFIX}")
    check_parent(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    return path


def read_calibration(path: str | Path) -> Calibration:
    """The file's ranges and metadata; format errors are one-line `ConfigError`s naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file not found: {path} (write one with `foleyrt "
                          "calibrate`)")
    try:
        with safe_open(str(path), "np") as f:
            metadata = dict(f.metadata() or {})
            values = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable calibration file ({exc})") from None
    if metadata.get("format") != AMAX_FORMAT or metadata.get("version") != AMAX_VERSION:
        raise ConfigError(f"{path}: not a foleyrt calibration file "
                          f"(metadata format={AMAX_FORMAT!r}, version={AMAX_VERSION!r} expected)")
    amax = {}
    for name, value in values.items():
        number = float(value.reshape(())) if value.size == 1 else math.nan
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(f"{path}: amax of {name!r} must be one positive finite number")
        amax[name] = number
    if not amax:
        raise ConfigError(f"{path}: the calibration file holds no ranges")
    blob = metadata.pop(CHANNEL_KEY, None)
    channel: dict[str, Tensor] = {}
    if blob is not None:
        try:
            channel = load(base64.b64decode(blob, validate=True))
        except (binascii.Error, SafetensorError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable per-channel ranges ({exc})") from None
    return Calibration(amax, channel, metadata, source=str(path))
