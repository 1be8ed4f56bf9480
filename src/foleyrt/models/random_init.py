"""Deterministic random weights: the tiny smoke-test model, and real-size models for
benchmarks.

One rule for every module (the fixture generator's, see the reference manifest's `init`): it
keeps activations in a sane range through any depth, and does not depend on library init code
that may change between versions, so `tiny-random` gives the same numbers everywhere. Values are
drawn on the module's device (a real-size transformer fills on the GPU in a second; on the CPU
the stream is the same everywhere).
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter in sorted order of its state-dict name (the release's, which a
    module's hooks may map from its own layout) from a generator on the module's device seeded
    with `seed`."""
    device = next(module.parameters()).device
    draw = {"generator": torch.Generator(device).manual_seed(seed), "device": device}
    values = {}
    for name, param in sorted(module.state_dict(keep_vars=True).items()):
        shape = param.shape
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight_v":
            value = torch.randn(shape, **draw)
        elif leaf in ("weight_g", "alpha"):
            value = 0.5 + torch.rand(shape, **draw)
        elif leaf.endswith("weight") and param.ndim >= 2:
            value = torch.randn(shape, **draw) / math.sqrt(math.prod(shape[1:]))
        elif leaf.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, **draw)
        elif leaf.endswith("bias"):
            value = 0.05 * torch.randn(shape, **draw)
        else:
            value = 0.5 * torch.randn(shape, **draw)
        values[name] = value.to(param.dtype)
    module.load_state_dict(values, strict=True)
    return module
