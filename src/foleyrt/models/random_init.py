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
from typing import TypeVar

import torch
from torch import Tensor, nn

from foleyrt.config import DACConfig, DiTConfig
from foleyrt.models.dac_vae import DACVAE, ResidualUnit, WNConv1d, WNConvTranspose1d
from foleyrt.models.dit import FoleyDiT

M = TypeVar("M", bound=nn.Module)
WNConv = WNConv1d | WNConvTranspose1d


@torch.no_grad()
def randomize_(module: M, seed: int, device: torch.device | None = None) -> M:
    """Fill every parameter in sorted order of its state-dict name (the release's, which a
    module's hooks may map from its own layout) from a generator seeded with `seed` on the
    module's device; a module built on `meta` gets its values drawn on `device` and assigned
    (a real-size model is then never allocated twice)."""
    on_meta = next(module.parameters()).device.type == "meta"
    where = next(module.parameters()).device if device is None else device
    generator = torch.Generator(where).manual_seed(seed)

    def randn(shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=generator, device=where)

    values = {}
    for name, param in sorted(module.state_dict(keep_vars=True).items()):
        shape = param.shape
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight_v":
            value = randn(shape)
        elif leaf in ("weight_g", "alpha"):
            value = 0.5 + torch.rand(shape, generator=generator, device=where)
        elif leaf.endswith("weight") and param.ndim >= 2:
            value = randn(shape) / math.sqrt(math.prod(shape[1:]))
        elif leaf.endswith("weight"):
            value = 1 + 0.1 * randn(shape)
        elif leaf.endswith("bias"):
            value = 0.05 * randn(shape)
        else:
            value = 0.5 * randn(shape)
        values[name] = value.to(param.dtype)
    module.load_state_dict(values, strict=True, assign=on_meta)
    return module


@torch.no_grad()
def random_transformer(cfg: DiTConfig, device: torch.device, dtype: torch.dtype,
                       seed: int) -> FoleyDiT:
    """A transformer built on meta and given values drawn on `device` in `dtype` by
    `randomize_`: billions of parameters in seconds on a GPU, allocated once, in eval mode."""
    with torch.device("meta"):
        dit = FoleyDiT(cfg).to(dtype)
    return randomize_(dit, seed, device=device).eval().requires_grad_(False)


# Output std per weight-normalised conv of the decoder on the probe: the fixture generator's
# rule for the reference VAE (manifest `weights.dac.init`), with a quieter last conv so the
# tanh output is speech-level (RMS ~0.2, few samples near +-1) rather than a square wave.
CONV_STD = 1.0
RESIDUAL_BRANCH_STD = 0.25  # the last conv of each residual unit: the skip path dominates
OUTPUT_STD = 0.1  # before the final tanh
PROBE_FRAMES = 4


def random_vae(cfg: DACConfig, seed: int) -> DACVAE:
    """A decoder-only DAC-VAE with `randomize_`'s weights, then well conditioned by
    construction: raw random gains grow the signal ~3x per block (pre-tanh values ~500, 97 %
    of samples at +-1, fp32 1e-2 from fp64), so each weight-norm gain is rescaled in
    execution order until its conv's output has the std above on a seeded N(0, 1) latent."""
    vae = randomize_(DACVAE(cfg, decoder_only=True), seed)
    targets = {unit.block[-1]: RESIDUAL_BRANCH_STD
               for unit in vae.decoder.modules() if isinstance(unit, ResidualUnit)}
    targets[vae.decoder.model[-2]] = OUTPUT_STD

    def rescale(conv: WNConv, _inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        bias = conv.bias.view(1, -1, 1)
        scale = targets.get(conv, CONV_STD) / (output - bias).std()
        conv.weight_g.mul_(scale)
        return (output - bias) * scale + bias

    convs = [m for m in vae.decoder.modules() if isinstance(m, WNConv)]
    hooks = [conv.register_forward_hook(rescale) for conv in convs]
    probe = torch.randn(1, vae.latent_dim, PROBE_FRAMES,
                        generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            vae.decode(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return vae
