"""Acceleration recipes: functions that transform a built model, never branches inside it."""

from __future__ import annotations

from torch import nn

from foleyrt.config import RuntimeConfig
from foleyrt.errors import ConfigError
from foleyrt.models.dit import FoleyDiT, PreparedConditions
from foleyrt.pipeline.sampling import ModelFn

ACCEL_MODES = ("eager",)


def check_mode(mode: str) -> str:
    if mode not in ACCEL_MODES:
        raise ConfigError(f"unknown acceleration mode {mode!r}; choose one of {ACCEL_MODES}")
    return mode


def apply_accel(model: nn.Module, mode: str) -> nn.Module:
    """Return `model` prepared for acceleration `mode` (`eager`: unchanged)."""
    check_mode(mode)
    return model


def model_fn(dit: FoleyDiT, prepared: PreparedConditions, runtime: RuntimeConfig) -> ModelFn:
    """The per-step velocity function the sampler calls, for the runtime's acceleration."""
    check_mode(runtime.accel)
    return lambda x, t: dit.velocity(x, t, prepared)
