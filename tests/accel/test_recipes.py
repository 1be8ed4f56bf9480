"""`accel.recipes.apply`: the ordered recipe list, each recipe switchable, and the denoiser it
returns computing the module's own numbers (eager on the CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from foleyrt.accel.quant import QuantizedGemm
from foleyrt.accel.recipes import RECIPES, apply
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY
from foleyrt.errors import ConfigError
from foleyrt.sampling.denoiser import ModuleDenoiser
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import flow_schedule
from tests.tiny import tiny_conditions


def test_the_recipes_run_in_their_order() -> None:
    assert [r.name for r in RECIPES] == ["precision", "stream-blocks", "fusion", "compile",
                                         "cuda-graphs", "tensorrt"]
    assert all(r.reason for r in RECIPES)


@torch.inference_mode()
def test_eager_runtime_is_the_module_as_written(tiny_dit) -> None:
    model = copy.deepcopy(tiny_dit)
    denoiser = apply(model, RuntimeConfig())
    assert type(denoiser) is ModuleDenoiser and denoiser.model is model
    task = Task.whole(torch.randn(1, 128, 40, generator=torch.Generator().manual_seed(0)), 4.5,
                      tiny_conditions(1))
    schedule = flow_schedule(3, TINY.diffusion)
    got = denoise(denoiser, [task], schedule)[0]
    assert torch.equal(got, denoise(ModuleDenoiser(tiny_dit), [task], schedule)[0])


def test_a_recipe_can_be_switched_off_by_name(tiny_dit) -> None:
    model = copy.deepcopy(tiny_dit)
    apply(model, RuntimeConfig(precision="int8-weight"), disable={"precision"})
    assert not any(isinstance(m, QuantizedGemm) for m in model.modules())
    with pytest.raises(ConfigError, match="unknown recipe"):
        apply(copy.deepcopy(tiny_dit), RuntimeConfig(), disable={"turbo"})
