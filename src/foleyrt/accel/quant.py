"""Quantised matrix products for the transformer's per-step GEMMs (`--precision`).

Formats, one GEMM core each (a temporal conv arranges its window's taps exactly as
`TemporalConv` does, around the same GEMM a Linear has):

- `fp8` (`Fp8Gemm`): E4M3 weights with one fp32 scale per output channel; activations quantised
  per token at run time (scale = max|row| / 448); `torch._scaled_mm` with row-wise scales, out
  in the compute dtype. With a calibration file: one static scale per tensor for activations
  and weights instead (faster: see `Fp8Gemm`). Needs FP8 tensor cores (compute capability
  8.9+); PyTorch's CPU kernel runs the same call, which is what the tests use.
- `int8-weight` (`Int8WeightGemm`): INT8 weights with one scale per output channel, dequantised
  into a compute-dtype matmul: half of bf16's weight memory, any device, no calibration.
- `int8` (`Int8Gemm`): W8A8 on `torch._int_mm` with a static per-tensor activation scale from a
  calibration file (`foleyrt calibrate`). With the file's per-channel ranges, SmoothQuant
  migration moves the activations' outlier channels into the weights (folded once, here); the
  per-column divisor it leaves on the activation is applied by the op that rounds it.

What is quantised (`quantizable_names`): the GEMMs inside the blocks that run at every step,
including the single blocks' modulations, which see one conditioning vector per audio token
(the timestep plus the sync features): a GEMM as large as the block's QKV projection.
Kept in the compute dtype: the triple blocks' modulations (one row per sample: no time to win,
and their shift/scale/gate outputs multiply whole streams), the text K/V projection (once per
request), the embedders, the final layer, norms and attention.

A quantised module keeps the call of the layer it replaces and its state-dict names: `weight`
(quantised dtype, original shape) and `bias` (unchanged), plus its scales (`weight_scale`, one
per GEMM row — `k` per output channel for a temporal conv with taps on the output — or one per
tensor for static fp8; static fp8 and int8: `input_scale`; int8: `output_scale`). The single
blocks' `linear_qkv` keeps its rows in the block's internal order; the block's state-dict hooks
permute `weight` and `bias` to the release layout and back but not the scales, so a quantised
state dict round-trips through this code and is not a release-layout checkpoint.

Kernel shape rules are met by zero padding inside the call, never by changing stored shapes:
`_scaled_mm` needs K and N multiples of 16, `_int_mm` multiples of 8 and more than 16 rows. The
released sizes (and the tiny test model) are aligned, so only rows are ever padded there.
Everything traces with Dynamo `fullgraph=True, dynamic=True`: no host syncs, and the only
branches are on shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foleyrt.accel.calibration import Calibration
from foleyrt.accel.formats import GemmInput
from foleyrt.config import DiTConfig
from foleyrt.errors import ConfigError, WeightsError
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.layers import (
    GemmLayer,
    Linear,
    TapLayout,
    TemporalConv,
    add_bias,
    release_weight_keys,
)
from foleyrt.weights import Checkpoint

AMAX_FLOOR = 1e-12  # a zero range (dead channel, padded row) must not become a zero scale
SMOOTH_ALPHA = 0.5  # SmoothQuant's migration strength: the range split evenly between x and W
INT_MM_MIN_ROWS = 17  # `torch._int_mm` on CUDA wants more than 16 rows
# Hopper's fast FP8 accumulation (no periodic promotion to fp32): faster; what it costs in
# accuracy is measured by `scripts/quant_check.py --fp8-precise-accum` against this default.
FP8_FAST_ACCUM = True

# Per-step GEMMs of each block, by their names in the block.
TRIPLE_GEMMS = (
    "audio_self_attn_qkv", "audio_self_proj", "v_cond_attn_qkv", "v_cond_self_proj",
    "audio_cross_q", "v_cond_cross_q", "audio_cross_proj", "v_cond_cross_proj",
    "audio_mlp.fc1", "audio_mlp.fc2", "v_cond_mlp.fc1", "v_cond_mlp.fc2",
)
# The last triple block runs with `update_visual=False`: its visual stream's projection,
# cross-attention and MLP never run, so they are neither calibrated nor quantised.
VISUAL_TAIL = ("v_cond_self_proj", "v_cond_cross_q", "v_cond_cross_proj", "v_cond_mlp.fc1",
               "v_cond_mlp.fc2")
SINGLE_GEMMS = ("modulation.linear", "linear_qkv", "linear1", "linear2.w13", "linear2.w2")


@dataclass(frozen=True)
class Grid:
    """A symmetric quantisation grid: values in `[-qmax, qmax]` stored as `dtype`; `align` is
    the multiple of K and N the format's GEMM kernel needs."""

    dtype: torch.dtype
    qmax: float
    align: int

    def cast(self, x: Tensor) -> Tensor:
        """Values already divided by their scale onto the grid. Clamped first: an out-of-range
        float8 cast is NaN on some devices, and an integer one wraps."""
        x = x.clamp(-self.qmax, self.qmax)
        return (x if self.dtype.is_floating_point else x.round()).to(self.dtype)

    def quantize_rows(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """`[N, K]` fp32 -> (grid values `[N, K]`, fp32 scale per row `[N]`)."""
        scale = w.abs().amax(dim=1).clamp(min=AMAX_FLOOR) / self.qmax
        return self.cast(w / scale[:, None]), scale


FP8 = Grid(torch.float8_e4m3fn, torch.finfo(torch.float8_e4m3fn).max, 16)
INT8 = Grid(torch.int8, 127.0, 8)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad(t: Tensor, dim: int, size: int) -> Tensor:
    """2-D `t` zero-padded along `dim` (0 or 1) to `size`; `t` itself when already that long.
    float8 is padded as bytes (zero bytes are +0.0; not every device pads float8 tensors)."""
    extra = size - t.shape[dim]
    if extra == 0:
        return t
    raw = t.view(torch.uint8) if t.dtype == FP8.dtype else t
    return F.pad(raw, (0, extra) if dim == 1 else (0, 0, 0, extra)).view(t.dtype)


class QuantizedGemm(TapLayout, nn.Module):
    """What the formats share: the replaced layer's call (input cast to the compute dtype, a
    temporal conv computed as one GEMM, `TapLayout.tap_conv`) and its state-dict names. The
    weight is quantised as the GEMM's `[rows, K]` (`gemm_weight`): a temporal conv with taps on
    the output has `k` rows per output channel, each with its own scale. A temporal conv keeps
    the source's arrangement of its taps (`taps_on_output`).

    Subclasses set the weight with `set_rows` and implement `gemm`: rows `[M, K]` in the
    compute dtype (and a bias to add, or None) -> `[M, rows]` in it."""

    def __init__(self, source: GemmLayer) -> None:
        super().__init__()
        self.conv = isinstance(source, TemporalConv)
        self.compute_dtype = source.weight.dtype
        self.out_features, self.in_features = source.weight.shape[:2]  # in: channels per token
        self.kernel_size = source.kernel_size if isinstance(source, TemporalConv) else 1
        self.taps_on_output = isinstance(source, TemporalConv) and source.taps_on_output
        self.source_shape = source.weight.shape
        self.bias = source.bias

    def source_rows(self, source: GemmLayer) -> Tensor:
        """`source`'s weight as this module's GEMM `[rows, K]`, in fp32."""
        w = source.weight.detach().float()
        return self.gemm_weight(w) if self.conv else w

    def set_rows(self, rows: Tensor) -> None:
        """Keep the quantised GEMM rows as `weight`, seen in the source's shape."""
        self.gemm_rows = rows.shape[0]
        if self.conv:
            rows = self.weight_of_gemm(rows, self.source_shape)
        self.weight = nn.Parameter(rows, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.tap_conv(x.to(self.compute_dtype), self.gemm, self.bias)

    def input_format(self) -> GemmInput:
        """What `gemm` reads: compute-dtype rows, which it quantises itself."""
        return GemmInput(self.compute_dtype, self.compute_dtype, taps=self.input_taps)

    def rows(self) -> Tensor:
        """The quantised weight as the GEMM's `[rows, K]` (a view)."""
        return self.gemm_weight(self.weight) if self.conv else self.weight

    def gemm(self, x: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kernel_size={self.kernel_size}, taps_on_output={self.taps_on_output}, "
                f"bias={self.bias is not None}")


class Fp8Gemm(QuantizedGemm):
    """E4M3 weight x E4M3 activation, scaled in one of two ways:

    - dynamic (default): one weight scale per output row, one activation scale per token
      computed at run time (a row reduction before every GEMM);
    - static (given a calibrated range `amax`): one scale per tensor for both
      (`input_scale = amax / 448`, values beyond it saturate). Quantising the activation is
      then a pointwise op that Inductor fuses into the kernel producing it, and the GEMM is
      cuBLASLt's plain tensor-wise FP8 kernel: at 800 rows, the per-token reductions cost about
      as much as the FP8 GEMMs save. E4M3 keeps 3 mantissa bits down to amax / 2^15, so one
      scale per tensor loses little (TensorRT's FP8 recipe is the same).

    The bias is added by the GEMM's epilogue (in fp32, before the one rounding to the output
    dtype), so no later kernel reads it; a conv with taps on the output adds it after the sum.
    `stored=True`: the layer's weight came from a checkpoint's float8_e4m3fn tensor (upcast
    exactly on load); it is used as it is, with unit scales, so nothing is rounded twice."""

    weight_scale: Tensor  # buffers (registered in __init__)
    input_scale: Tensor | None

    def __init__(self, source: GemmLayer, *, stored: bool = False,
                 amax: float | None = None) -> None:
        super().__init__(source)
        w = self.source_rows(source)
        static = amax is not None
        if stored:
            q = w.to(FP8.dtype)
            scale = torch.ones(() if static else w.shape[0], device=w.device)
            if not torch.equal(q.float(), w):
                raise WeightsError("a weight marked as stored in float8_e4m3fn is not on the "
                                   "e4m3 grid; load the checkpoint again")
        elif static:
            scale = w.abs().max().clamp(min=AMAX_FLOOR) / FP8.qmax
            q = FP8.cast(w / scale)
        else:
            q, scale = FP8.quantize_rows(w)
        self.set_rows(q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("input_scale", torch.tensor(
            max(amax, AMAX_FLOOR) / FP8.qmax, device=w.device) if amax is not None else None)

    def input_format(self) -> GemmInput:
        """Static scales: float8 rows already divided by `input_scale` (a producer that writes
        them saves this GEMM a quantising pass); dynamic: compute-dtype rows."""
        if self.input_scale is None:
            return super().input_format()
        return GemmInput(FP8.dtype, self.compute_dtype, self.input_scale, self.input_taps)

    def gemm(self, x: Tensor, bias: Tensor | None) -> Tensor:
        n = self.gemm_rows
        k_pad, n_pad = _round_up(x.shape[1], FP8.align), _round_up(n, FP8.align)
        w = _pad(_pad(self.rows(), 1, k_pad), 0, n_pad)
        if self.input_scale is not None:
            # A product by the reciprocal: one multiply per element instead of a division.
            if x.dtype != FP8.dtype:  # else quantised by its producer (`input_format`)
                x = FP8.cast(x.float() * self.input_scale.reciprocal())
            xq = _pad(x, 1, k_pad)
            x_scale, w_scale = self.input_scale, self.weight_scale
        else:
            x_scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=AMAX_FLOOR) / FP8.qmax
            xq = _pad(FP8.cast(x.float() / x_scale), 1, k_pad)
            w_scale = _pad(self.weight_scale[None], 1, n_pad)
        if bias is not None:
            bias = _pad(bias[:, None], 0, n_pad)[:, 0]
        out = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=w_scale, bias=bias,
                               out_dtype=self.compute_dtype, use_fast_accum=FP8_FAST_ACCUM)
        return out[:, :n]


class Int8WeightGemm(QuantizedGemm):
    """INT8 weight (scale per output channel) dequantised into a compute-dtype matmul; the scale
    is applied to the product (N multiplies per row instead of N*K)."""

    weight_scale: Tensor  # a buffer (registered in __init__)

    def __init__(self, source: GemmLayer) -> None:
        super().__init__(source)
        q, scale = INT8.quantize_rows(self.source_rows(source))
        self.set_rows(q)
        self.register_buffer("weight_scale", scale)

    def gemm(self, x: Tensor, bias: Tensor | None) -> Tensor:
        y = F.linear(x, self.rows().to(x.dtype))
        return add_bias((y * self.weight_scale).to(x.dtype), bias)


def smoothing_factors(w: Tensor, channel_amax: Tensor, alpha: float = SMOOTH_ALPHA) -> Tensor:
    """SmoothQuant's per-input-column factors `s = a^alpha / w^(1 - alpha)` (`a`: the column's
    activation range, `w`: its weight range over outputs). `(x / s) @ (W * s)^T` is the same
    product with the activation's outlier columns flattened and the weights' widened, so one
    per-tensor activation scale loses less."""
    a = channel_amax.clamp(min=AMAX_FLOOR)
    w_range = w.abs().amax(dim=0).clamp(min=AMAX_FLOOR)
    return a.pow(alpha) / w_range.pow(1 - alpha)


class Int8Gemm(QuantizedGemm):
    """W8A8 with a static activation scale: `x_q = round(x / input_scale)` (int8),
    `y = (x_q @ weight^T) * output_scale` (int32 accumulation).

    With calibration range `amax` alone, `input_scale` is `amax / 127` in every column. With
    per-channel ranges, SmoothQuant factors `s` are folded into `weight` and
    `input_scale = s * max(a / s) / 127`; `output_scale` is that per-tensor part times the
    weight's per-channel scale."""

    input_scale: Tensor  # buffers (registered in __init__)
    output_scale: Tensor

    def __init__(self, source: GemmLayer, amax: float, channel_amax: Tensor | None) -> None:
        super().__init__(source)
        w = self.source_rows(source)
        if channel_amax is None:
            smooth = torch.ones(w.shape[1], device=w.device)
            act_amax = torch.tensor(float(amax), device=w.device)
        else:
            a = channel_amax.to(w.device, torch.float32)
            if a.numel() != w.shape[1]:  # unfolded column j*C + c holds channel c (pads: 0)
                a = a.repeat(w.shape[1] // a.numel())
            smooth = smoothing_factors(w, a)
            act_amax = (a / smooth).max()
            w = w * smooth
        q, w_scale = INT8.quantize_rows(w)
        act_scale = act_amax.clamp(min=AMAX_FLOOR) / INT8.qmax
        self.set_rows(q)
        self.register_buffer("input_scale", smooth * act_scale)
        self.register_buffer("output_scale", w_scale * act_scale)

    def gemm(self, x: Tensor, bias: Tensor | None) -> Tensor:
        m, n = x.shape[0], self.gemm_rows
        k_pad, n_pad = _round_up(x.shape[1], INT8.align), _round_up(n, INT8.align)
        xq = INT8.cast(x.float() / self.input_scale)
        xq = _pad(_pad(xq, 1, k_pad), 0, max(m, INT_MM_MIN_ROWS))
        w = _pad(_pad(self.rows(), 1, k_pad), 0, n_pad)
        acc = torch._int_mm(xq, w.t())
        return add_bias((acc[:m, :n].float() * self.output_scale).to(self.compute_dtype), bias)


# --------------------------------------------------------------------------------------------
# Which modules, and the recipe over a built transformer
# --------------------------------------------------------------------------------------------


def quantizable_names(cfg: DiTConfig) -> list[str]:
    """`FoleyDiT.named_modules()` names of the per-step GEMMs that the precisions quantise (and
    `foleyrt calibrate` records), in execution order."""
    last = cfg.depth_triple_blocks - 1
    names = [f"triple_blocks.{i}.{g}" for i in range(cfg.depth_triple_blocks)
             for g in TRIPLE_GEMMS if i < last or g not in VISUAL_TAIL]
    names += [f"single_blocks.{i}.{g}" for i in range(cfg.depth_single_blocks)
              for g in SINGLE_GEMMS]
    return names


def quantizable_modules(dit: FoleyDiT) -> dict[str, nn.Module]:
    return {name: dit.get_submodule(name) for name in quantizable_names(dit.config)}


def stored_fp8_modules(ckpt: Checkpoint, cfg: DiTConfig) -> frozenset[str]:
    """Quantisable modules whose weight `ckpt` stores as float8_e4m3fn (community fp8 files):
    precision fp8 uses them as stored. Refuses "scaled fp8" files, whose per-tensor scales
    nothing here would apply (their weights would load silently wrong)."""
    fp8 = [k for k, v in ckpt.state_dict.items() if v.dtype in (FP8.dtype, torch.float8_e5m2)]
    scales = [k for k in ckpt.state_dict if k.rsplit(".", 1)[-1] in
              ("scale_weight", "weight_scale", "scale_input", "input_scale")]
    if fp8 and scales:
        raise WeightsError(f"{ckpt.path}: a scaled-fp8 checkpoint (e.g. {scales[0]}) is not "
                           "supported; use a plain float8_e4m3fn/e5m2 cast or the original file")
    stored = {k for k, v in ckpt.state_dict.items() if v.dtype == FP8.dtype}
    return frozenset(name for name in quantizable_names(cfg)
                     if stored.issuperset(release_weight_keys(name)))


# Formats whose matmul is a special kernel: what to build to try it, and what it needs.
_KERNELS: dict[str, tuple[Callable[[GemmLayer], QuantizedGemm], str]] = {
    "fp8": (Fp8Gemm, "FP8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer (Ada, "
                     "Hopper, Blackwell); use int8 or int8-weight"),
    "int8": (lambda layer: Int8Gemm(layer, 1.0, None),
             "INT8 matmuls (torch._int_mm) are not available there; use int8-weight"),
}


def require_kernels(precision: str, device: torch.device, dtype: torch.dtype) -> None:
    """Run `precision`'s module once on a small layer on `device`: a one-line `ConfigError`
    where its kernel does not exist (old GPU, MPS, a CPU build without it), before any work.
    int8-weight is a plain matmul, available wherever the compute dtype is."""
    if precision not in _KERNELS:
        return
    build, needs = _KERNELS[precision]
    layer = Linear(32, 32, bias=True, device=device, dtype=dtype)  # the bias path too
    try:
        with torch.no_grad():
            build(layer)(torch.zeros(INT_MM_MIN_ROWS, 32, device=device, dtype=dtype))
    except (RuntimeError, NotImplementedError) as exc:
        where = device.type
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            where = f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"precision {precision} cannot run on {where}: {needs} "
                          f"({reason})") from None


def quantize_(
    dit: FoleyDiT,
    precision: str,
    *,
    calibration: Calibration | None = None,
    prequantized: Collection[str] = frozenset(),
) -> FoleyDiT:
    """Swap `dit`'s per-step GEMMs for `precision`'s modules (fp8, int8-weight, int8), in
    place, on `dit`'s device and compute dtype (place the model first; the offload modes
    quantise on the host for the GPU; `RuntimeConfig.build` has tried the kernels on the
    device that will run them). `calibration`: int8's ranges, or fp8's static scales;
    `prequantized` names modules whose weights were stored as float8_e4m3fn (fp8 only, see
    `stored_fp8_modules`). A model quantised already is refused."""
    modules = quantizable_modules(dit)
    if any(isinstance(m, QuantizedGemm) for m in modules.values()):
        raise ConfigError("the transformer is quantised already; load a fresh model")
    unknown = sorted(set(prequantized) - set(modules))
    if unknown:
        raise ConfigError(f"not quantisable modules marked as fp8-stored: {', '.join(unknown[:3])}")
    if prequantized and precision != "fp8":
        raise ConfigError("fp8-stored weights are used as they are only by precision fp8")
    if calibration is not None:
        calibration.check(dit, modules)
    build = _builder(precision, calibration, prequantized)
    with torch.no_grad():
        for name, module in modules.items():
            assert isinstance(module, GemmLayer)  # not quantised (checked above)
            parent, _, attr = name.rpartition(".")
            setattr(dit.get_submodule(parent), attr, build(name, module))
    return dit


def _builder(
    precision: str, calib: Calibration | None, prequantized: Collection[str]
) -> Callable[[str, GemmLayer], QuantizedGemm]:
    if precision == "int8-weight":
        return lambda name, layer: Int8WeightGemm(layer)
    if precision == "fp8":
        if calib is None:
            return lambda name, layer: Fp8Gemm(layer, stored=name in prequantized)
        return lambda name, layer: Fp8Gemm(layer, stored=name in prequantized,
                                           amax=calib.amax[name])
    if precision != "int8":
        raise ConfigError(f"precision {precision!r} is not a quantised one "
                          "(fp8, int8-weight, int8)")
    if calib is None:
        raise ConfigError("precision int8 needs a calibration (`foleyrt calibrate`)")
    return lambda name, layer: Int8Gemm(layer, calib.amax[name], calib.channel_amax.get(name))
