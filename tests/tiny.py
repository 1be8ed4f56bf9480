"""The tiny model, its inputs and its quantised copies: the one set of test models the suite
shares (the fixtures in `tests/conftest.py` hand them out)."""

from __future__ import annotations

import copy

import torch

from foleyrt.accel.calibration import ActivationRecorder, Calibration
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules, quantize_
from foleyrt.config import TINY
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import randomize_
from foleyrt.sampling.conditions import Conditions


def tiny_dit(seed: int = 3) -> FoleyDiT:
    """The tiny transformer with random weights, fp32, in eval mode."""
    return randomize_(FoleyDiT(TINY.dit), seed=seed).eval()


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


def tiny_conditions(seed: int, clip_frames: int = 9, sync_tokens: int = 16,
                    text_tokens: int = 7) -> Conditions:
    """One clip's random conditions for the tiny model."""
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.dit
    return Conditions(torch.randn(1, clip_frames, cfg.clip_dim, generator=g),
                      torch.randn(1, sync_tokens, cfg.sync_feat_dim, generator=g),
                      torch.randn(1, text_tokens, cfg.text_dim, generator=g),
                      torch.randn(1, text_tokens, cfg.text_dim, generator=g))


@torch.inference_mode()
def recorded_calibration(dit: FoleyDiT) -> Calibration:
    """Ranges recorded over a few forwards (other inputs than the ones the tests compare)."""
    with ActivationRecorder(quantizable_modules(dit)) as rec:
        for seed in (10, 11, 12):
            dit(**tiny_inputs(seed))
    return rec.calibration(AMAX_FLOOR, {})


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
