"""The tiny model and its calibration, shared by the precision tests of this folder."""

from __future__ import annotations

import pytest
import torch

from foleyrt.accel.calibrate import ActivationRecorder, Calibration
from foleyrt.accel.quant import quantizable_modules
from foleyrt.config import TINY
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import randomize_
from tests.accel.tiny import tiny_inputs


@pytest.fixture(scope="module")
def tiny_dit() -> FoleyDiT:
    return randomize_(FoleyDiT(TINY.dit), seed=3).eval()


@pytest.fixture(scope="module")
def calibration(tiny_dit: FoleyDiT) -> Calibration:
    """Ranges recorded over a few forwards (other inputs than the ones compared)."""
    with torch.inference_mode(), ActivationRecorder(quantizable_modules(tiny_dit)) as rec:
        for seed in (10, 11, 12):
            tiny_dit(**tiny_inputs(seed))
    return Calibration({k: float(v.max()) for k, v in rec.channel_amax.items()},
                       dict(rec.channel_amax))
