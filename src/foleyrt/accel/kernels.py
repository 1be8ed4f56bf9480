"""Hand-fused kernels for the single blocks' memory-bound chains, as PyTorch custom ops.

Why: with dynamic shapes Inductor computes every element's token position with 64-bit integer
divisions, and the chains that need a position (modulation rows gathered from the sync rate,
the temporal convs' shifted taps, RoPE tables) ran at about half of the memory bandwidth
(`scripts/inductor_lab.py`; figures in docs/benchmarks.md, "Figures behind design choices"). These
kernels run one program per token row, positions computed once per program.

Two ops (`torch.ops.foleyrt.*`), each with a Triton kernel for CUDA and a PyTorch reference
for every other device (the semantics; `tests/accel/test_fused.py` checks the fused block
against the model's own code through it):

- `norm_modulate` / `residual_norm_modulate`: `LayerNorm(x) * (1 + scale) + shift` with the
  shift/scale rows picked from a modulation table (per batch row, per token or through a
  token -> row index), written in the next GEMM's input format (compute dtype; or float8 divided
  by a static scale; optionally unfolded into `k` tokens per row for a temporal conv). The
  residual form first adds a temporal conv's output to `x` (`k` unsummed tap outputs per
  token, a bias and a gate from the same table) and returns the new residual stream too.
- `rms_rope`: per-head RMSNorm (fp32 weight, one rounding: `nn.RMSNorm` as the single blocks
  run it) and the interleaved RoPE of `layers.apply_rope`, from a strided q or k slice of the
  fused QKV output to contiguous `[B, N, heads, D]`.
- `swiglu`: `SiLU(gate) * value` of the fused `w13` output, in the next GEMM's input format
  (Inductor's own kernel for it varied with the launch configuration its autotuning picked;
  this one has a fixed, bandwidth-bound one).

Rounding follows the eager model (the release's bf16 autocast run): the compute dtype is
rounded to where an eager op would round (tap sums, bias, gate, `1 + scale`, the norm output),
the rest is fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from foleyrt.accel.quant import FP8
from foleyrt.models.layers import FP32_EPS, add_bias, apply_rope, sum_taps, unfold_taps

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs use the references.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


def triton_available() -> bool:
    return triton is not None


# --------------------------------------------------------------------------------------------
# PyTorch references (every device but CUDA): the semantics of the ops
# --------------------------------------------------------------------------------------------


def _table_rows(table: Tensor, index: Tensor | None, tokens: int) -> Tensor:
    """Modulation table `[B, S, W]` seen per token `[B, N, W]`: row `index[n]`, row `n`
    (S == N) or row 0 (S == 1)."""
    if index is not None:
        return table[:, index]
    return table.expand(-1, tokens, -1) if table.shape[1] == 1 else table


def _chunk(rows: Tensor, col: int, channels: int) -> Tensor:
    return rows[..., col : col + channels]


def _format(h: Tensor, out_dtype: torch.dtype, round_dtype: torch.dtype,
            input_scale: Tensor | None, out_taps: int) -> Tensor:
    """A GEMM's input rows from fp32 `h [B, N, C]`: what the GEMM modules do to their input
    (`TapLayout.gemm_input`, then `Fp8Gemm.gemm`'s static quantisation)."""
    h = h.to(round_dtype)
    if out_taps > 1:
        h = unfold_taps(h, out_taps).contiguous()
    if input_scale is None:
        return h.to(out_dtype)
    if out_dtype != FP8.dtype:
        raise ValueError(f"static quantisation writes {FP8.dtype}, not {out_dtype}")
    return FP8.cast(h.float() * input_scale.reciprocal())


def _norm_modulate_reference(x: Tensor, table: Tensor, index: Tensor | None, shift_col: int,
                             scale_col: int, eps: float, out_dtype: torch.dtype,
                             round_dtype: torch.dtype, input_scale: Tensor | None,
                             out_taps: int) -> Tensor:
    c = x.shape[-1]
    rows = _table_rows(table, index, x.shape[1])
    xn = torch.nn.functional.layer_norm(x.float(), (c,), eps=eps)
    h = xn * (1 + _chunk(rows, scale_col, c)) + _chunk(rows, shift_col, c)
    return _format(h, out_dtype, round_dtype, input_scale, out_taps)


def _residual_reference(x: Tensor, y: Tensor, y_taps: int, bias: Tensor | None, table: Tensor,
                        index: Tensor | None, gate_col: int) -> Tensor:
    """`x + (sum of the taps' outputs + bias) * gate`, eager's roundings (`TapLayout`)."""
    c, n = x.shape[-1], x.shape[1]
    out = add_bias(sum_taps(y, y_taps), bias)
    return x + out * _chunk(_table_rows(table, index, n), gate_col, c)


def _swiglu_reference(hidden: Tensor, out_dtype: torch.dtype, round_dtype: torch.dtype,
                      input_scale: Tensor | None, out_taps: int) -> Tensor:
    gate, value = hidden.chunk(2, dim=-1)
    return _format(torch.nn.functional.silu(gate) * value, out_dtype, round_dtype, input_scale,
                   out_taps)


def _rms_rope_reference(qkv: Tensor, col: int, heads: int, head_dim: int, weight: Tensor,
                        cos: Tensor, signed_sin: Tensor) -> Tensor:
    x = qkv[..., col : col + heads * head_dim].unflatten(-1, (heads, head_dim))
    y = torch.nn.functional.rms_norm(x.float(), (head_dim,), weight.float(), eps=FP32_EPS)
    return apply_rope(y.to(x.dtype), cos, signed_sin)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _round(v, dtype: tl.constexpr):
        return v.to(dtype).to(tl.float32)

    @triton.jit
    def _within(mask, token, tokens):
        """`mask` where `token` (a scalar) is a token of the clip, as a vector mask."""
        token = token + tl.zeros(mask.shape, dtype=tl.int64)
        return mask & (token >= 0) & (token < tokens)

    @triton.jit
    def triton_norm_modulate(
        x_ptr, x_out_ptr, y_ptr, bias_ptr, table_ptr, index_ptr, h_ptr, input_scale_ptr,
        tokens, channels, table_batch_stride, table_token_stride,
        gate_col, shift_col, scale_col, eps,
        Y_TAPS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INDEX: tl.constexpr,
        OUT_TAPS: tl.constexpr, QUANTIZE: tl.constexpr, QMAX: tl.constexpr,
        ROUND_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        b = row // tokens
        n = row - b * tokens
        cols = tl.arange(0, BLOCK)
        mask = cols < channels
        if HAS_INDEX:
            t = tl.load(index_ptr + n)
        else:
            t = n
        mod = table_ptr + b * table_batch_stride + t * table_token_stride
        table_dtype: tl.constexpr = table_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * channels + cols, mask=mask, other=0.0).to(tl.float32)
        if Y_TAPS > 0:
            y_dtype: tl.constexpr = y_ptr.dtype.element_ty
            acc = tl.zeros([BLOCK], dtype=tl.float32)
            for j in tl.static_range(Y_TAPS):
                v = tl.load(y_ptr + (row + j - Y_TAPS // 2) * (Y_TAPS * channels)
                            + j * channels + cols, mask=_within(mask, n + j - Y_TAPS // 2, tokens),
                            other=0.0).to(tl.float32)
                if j == 0:
                    acc = v
                else:
                    acc = _round(acc + v, y_dtype)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                acc = _round(acc + bias, y_dtype)
            gate = tl.load(mod + gate_col + cols, mask=mask, other=0.0).to(tl.float32)
            x_dtype: tl.constexpr = x_out_ptr.dtype.element_ty
            x = _round(x + _round(acc * gate, y_dtype), x_dtype)
            tl.store(x_out_ptr + row * channels + cols, x.to(x_dtype), mask=mask)
        mean = tl.sum(x, axis=0) / channels
        d = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / channels + eps)
        scale = tl.load(mod + scale_col + cols, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(mod + shift_col + cols, mask=mask, other=0.0).to(tl.float32)
        h = _round(d * rstd * _round(1.0 + scale, table_dtype) + shift, ROUND_DTYPE)
        if QUANTIZE:
            inverse = tl.math.div_rn(1.0, tl.load(input_scale_ptr))  # IEEE, as torch.reciprocal
            h = tl.minimum(tl.maximum(h * inverse, -QMAX), QMAX)
        out = h.to(h_ptr.dtype.element_ty)
        width = OUT_TAPS * channels
        for j in tl.static_range(OUT_TAPS):
            # This token is tap j of token n - j + k//2; this row's tap j, when it falls off
            # the clip, is zero padding.
            tl.store(h_ptr + (row - j + OUT_TAPS // 2) * width + j * channels + cols, out,
                     mask=_within(mask, n - j + OUT_TAPS // 2, tokens))
            tl.store(h_ptr + row * width + j * channels + cols, tl.zeros_like(out),
                     mask=mask & ~_within(mask, n + j - OUT_TAPS // 2, tokens))

    @triton.jit
    def triton_rms_rope(
        src_ptr, out_ptr, weight_ptr, cos_ptr, sin_ptr,
        tokens, src_row_stride, heads, head_dim, eps,
        BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # Channel pairs (2i, 2i+1) are rotated together: the row is split into its even and
        # odd channels (one contiguous load, no second load of the partner channels).
        row = tl.program_id(0).to(tl.int64)
        n = row % tokens
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < heads) & (d < head_dim)
        x = tl.load(src_ptr + row * src_row_stride + h * head_dim + d, mask=mask,
                    other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / head_dim + eps)[:, None]
        dtype: tl.constexpr = out_ptr.dtype.element_ty
        w = tl.load(weight_ptr + d, mask=d < head_dim, other=0.0).to(tl.float32)
        v = _round(x * rstd * w, dtype)
        cos = tl.load(cos_ptr + n * head_dim + d, mask=d < head_dim, other=0.0)
        sin = tl.load(sin_ptr + n * head_dim + d, mask=d < head_dim, other=0.0)
        v_even, v_odd = tl.split(tl.reshape(v, [BLOCK_H, BLOCK_D // 2, 2]))
        cos_even, cos_odd = tl.split(tl.reshape(cos, [1, BLOCK_D // 2, 2]))
        sin_even, sin_odd = tl.split(tl.reshape(sin, [1, BLOCK_D // 2, 2]))
        out = tl.reshape(tl.join(v_even * cos_even + v_odd * sin_even,
                                 v_odd * cos_odd + v_even * sin_odd), [BLOCK_H, BLOCK_D])
        tl.store(out_ptr + row * heads * head_dim + h * head_dim + d, out.to(dtype), mask=mask)


    @triton.jit
    def triton_swiglu(src_ptr, out_ptr, input_scale_ptr, hidden,
                      QUANTIZE: tl.constexpr, QMAX: tl.constexpr, ROUND_DTYPE: tl.constexpr,
                      BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < hidden
        src = src_ptr + row * 2 * hidden + cols
        gate = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        value = tl.load(src + hidden, mask=mask, other=0.0).to(tl.float32)
        # SiLU rounded to the compute dtype, then the product (eager's two roundings).
        h = _round(_round(gate / (1.0 + tl.exp(-gate)), ROUND_DTYPE) * value, ROUND_DTYPE)
        if QUANTIZE:
            inverse = tl.math.div_rn(1.0, tl.load(input_scale_ptr))
            h = tl.minimum(tl.maximum(h * inverse, -QMAX), QMAX)
        tl.store(out_ptr + row * hidden + cols, h.to(out_ptr.dtype.element_ty), mask=mask)


_TL_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _format_constants(out_dtype: torch.dtype, round_dtype: torch.dtype,
                      input_scale: Tensor | None) -> dict:
    """The kernels' compile-time arguments for writing a GEMM's input format."""
    quantize = input_scale is not None
    return {"QUANTIZE": quantize, "QMAX": float(torch.finfo(out_dtype).max) if quantize else 0.0,
            "ROUND_DTYPE": getattr(tl, _TL_DTYPES[round_dtype])}


def _warps(block: int) -> int:
    return 4 if block <= 2048 else 8


def _launch_norm_modulate(x: Tensor, x_out: Tensor | None, y: Tensor | None, y_taps: int,
                          bias: Tensor | None, table: Tensor, index: Tensor | None,
                          gate_col: int, shift_col: int, scale_col: int, eps: float,
                          h: Tensor, round_dtype: torch.dtype, input_scale: Tensor | None,
                          out_taps: int) -> None:
    rows, c = x.numel() // x.shape[-1], x.shape[-1]
    if rows == 0:
        return
    block = triton.next_power_of_2(c)
    table = table if table.stride(-1) == 1 else table.contiguous()  # rows read as vectors
    token_stride = 0 if index is None and table.shape[1] == 1 else table.stride(1)
    triton_norm_modulate[(rows,)](
        x, x if x_out is None else x_out, x if y is None else y,
        x if bias is None else bias, table, x if index is None else index, h,
        x if input_scale is None else input_scale,
        x.shape[1], c, table.stride(0), token_stride, gate_col, shift_col, scale_col, eps,
        Y_TAPS=0 if y is None else y_taps, HAS_BIAS=bias is not None,
        HAS_INDEX=index is not None, OUT_TAPS=out_taps,
        **_format_constants(h.dtype, round_dtype, input_scale),
        BLOCK=block, num_warps=_warps(block),
    )


def _check_rows(x: Tensor, table: Tensor) -> None:
    if x.dim() != 3 or table.dim() != 3 or table.shape[0] != x.shape[0]:
        raise ValueError(f"norm_modulate wants x [B, N, C] and a table [B, S, W]; got "
                         f"{tuple(x.shape)} and {tuple(table.shape)}")


# --------------------------------------------------------------------------------------------
# The custom ops
# --------------------------------------------------------------------------------------------


def _h_like(x: Tensor, out_dtype: torch.dtype, out_taps: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_taps * x.shape[-1]), dtype=out_dtype)


@torch.library.custom_op("foleyrt::norm_modulate", mutates_args=())
def norm_modulate(x: Tensor, table: Tensor, index: Tensor | None, shift_col: int,
                  scale_col: int, eps: float, out_dtype: torch.dtype,
                  round_dtype: torch.dtype, input_scale: Tensor | None, out_taps: int) -> Tensor:
    """`LayerNorm(x) * (1 + scale) + shift` as a GEMM's input rows (see the module doc)."""
    _check_rows(x, table)
    if x.device.type != "cuda" or triton is None:
        return _norm_modulate_reference(x, table, index, shift_col, scale_col, eps, out_dtype,
                                        round_dtype, input_scale, out_taps)
    h = _h_like(x, out_dtype, out_taps)
    _launch_norm_modulate(x.contiguous(), None, None, 0, None, table, index, 0, shift_col,
                          scale_col, eps, h, round_dtype, input_scale, out_taps)
    return h


@norm_modulate.register_fake
def _(x, table, index, shift_col, scale_col, eps, out_dtype, round_dtype, input_scale, out_taps):
    return _h_like(x, out_dtype, out_taps)


@torch.library.custom_op("foleyrt::residual_norm_modulate", mutates_args=())
def residual_norm_modulate(
    x: Tensor, y: Tensor, y_taps: int, bias: Tensor | None, table: Tensor,
    index: Tensor | None, gate_col: int, shift_col: int, scale_col: int, eps: float,
    out_dtype: torch.dtype, round_dtype: torch.dtype, input_scale: Tensor | None, out_taps: int,
) -> tuple[Tensor, Tensor]:
    """`x + taps(y) * gate`, and that normed and modulated as `norm_modulate` does."""
    _check_rows(x, table)
    if x.device.type != "cuda" or triton is None:
        x = _residual_reference(x, y, y_taps, bias, table, index, gate_col)
        return x, _norm_modulate_reference(x, table, index, shift_col, scale_col, eps,
                                           out_dtype, round_dtype, input_scale, out_taps)
    x_out = torch.empty_like(x, dtype=torch.promote_types(x.dtype, y.dtype))
    h = _h_like(x, out_dtype, out_taps)
    _launch_norm_modulate(x.contiguous(), x_out, y.contiguous(), y_taps, bias, table, index,
                          gate_col, shift_col, scale_col, eps, h, round_dtype, input_scale,
                          out_taps)
    return x_out, h


@residual_norm_modulate.register_fake
def _(x, y, y_taps, bias, table, index, gate_col, shift_col, scale_col, eps, out_dtype,
      round_dtype, input_scale, out_taps):
    x_out = torch.empty_like(x, dtype=torch.promote_types(x.dtype, y.dtype))
    return x_out, _h_like(x, out_dtype, out_taps)


@torch.library.custom_op("foleyrt::rms_rope", mutates_args=())
def rms_rope(qkv: Tensor, col: int, heads: int, head_dim: int, weight: Tensor, cos: Tensor,
             signed_sin: Tensor) -> Tensor:
    """Columns `col : col + heads*head_dim` of `qkv [B, N, W]` as heads, RMS-normed and
    rotated: `[B, N, heads, head_dim]`, contiguous."""
    if qkv.device.type != "cuda" or triton is None:
        return _rms_rope_reference(qkv, col, heads, head_dim, weight, cos, signed_sin)
    b, n, _ = qkv.shape
    out = qkv.new_empty((b, n, heads, head_dim))
    if out.numel() and qkv.stride(-1) == 1 and qkv.stride(0) == n * qkv.stride(1):
        triton_rms_rope[(b * n,)](
            qkv[..., col:], out, weight, cos.contiguous(), signed_sin.contiguous(),
            n, qkv.stride(1), heads, head_dim, FP32_EPS,
            BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(head_dim),
            num_warps=4,
        )
        return out
    out.copy_(_rms_rope_reference(qkv, col, heads, head_dim, weight, cos, signed_sin))
    return out


@rms_rope.register_fake
def _(qkv, col, heads, head_dim, weight, cos, signed_sin):
    return qkv.new_empty((qkv.shape[0], qkv.shape[1], heads, head_dim))


@torch.library.custom_op("foleyrt::swiglu", mutates_args=())
def swiglu(hidden: Tensor, out_dtype: torch.dtype, round_dtype: torch.dtype,
           input_scale: Tensor | None, out_taps: int) -> Tensor:
    """`SiLU(gate) * value` of `hidden [B, N, 2H]` (gate columns first) as a GEMM's input rows."""
    if hidden.device.type != "cuda" or triton is None or out_taps != 1:
        return _swiglu_reference(hidden, out_dtype, round_dtype, input_scale, out_taps)
    hidden = hidden.contiguous()
    width = hidden.shape[-1] // 2
    out = hidden.new_empty((*hidden.shape[:-1], width), dtype=out_dtype)
    rows, block = hidden.numel() // hidden.shape[-1], 1024
    if out.numel():
        triton_swiglu[(rows, triton.cdiv(width, block))](
            hidden, out, hidden if input_scale is None else input_scale, width,
            **_format_constants(out_dtype, round_dtype, input_scale), BLOCK=block,
            num_warps=4)
    return out


@swiglu.register_fake
def _(hidden, out_dtype, round_dtype, input_scale, out_taps):
    shape = (*hidden.shape[:-1], out_taps * (hidden.shape[-1] // 2))
    return hidden.new_empty(shape, dtype=out_dtype)
