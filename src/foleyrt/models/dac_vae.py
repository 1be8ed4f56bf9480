"""The audio VAE ("DAC-VAE", `vae_128d_48k.pth`), written from spec/dac_vae.md.

Module names reproduce the official state dict exactly (legacy weight-norm `weight_g` /
`weight_v` included), so released checkpoints load strictly and a saved state dict stays a
valid official checkpoint. The pipeline only decodes, so the usual build is decoder-only: the
296 M-parameter encoder is never allocated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foleyrt.config import DACConfig
from foleyrt.errors import InputError, UsageError

log = logging.getLogger(__name__)

SNAKE_EPS = 1e-9
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
RESIDUAL_DILATIONS = (1, 3, 9)
# Checkpoint parts that only the encoder path uses (ignored by a decoder-only build).
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """`x + sin(alpha x)^2 / (alpha + 1e-9)`: pointwise, so a compiler fuses it into one
    kernel; the epsilon sits only in the reciprocal, as in the release."""
    return x + (alpha + SNAKE_EPS).reciprocal() * torch.sin(alpha * x).square()


class Snake1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)


def weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """Legacy `torch.nn.utils.weight_norm` with dim 0: `g * v / ||v||`, the norm over every
    axis but 0 and without epsilon (a zero row gives NaN there too)."""
    return v * (g / torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True))


def _reset_fold(module: _WeightNormConv, _incompatible: Any) -> None:
    """Freshly loaded `weight_v` is a direction again, not a folded weight."""
    module.folded = False


class _WeightNormConv(nn.Module):
    """Stores `weight_g` / `weight_v` / `bias` under the official names.

    `fold_()` computes the effective weight once for inference: it stores it as `weight_v`
    (with `weight_g = ||weight||`, so the state dict is still a valid weight-norm checkpoint)
    and skips the per-forward renormalisation. The folded weight is the very expression the
    unfolded forward evaluates: outputs are bit-identical on the device and dtype it was
    folded in, and equal up to rounding elsewhere. Loading a state dict unfolds.
    """

    def __init__(self, weight_shape: tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        # Registration order = the official key order. Unit-norm rows: a cheap, sane start;
        # real values come from a checkpoint.
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_g = nn.Parameter(torch.ones(weight_shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.randn(weight_shape))
        self.folded = False
        self.register_load_state_dict_post_hook(_reset_fold)

    def weight(self) -> Tensor:
        return self.weight_v if self.folded else weight_norm(self.weight_g, self.weight_v)

    @torch.no_grad()
    def fold_(self) -> None:
        if self.folded:
            return
        w = weight_norm(self.weight_g, self.weight_v)
        self.weight_v.copy_(w)
        self.weight_g.copy_(torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True))
        self.folded = True


class WNConv1d(_WeightNormConv):
    """Weight-normalised Conv1d: weight `(out, in, k)`, normalised per output channel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__((out_channels, in_channels, kernel_size), out_channels)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        out, inp, k = self.weight_v.shape
        return (f"{inp}, {out}, k={k}, stride={self.stride}, pad={self.padding}, "
                f"dil={self.dilation}")


class WNConvTranspose1d(_WeightNormConv):
    """Weight-normalised ConvTranspose1d upsampling by `stride` exactly (`L -> stride * L`).

    Its weight is `(in, out, k)`, so weight norm normalises per *input* channel.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__((in_channels, out_channels, 2 * stride), out_channels)
        self.stride = stride
        self.padding = math.ceil(stride / 2)
        self.output_padding = stride % 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose1d(
            x, self.weight(), self.bias, self.stride, self.padding, self.output_padding
        )

    def extra_repr(self) -> str:
        inp, out, k = self.weight_v.shape
        return f"{inp}, {out}, k={k}, stride={self.stride}, pad={self.padding}"


class Stage(nn.Module):
    """A `block` Sequential and nothing else: the official blocks need that extra name level
    in their state-dict keys (`....block.<i>...`)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResidualUnit(Stage):
    """Snake, dilated k7 conv, Snake, k1 conv, plus the input. Padding keeps the length, so
    the release's centre crop (for padding switched off) never applies here."""

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__(
            Snake1d(dim),
            WNConv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def residual_units(dim: int) -> list[nn.Module]:
    return [ResidualUnit(dim, d) for d in RESIDUAL_DILATIONS]


class EncoderBlock(Stage):
    """Residual units at `dim/2`, then a strided conv to `dim` (`L -> L / stride`)."""

    def __init__(self, dim: int, stride: int) -> None:
        half = dim // 2
        super().__init__(
            *residual_units(half),
            Snake1d(half),
            WNConv1d(half, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )


class DecoderBlock(Stage):
    """Upsampling transposed conv `in_dim -> out_dim`, then residual units at `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__(
            Snake1d(in_dim),
            WNConvTranspose1d(in_dim, out_dim, stride),
            *residual_units(out_dim),
        )


class Encoder(Stage):
    """Waveform `(B, 1, L)` -> `(B, latent, L / hop)`; channels double at every block."""

    def __init__(self, cfg: DACConfig) -> None:
        dims = [cfg.encoder_dim * 2**i for i in range(len(cfg.encoder_rates) + 1)]
        assert cfg.latent_dim is not None  # resolved by DACConfig
        super().__init__(
            WNConv1d(1, dims[0], 7, padding=3),
            *(EncoderBlock(dim, s) for dim, s in zip(dims[1:], cfg.encoder_rates, strict=True)),
            Snake1d(dims[-1]),
            WNConv1d(dims[-1], cfg.latent_dim, 3, padding=1),
        )


class Decoder(nn.Module):
    """`(B, latent, T)` -> waveform `(B, 1, hop * T)` in (-1, 1); channels halve at every
    block. The official attribute is `model` (keys `decoder.model.<i>`)."""

    def __init__(self, cfg: DACConfig) -> None:
        super().__init__()
        assert cfg.latent_dim is not None  # resolved by DACConfig
        dims = [cfg.decoder_dim // 2**i for i in range(len(cfg.decoder_rates) + 1)]
        self.model = nn.Sequential(
            WNConv1d(cfg.latent_dim, dims[0], 7, padding=3),
            *(
                DecoderBlock(i, o, s)
                for i, o, s in zip(dims[:-1], dims[1:], cfg.decoder_rates, strict=True)
            ),
            Snake1d(dims[-1]),
            WNConv1d(dims[-1], 1, 7, padding=3),
            nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------


@dataclass
class DiagonalGaussian:
    """The encoder's posterior. `mean` is the deterministic latent (what round trips use)."""

    mean: Tensor
    logvar: Tensor

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        """First half of the channels is the mean, second half the log-variance."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """`mean + std * eps`. Without a generator eps comes from the CPU default generator,
        as in the release, so a seeded run draws the same noise on any device."""
        device = generator.device if generator is not None else torch.device("cpu")
        eps = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> Tensor:
        """KL to N(0, I), averaged over channels and time: one value per batch item."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).mean(dim=(1, 2))


class DACVAE(nn.Module):
    """Continuous DAC: 48 kHz mono audio <-> 128-channel latents at 50 Hz (released config).

    `decoder_only=True` builds only `post_quant_conv` and `decoder` (the inference path);
    `encode` then fails with a clear error.
    """

    def __init__(self, cfg: DACConfig, *, decoder_only: bool = False) -> None:
        super().__init__()
        self.config = cfg
        latent = cfg.latent_dim
        assert latent is not None  # resolved by DACConfig
        self.encoder: Encoder | None = None if decoder_only else Encoder(cfg)
        self.quant_conv: nn.Conv1d | None = (
            None if decoder_only else nn.Conv1d(latent, 2 * latent, 1)
        )
        self.post_quant_conv = nn.Conv1d(latent, latent, 1)
        self.decoder = Decoder(cfg)

    @property
    def decoder_only(self) -> bool:
        return self.encoder is None

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def latent_dim(self) -> int:
        assert self.config.latent_dim is not None
        return self.config.latent_dim

    @property
    def latent_rate(self) -> float:
        return self.config.latent_rate

    def decode(self, z: Tensor) -> Tensor:
        """`(B, latent, T)` -> `(B, 1, hop * T)`. The input is cast to the model dtype (the
        sampler hands over fp32 latents whatever the VAE runs in)."""
        x = self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))
        return self.decoder(x)

    def preprocess(self, audio: Tensor, sample_rate: int | None = None) -> Tensor:
        """Right zero-pad the last axis to a multiple of the hop. No resampling: a different
        sample rate is an error (`None` means the model's)."""
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise InputError(
                f"audio is {sample_rate} Hz but the VAE works at {self.sample_rate} Hz; "
                "resample it first"
            )
        return F.pad(audio, (0, -audio.shape[-1] % self.hop_length))

    def encode(self, audio: Tensor) -> DiagonalGaussian:
        """Posterior of preprocessed audio `(B, 1, L)` (L a multiple of the hop, as
        `preprocess` makes it) over `(B, latent, L / hop)`."""
        if self.encoder is None or self.quant_conv is None:
            raise UsageError(
                "this audio VAE was built decoder-only and cannot encode; "
                "build it with decoder_only=False"
            )
        x = audio.to(self.quant_conv.weight.dtype)
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

    def fold_weight_norm(self) -> DACVAE:
        """Bake every weight-normalised conv's effective weight in once (for inference:
        forwards then skip the renormalisation; outputs are unchanged). Keys stay the same;
        loading a state dict afterwards restores normal weight-norm behaviour."""
        for module in self.modules():
            if isinstance(module, _WeightNormConv):
                module.fold_()
        return self
