"""Building blocks shared by the transformer's embedders and blocks.

Precision rule (spec/mmdit.md §5.2), written out instead of relying on autocast: every matrix
op casts its input to its own weight dtype; norms, modulation and the audio residual stream
work in fp32. With fp32 weights every cast is a no-op; with bf16 weights the numbers are those
of the release's bf16 autocast run. Quantised replacements of `Linear`/`TemporalConv` keep the
same call signature and handle their own casts, so no model code branches on precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP32_EPS = torch.finfo(torch.float32).eps


class Linear(nn.Linear):
    """`nn.Linear` that casts its input to the weight dtype (the autocast rule, made explicit)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.gemm(x.to(self.weight.dtype), self.bias)

    def gemm(self, rows: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(rows, self.weight, bias)


def add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    return y if bias is None else y + bias


def taps_on_output(in_channels: int, out_channels: int, kernel_size: int) -> bool:
    """Where a temporal conv's GEMM puts its `k` taps: on the output (one product gives every
    tap's output, `k` times the output's size) or on the input (an unfolded copy, `k` times the
    input's size): the output for a conv that does not widen. Quantised GEMMs keep this rule
    although their 1-byte inputs would favour unfolding: the unfolded copy costs more than its
    bytes (with dynamic shapes its kernel divides every index by the token count; the FP8
    `linear1` timings are in docs/benchmarks.md, "Figures behind design choices")."""
    return kernel_size > 1 and in_channels >= out_channels


class TapLayout:
    """How a temporal conv of kernel `kernel_size` becomes one GEMM, in one of two exact ways
    (`taps_on_output` says which):

    - taps on the input: the zero-padded window of `k` tokens is unfolded to `[B, N, k*in]`,
      tap-major (feature `j*in + c` = channel `c` of token `n + j - k//2`), and multiplied by
      the `[out, k*in]` rows;
    - taps on the output: one product gives every tap's output `[B, N, k*out]` (weight rows
      tap-major), and the `k` outputs are summed, each shifted by its offset. The input is
      never copied `k` times, and a quantised GEMM scales it per plain token.

    Shared by `TemporalConv` and its quantised replacements, which keep its choice and its
    call (`tap_conv`)."""

    kernel_size: int
    taps_on_output: bool

    @property
    def input_taps(self) -> int:
        """Tokens per GEMM input row: `k` when the taps are on the input, else 1."""
        return 1 if self.taps_on_output else self.kernel_size

    def stored_layout(self, weight: Tensor) -> Tensor:
        """`weight [out, in, k]` with the same values, stored so that `gemm_weight` is a view."""
        ordered = _gemm_order(weight, self.taps_on_output).contiguous()
        return ordered.permute(1, 2, 0) if self.taps_on_output else ordered.transpose(1, 2)

    def gemm_weight(self, weight: Tensor) -> Tensor:
        """`weight [out, in, k]` as the GEMM's `[rows, K]`: `[k*out, in]` (taps on the output)
        or `[out, k*in]` (taps on the input)."""
        ordered = _gemm_order(weight, self.taps_on_output)
        return ordered.reshape(-1, weight.shape[1]) if self.taps_on_output else ordered.flatten(1)

    def weight_of_gemm(self, rows: Tensor, shape: torch.Size) -> Tensor:
        """The inverse of `gemm_weight`: GEMM rows seen in the layer's weight `shape` (a view,
        in the stored layout)."""
        out, inp, k = shape
        if self.taps_on_output:
            return rows.view(k, out, inp).permute(1, 2, 0)
        return rows.view(out, k, inp).transpose(1, 2)

    def gemm_input(self, x: Tensor) -> Tensor:
        """`[B, N, C]` -> the GEMM's rows: unfolded `[B, N, k*C]` with feature `j*C + c` =
        token `n + j - k//2` (taps on the input), else `x` itself."""
        return x if self.input_taps == 1 else unfold_taps(x, self.kernel_size)

    def tap_conv(self, x: Tensor, gemm: Callable[[Tensor, Tensor | None], Tensor],
                 bias: Tensor | None) -> Tensor:
        """The layer's output for `x [..., C]` through `gemm` (rows `[M, K]` and a bias to add
        or None -> `[M, rows]`); `bias` goes into the GEMM unless the taps are summed after it.
        The GEMM reads flattened rows: an unfolded window is then copied once by a kernel of
        the compiled graph (a 3-D view of overlapping windows makes the matmul copy it itself,
        slower, and pick a slower GEMM)."""
        return self.conv_rows(self.gemm_input(x), gemm, bias)

    def conv_rows(self, rows: Tensor, gemm: Callable[[Tensor, Tensor | None], Tensor],
                  bias: Tensor | None) -> Tensor:
        """`tap_conv` from the GEMM's input rows (`gemm_input`'s result, or rows a fused
        kernel wrote in that layout)."""
        summed_after = self.taps_on_output
        y = gemm(rows.flatten(0, -2), None if summed_after else bias)
        y = y.unflatten(0, rows.shape[:-1])
        if not summed_after:
            return y
        return add_bias(self.gemm_output(y), bias)

    def gemm_output(self, y: Tensor) -> Tensor:
        """The GEMM's `[B, N, rows]` -> `[B, N, out]`: tap `j`'s output for token `n` is
        added at token `n - j + k//2` (taps on the output), else `y` itself."""
        return sum_taps(y, self.kernel_size) if self.taps_on_output else y


def unfold_taps(x: Tensor, k: int) -> Tensor:
    """`[B, N, C]` -> `[B, N, k*C]`, feature `j*C + c` = channel `c` of token `n + j - k//2`
    (zero beyond the clip). Windows as a view of the padded tokens (`unfold`: tap j of token n
    = padded token n + j), taps before channels, then one copy whose source index is affine in
    the destination's (a `cat` of shifted slices compiles to k masked loads per element)."""
    xp = F.pad(x, (0, 0, k // 2, k // 2))
    return xp.unfold(1, k, 1).transpose(-1, -2).flatten(-2)


def sum_taps(y: Tensor, k: int) -> Tensor:
    """`[B, N, k*C]` tap-major GEMM outputs -> `[B, N, C]`: tap `j`'s output for token `n` is
    added at token `n - j + k//2` (zero beyond the clip), in the taps' order."""
    pad, n = k // 2, y.shape[1]
    yp = F.pad(y.unflatten(-1, (k, -1)), (0, 0, 0, 0, pad, pad))
    out = yp[:, 0:n, 0]
    for j in range(1, k):
        out = out + yp[:, j : j + n, j]
    return out


class TemporalConv(TapLayout, nn.Module):
    """A Conv1d along the token axis of a `[B, N, C]` stream, computed as one GEMM
    (`TapLayout`), taps on the output unless the conv widens (`taps_on_output`).

    Keys and shapes are those of `nn.Conv1d` (`weight [out, in, k]`, optional `bias`). The
    parameter shows that shape but is stored so that its GEMM view is free (memory
    `[out, k, in]` or `[k, out, in]`: `in` innermost either way); any other layout (e.g. a
    `.contiguous()` copy) gives the same numbers through a copy per call. Both arrangements
    beat cuDNN's conv here and quantise like any Linear.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("TemporalConv needs an odd kernel (symmetric 'same' padding)")
        self.kernel_size = kernel_size
        self.taps_on_output = taps_on_output(in_channels, out_channels, kernel_size)
        weight = torch.empty(out_channels, in_channels, kernel_size)
        self.weight = nn.Parameter(self.stored_layout(weight))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.register_load_state_dict_post_hook(TemporalConv._keep_layout)

    @staticmethod
    def _keep_layout(module: TemporalConv, incompatible: object) -> None:
        """Loading with `assign=True` replaces the parameter by the file's (standard) layout."""
        w = module.weight
        if w.device.type != "meta" and not _gemm_order(w, module.taps_on_output).is_contiguous():
            module.weight = nn.Parameter(module.stored_layout(w.data),
                                         requires_grad=w.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return self.tap_conv(x.to(self.weight.dtype), self.gemm, self.bias)

    def gemm(self, rows: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(rows, self.gemm_weight(self.weight), bias)


# A layer whose weight is one GEMM: what `accel` quantises and fuses.
GemmLayer = Linear | TemporalConv


def _gemm_order(weight: Tensor, taps_on_output: bool) -> Tensor:
    """`weight [out, in, k]` permuted to the GEMM's row-major order (`in` innermost)."""
    return weight.permute(2, 0, 1) if taps_on_output else weight.transpose(1, 2)


class SwiGLU(nn.Module):
    """`w2(SiLU(w1(x)) * w3(x))`, bias-free; per token (`kernel_size=None`) or as temporal
    convolutions of odd kernel size.

    `w1` and `w3` read the same input, so they run as one GEMM, `w13` (w1's rows, then w3's):
    one input read (one unfold, one quantisation) and one launch instead of two. The state dict
    speaks the release's `w1`/`w3` keys: the hooks split `w13` on save and join on load. A
    quantised `w13` (scales of its own) is saved as it is, like the single blocks' qkv.
    """

    def __init__(self, dim: int, hidden: int, out: int, kernel_size: int | None = None) -> None:
        super().__init__()

        def layer(i: int, o: int) -> GemmLayer:
            if kernel_size is None:
                return Linear(i, o, bias=False)
            return TemporalConv(i, o, kernel_size, bias=False)

        self.w13 = layer(dim, 2 * hidden)
        self.w2 = layer(hidden, out)
        self._register_load_state_dict_pre_hook(self._join_w1_w3)
        self._register_state_dict_hook(SwiGLU._split_w13)

    def _join_w1_w3(self, state_dict: dict, prefix: str, *args: object) -> None:
        w1, w3 = f"{prefix}w1.weight", f"{prefix}w3.weight"
        if w1 in state_dict and w3 in state_dict:
            state_dict[f"{prefix}w13.weight"] = torch.cat(
                [state_dict.pop(w1), state_dict.pop(w3)])

    @staticmethod
    def _split_w13(module: SwiGLU, state_dict: dict, prefix: str, *args: object) -> None:
        if not isinstance(module.w13, GemmLayer):  # a quantised w13 is saved as it is
            return
        own = [key for key in state_dict if key.startswith(prefix)]  # re-added in release order
        entries = {key: state_dict.pop(key) for key in own}
        w1, w3 = entries.pop(f"{prefix}w13.weight").chunk(2)
        state_dict[f"{prefix}w1.weight"] = w1
        state_dict.update(entries)
        state_dict[f"{prefix}w3.weight"] = w3

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * value)


def release_weight_keys(module_name: str) -> tuple[str, ...]:
    """The release's state-dict keys holding the weight of the GEMM module `module_name`
    (a `SwiGLU`'s fused `w13` is saved as `w1` and `w3`)."""
    parent, _, leaf = module_name.rpartition(".")
    if leaf == "w13":
        return (f"{parent}.w1.weight", f"{parent}.w3.weight")
    return (f"{module_name}.weight",)


class Modulation(nn.Module):
    """`linear(SiLU(c))` split into `factor` chunks (shift/scale/gate vectors)."""

    def __init__(self, hidden: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.linear = Linear(hidden, factor * hidden)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return self.project(F.silu(c))

    def project(self, activated: Tensor) -> tuple[Tensor, ...]:
        """The chunks of `linear(activated)`, for a caller that computed `SiLU(c)` once for
        several modulations of the same `c`."""
        return self.linear(activated).chunk(self.factor, dim=-1)


class HeadRMSNorm(nn.Module):
    """The triple blocks' RMSNorm (eps 1e-6): normalise in fp32, round to the input dtype,
    then scale by the weight in that dtype (two roundings, as the release does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


class TorchRMSNorm(nn.Module):
    """The single blocks' norm: PyTorch's `nn.RMSNorm(D)` as the release runs it: eps is the
    fp32 machine epsilon (whatever the input dtype), weight applied in fp32, one rounding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), eps=FP32_EPS)
        return y.to(x.dtype)


class HeadLayerNorm(nn.LayerNorm):
    """`qk_norm_type: layer` (affine LayerNorm per head, eps 1e-6), computed in fp32."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, eps=1e-6, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """Parameter-free LayerNorm in fp32 (autocast runs every LayerNorm in fp32)."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """`x * (1 + scale) + shift`; `1 + scale` in the vectors' dtype, the rest promoted."""
    return x * (1 + scale) + shift


# --------------------------------------------------------------------------------------------
# Rotary position embedding (pairwise-interleaved, "GPT-J" form, theta 10000, one axis)
# --------------------------------------------------------------------------------------------


def rope_table(positions: Tensor, head_dim: int, theta: int = 10000) -> tuple[Tensor, Tensor]:
    """cos and signed-sin tables `[N, head_dim]` for fp32 `positions`: every frequency is
    repeated for an adjacent channel pair, and the rotation's sign is folded into the sin table
    (`-sin` on the pair's first channel, `+sin` on its second; see `apply_rope`). Built on the
    positions' device (no host round-trips per call)."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float()
    omega = 1.0 / (theta ** (exponent / head_dim))
    angles = torch.outer(positions.float(), omega)
    cos = angles.cos().repeat_interleave(2, dim=1)
    sin = angles.sin()
    return cos, torch.stack((-sin, sin), dim=-1).flatten(1)


def apply_rope(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotate `x [B, N, heads, D]` by `rope_table`'s tables `[N, D]`, in fp32, rounded back to
    `x`'s dtype: channel pair `(a, b)` becomes `(a cos - b sin, b cos + a sin)`, written as
    `x * cos + swap(x) * signed_sin` (`swap` exchanges each pair's channels). The same numbers
    as negating and stacking half-channels (negation is exact), but a compiled kernel reads
    each element's partner with one load instead of two masked ones."""
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos[:, None] + swapped * signed_sin[:, None]).to(x.dtype)


def nearest_exact_index(src_len: int, dst_len: int, device: torch.device | None = None) -> Tensor:
    """Source index per destination index of PyTorch's `nearest-exact` resampling
    (`min(floor((i + 0.5) * src/dst), src - 1)` in fp32), obtained from the very op the
    release uses so the float arithmetic is the same by construction."""
    ramp = torch.arange(src_len, dtype=torch.float32).view(1, 1, src_len)
    idx = F.interpolate(ramp, size=dst_len, mode="nearest-exact").view(dst_len)
    return idx.long().to(device) if device is not None else idx.long()


def timestep_embedding(t: Tensor, dim: int = 256, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding of `t` (0..1000 scale), cosine half first (fp32)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


ACTIVATION_LAYERS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}
