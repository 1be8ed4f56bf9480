"""The blocks' forward on the hand-fused kernels of `accel.kernels` (`compile` mode).

`SingleBlock.forward` is the reference; `FusedSingleBlock.forward` computes the same block with
four of its memory-bound chains each in one kernel that writes the next GEMM's input format
directly (float8 already divided by the static scale, the temporal conv's unfold done):

1. LayerNorm + modulation (rows from the per-token table) -> `linear_qkv`'s input;
2. q/k RMSNorm + RoPE, from the QKV output to the attention's layout;
3. `linear1`'s tap sum + bias, gated residual, LayerNorm + modulation -> `w13`'s input;
4. SiLU(gate) * value -> `w2`'s input.

The rest (GEMMs, attention, the last gated residual) is the reference's code, which Inductor
already fuses well. `FusedTripleBlock` overrides the triple block's two LayerNorm steps
(`_norm_gemm`, `_residual_norm_gemm`: a stream's LayerNorm + modulation, after its gated
residual) with the same kernels. The GEMM modules are called through `gemm` (their matrix product
on prepared rows), so forward hooks on them do not run: `foleyrt calibrate` records the
reference forward, never this one.
"""

from __future__ import annotations

from torch import Tensor, nn

from foleyrt.accel import kernels
from foleyrt.accel.formats import GemmInput, input_format
from foleyrt.models.dit import (
    LN_EPS,
    MLP,
    SINGLE_LN_EPS,
    FoleyDiT,
    RopePair,
    SingleBlock,
    TripleBlock,
    attention,
)
from foleyrt.models.layers import GemmLayer, Linear, TapLayout

# Chunks of the single blocks' modulation table, in `Modulation(h, 6)` order.
SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)


def _format_args(fmt: GemmInput) -> tuple:
    return fmt.dtype, fmt.round_dtype, fmt.scale, fmt.taps


def _rows_gemm(layer: GemmLayer, rows: Tensor, bias: Tensor | None) -> Tensor:
    """`layer.gemm` on `rows [B, N, K]` -> `[B, N, out rows]`."""
    return layer.gemm(rows.flatten(0, 1), bias).unflatten(0, rows.shape[:2])


def _conv_rows(layer: GemmLayer, rows: Tensor) -> Tensor:
    """A temporal conv (or its quantised replacement) on its GEMM's input rows."""
    assert isinstance(layer, TapLayout)  # the single blocks' SwiGLU convs
    return layer.conv_rows(rows, layer.gemm, layer.bias)


class _Adopting(nn.Module):
    @classmethod
    def adopt(cls, block: nn.Module) -> nn.Module:
        """This class's block over `block`'s own submodules, parameters and hooks (nothing is
        copied: `fuse_blocks` puts it in `block`'s place)."""
        fused = cls.__new__(cls)
        fused.__dict__.update(block.__dict__)
        return fused


class FusedSingleBlock(_Adopting, SingleBlock):
    """`SingleBlock` with the fused kernels (same parameters, state dict and numbers up to
    rounding order)."""

    def forward(self, x: Tensor, activated_cond: Tensor, rope: RopePair,
                cond_index: Tensor | None = None) -> Tensor:
        c = x.shape[-1]
        table = self.modulation.linear(activated_cond)  # [B, S, 6C]: one row per cond row
        qkv_layer, conv, w13 = self.linear_qkv, self.linear1, self.linear2.w13
        h = kernels.norm_modulate(
            x, table, cond_index, SHIFT_MSA * c, SCALE_MSA * c, SINGLE_LN_EPS,
            *_format_args(input_format(qkv_layer)))
        qkv = _from_rows(qkv_layer, h)
        heads, d = self.heads, c // self.heads
        q = kernels.rms_rope(qkv, 0, heads, d, self.q_norm.weight, *rope)
        k = kernels.rms_rope(qkv, c, heads, d, self.k_norm.weight, *rope)
        v = qkv[..., 2 * c:].unflatten(-1, (heads, d))
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2))
        if conv.taps_on_output:  # the tap sum and bias go into the next kernel
            y, taps, bias = _rows_gemm(conv, out, None), conv.kernel_size, conv.bias
        else:
            y, taps, bias = conv(out), 1, None
        x, h = kernels.residual_norm_modulate(
            x, y, taps, bias, table, cond_index, GATE_MSA * c, SHIFT_MLP * c, SCALE_MLP * c,
            SINGLE_LN_EPS, *_format_args(input_format(w13)))
        hidden = _conv_rows(w13, h)
        w2 = self.linear2.w2
        act = kernels.swiglu(hidden, *_format_args(input_format(w2)))
        rows = table if cond_index is None else table[:, cond_index]
        gate_mlp = rows[..., GATE_MLP * c:(GATE_MLP + 1) * c]
        return x + _conv_rows(w2, act) * gate_mlp


def _first_gemm(layer: Linear | MLP) -> Linear:
    """The GEMM that reads a sub-layer's normed input (an MLP's `fc1`)."""
    return layer.fc1 if isinstance(layer, MLP) else layer


def _from_rows(layer: Linear | MLP, rows: Tensor) -> Tensor:
    """`layer` on input rows in its first GEMM's input format."""
    first = _first_gemm(layer)
    y = _rows_gemm(first, rows, first.bias)
    return layer.fc2(layer.act(y)) if isinstance(layer, MLP) else y


class FusedTripleBlock(_Adopting, TripleBlock):
    """`TripleBlock` whose LayerNorm + modulation steps (and the gated residuals before them)
    run on `accel.kernels` (same parameters, state dict and numbers up to rounding order)."""

    def _norm_gemm(self, x: Tensor, mods: Tensor, i: int, layer: Linear | MLP) -> Tensor:
        c = x.shape[-1]
        h = kernels.norm_modulate(x, mods, None, 3 * i * c, (3 * i + 1) * c, LN_EPS,
                                  *_format_args(input_format(_first_gemm(layer))))
        return _from_rows(layer, h)

    def _residual_norm_gemm(self, x: Tensor, update: Tensor, mods: Tensor, i: int,
                            layer: Linear | MLP) -> tuple[Tensor, Tensor]:
        c = x.shape[-1]
        x, h = kernels.residual_norm_modulate(
            x, update, 1, None, mods, None, (3 * i - 1) * c, 3 * i * c, (3 * i + 1) * c, LN_EPS,
            *_format_args(input_format(_first_gemm(layer))))
        return x, _from_rows(layer, h)


FUSED = {SingleBlock: FusedSingleBlock, TripleBlock: FusedTripleBlock}


def fuse_blocks(dit: FoleyDiT) -> int:
    """Put a fused block in the place of every block of `dit` (after quantisation: the kernels
    write the quantised GEMMs' input formats); returns how many were replaced."""
    swapped = 0
    for blocks in (dit.triple_blocks, dit.single_blocks):
        for i, block in enumerate(blocks):
            if type(block) in FUSED:
                blocks[i] = FUSED[type(block)].adopt(block)
                swapped += 1
    return swapped
