"""The tiny model's inputs and quantised copies, shared by the precision tests."""

from __future__ import annotations

import copy

import torch

from foleyrt.accel.calibrate import Calibration
from foleyrt.accel.quant import quantize_
from foleyrt.config import TINY
from foleyrt.models.dit import FoleyDiT


def tiny_inputs(seed: int, batch: int = 2, n_audio: int = 57) -> dict[str, torch.Tensor]:
    """`FoleyDiT.forward` keyword inputs; 16 sync features (fewer than the audio frames unless
    `n_audio` < 16)."""
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.dit
    return {
        "x": torch.randn(batch, cfg.audio_vae_latent_dim, n_audio, generator=g),
        "t": torch.rand(batch, generator=g) * 1000,
        "clip_feat": torch.randn(batch, 10, cfg.clip_dim, generator=g),
        "cond": torch.randn(batch, 7, cfg.text_dim, generator=g),
        "sync_feat": torch.randn(batch, 16, cfg.sync_feat_dim, generator=g),
    }


def quantized_copy(dit: FoleyDiT, variant: str, calibration: Calibration,
                   dtype: torch.dtype = torch.float32) -> FoleyDiT:
    """`variant`: a precision, `+calibrated` for fp8 with static activation scales, or `none`
    (the copy in `dtype` only)."""
    precision, _, calibrated = variant.partition("+")
    model = copy.deepcopy(dit).to(dtype)
    if precision == "none":
        return model
    use = calibration if calibrated or precision == "int8" else None
    return quantize_(model, precision, calibration=use)
