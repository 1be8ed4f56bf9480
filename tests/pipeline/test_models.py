"""Loading: `--model random` (a size with random weights, for benchmarks without the released
files) and the transformer alone, which the second rank of CFG-parallel loads."""

from __future__ import annotations

import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import RANDOM, TINY_RANDOM
from foleyrt.pipeline.models import load_denoiser, load_models


def test_the_transformer_alone_has_the_whole_model_weights() -> None:
    runtime = RuntimeConfig()
    for model in (RANDOM, TINY_RANDOM):
        models = load_models(model, "tiny", runtime=runtime)
        alone = load_denoiser(model, "tiny", runtime).model
        assert models.random_weights and models.denoiser is not None
        whole = models.dit.state_dict()
        assert all(torch.equal(whole[k], v) for k, v in alone.state_dict().items())
