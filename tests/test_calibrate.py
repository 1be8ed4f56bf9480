"""The calibration driver (`foleyrt.calibrate`): what it refuses to record."""

from __future__ import annotations

import pytest

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.calibrate import calibrate
from foleyrt.errors import ConfigError
from foleyrt.pipeline.models import random_models
from foleyrt.pipeline.pipeline import FoleyPipeline


def test_calibration_needs_the_unquantised_eager_model() -> None:
    runtime = RuntimeConfig(precision="int8-weight")
    pipe = FoleyPipeline(random_models().place(runtime), runtime)
    with pytest.raises(ConfigError, match="unquantised model run eagerly"):
        calibrate(pipe, [])
