"""Activation ranges for `--precision int8` and static-scale fp8 (`foleyrt calibrate`).

`calibrate` runs the real pipeline (video decode, encoders, the guided sampler over every step,
VAE decode) on a set of clips with forward pre-hooks on the quantisable GEMMs
(`quant.quantizable_names`), and records what enters each matmul (after the module's cast to
its weight dtype): max |x| per input channel over every token, row, step and clip. Ranges move
with the timestep and the content, hence whole generations rather than one forward.

The file is the one `foleyrt.export.qdq` documents and its `read_amax` reads, so
TensorRT engines are built from it too: safetensors with metadata `{"format": "foleyrt.amax",
"version": "1"}` and one float32 scalar per module, its max |x|. Added, all in the metadata
(that reader requires every tensor of the file to be a scalar, and ignores other metadata):
- `config_sha256`: digest of the transformer configuration (the one engine sidecars record), so
  a file made for another model is refused rather than quantising with wrong ranges;
- `channel_amax`: the per-channel ranges SmoothQuant needs, as a nested safetensors blob in
  base64;
- `clips`, `steps`, `source`, `foleyrt`: provenance.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from foleyrt import __version__
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules
from foleyrt.config import QUANTIZED_PRECISIONS, DiTConfig
from foleyrt.errors import ConfigError, OutputError
from foleyrt.export.engine_cache import config_sha256
from foleyrt.export.qdq import AMAX_FORMAT, AMAX_VERSION, read_amax
from foleyrt.models.dit import FoleyDiT

if TYPE_CHECKING:
    from foleyrt.batch import BatchItem
    from foleyrt.pipeline.pipeline import FoleyPipeline

log = logging.getLogger(__name__)

CONFIG_KEY = "config_sha256"
CHANNEL_KEY = "channel_amax"


def config_digest(cfg: DiTConfig) -> str:
    return config_sha256(dataclasses.asdict(cfg))


@dataclass(frozen=True)
class Calibration:
    """Per module (`FoleyDiT.named_modules()` name): max |input| (`amax`) and, where recorded,
    max |input| per input channel (`channel_amax`, `[in_channels]` float32)."""

    amax: dict[str, float]
    channel_amax: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def check(self, dit: FoleyDiT, source: str) -> Calibration:
        """`self` if it fits `dit` (which may be on meta), else a one-line `ConfigError` that
        names `source`."""
        rerun = "run `foleyrt calibrate` with this model"
        digest = self.metadata.get(CONFIG_KEY)
        if digest is not None and digest != config_digest(dit.config):
            raise ConfigError(f"{source} was calibrated on another model configuration; {rerun}")
        modules = quantizable_modules(dit)
        missing = [name for name in modules if name not in self.amax]
        if missing:
            raise ConfigError(f"{source} has no activation range for {len(missing)} of the "
                              f"{len(modules)} quantised GEMMs (e.g. {missing[0]}); {rerun}")
        for name, ranges in self.channel_amax.items():
            channels = modules[name].weight.shape[1] if name in modules else None
            if channels is not None and tuple(ranges.shape) != (channels,):
                raise ConfigError(f"{source}: per-channel ranges of {name} have shape "
                                  f"{tuple(ranges.shape)}, the module has {channels} input "
                                  f"channels; {rerun}")
        return self


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


def read_clips(inputs: Sequence[Path], prompt: str = "") -> list[BatchItem]:
    """The clips of INPUT as `foleyrt batch` reads it (one CSV with columns `video,prompt`,
    one folder, or video files), each probed here: a bad clip fails before any model loads."""
    from foleyrt.batch import read_inputs
    from foleyrt.media.video import probe_video

    items = read_inputs(list(inputs), prompt=prompt)
    for item in items:
        probe_video(item.video)
    return items


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
            x = args[0].detach().to(module.weight.dtype)
            amax = x.abs().flatten(0, -2).amax(dim=0).float()
            seen = self.channel_amax.get(name)
            self.channel_amax[name] = amax if seen is None else torch.maximum(seen, amax)

        return record


def calibrate(
    pipe: FoleyPipeline,
    items: Sequence[BatchItem],
    *,
    steps: int = 50,
    guidance_scale: float = 4.5,
    seed: int = 0,
) -> Calibration:
    """Generate for every item (clip i with noise seed `seed + i`, unless its CSV row has one)
    and record the ranges of the quantisable GEMMs' inputs. The pipeline must run its
    unquantised model eagerly."""
    runtime = pipe.runtime
    if runtime.accel != "eager" or runtime.precision in QUANTIZED_PRECISIONS:
        raise ConfigError("calibration records the unquantised model run eagerly: use "
                          "--accel eager and no quantised --precision")
    dit = pipe.models.dit
    modules = quantizable_modules(dit)
    with ActivationRecorder(modules) as recorder:
        for i, item in enumerate(items):
            log.info("calibrating on %s (%d/%d)", item.video, i + 1, len(items))
            pipe.generate(item.video, prompt=item.prompt, negative_prompt=item.negative_prompt,
                          steps=steps, guidance_scale=guidance_scale,
                          seed=seed + i if item.seed is None else item.seed)
    silent = [name for name in modules if name not in recorder.channel_amax]
    if silent:  # `quantizable_names` and the forward disagree: a bug, not a user error
        raise RuntimeError(f"quantisable modules that never ran: {', '.join(silent[:3])}")
    channel = {name: t.cpu() for name, t in recorder.channel_amax.items()}
    return Calibration(
        amax={name: max(float(t.max()), AMAX_FLOOR) for name, t in channel.items()},
        channel_amax=channel,
        metadata={CONFIG_KEY: config_digest(dit.config), "clips": str(len(items)),
                  "steps": str(steps), "source": pipe.models.source, "foleyrt": __version__},
    )


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


def check_output(path: str | Path, *, overwrite: bool) -> Path:
    """Fail before the (long) calibration if `path` cannot receive the file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    return path


def save_calibration(calib: Calibration, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `calib` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save

    path = check_output(path, overwrite=overwrite)
    metadata = {**calib.metadata, "format": AMAX_FORMAT, "version": AMAX_VERSION}
    if calib.channel_amax:
        blob = save({k: v.float().contiguous() for k, v in calib.channel_amax.items()})
        metadata[CHANNEL_KEY] = base64.b64encode(blob).decode("ascii")
    tensors = {name: torch.tensor(value, dtype=torch.float32) for name, value in calib.amax.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(save(tensors, metadata=metadata))
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_calibration(path: str | Path) -> Calibration:
    """The file's ranges and metadata; format errors are one-line `ConfigError`s naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file not found: {path} (write one with `foleyrt "
                          "calibrate`)")
    amax = read_amax(path)
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    blob = metadata.pop(CHANNEL_KEY, None)
    channel: dict[str, Tensor] = {}
    if blob is not None:
        try:
            channel = load(base64.b64decode(blob, validate=True))
        except (binascii.Error, SafetensorError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable per-channel ranges ({exc})") from None
    return Calibration(amax, channel, metadata)


def load_calibration(path: str | Path, dit: FoleyDiT) -> Calibration:
    """`read_calibration` checked against `dit` (configuration digest, every quantised GEMM
    present, channel counts)."""
    return read_calibration(path).check(dit, str(path))
