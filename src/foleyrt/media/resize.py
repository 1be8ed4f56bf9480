"""The release's two uint8 image resizes, bit-exact on any PyTorch device.

SigLIP2 frames go through Pillow's bilinear resize and Synchformer frames through PyTorch's
CPU uint8 antialiased bicubic (spec/pipeline.md §3, spec/synchformer.md §6). Both are
separable fixed-point filters: per axis, every output sample is an integer dot product of
source pixels with integer weights, plus half an LSB, shifted down and clamped to 0..255,
and the first pass rounds to uint8 before the second. Only how the weights are made (filter,
support, fixed-point precision) and which pass comes first differ. Rebuilding those tables here and
running the dot products as int32 tensor ops gives the same bytes as the CPU libraries, so
the frames can be resized on the GPU, where they are consumed, instead of on the CPU threads
that decode. `tests/media/test_resize.py` checks equality against Pillow and PyTorch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
TORCH_MAX_PRECISION = 22  # PyTorch's cap on the int16 weights' fixed-point bits
INT16_LIMIT = 1 << 15


@dataclass(frozen=True, eq=False)  # hashed by identity: the tables are cached per size
class AxisTaps:
    """One axis of a separable resample: output sample `o` reads source samples
    `start[o] + k` (k < taps, clamped into range; the weights past a sample's true window
    are 0) with integer `weights[o, k]` at `precision` fractional bits."""

    start: Tensor  # [out] int64
    weights: Tensor  # [out, taps] int32
    precision: int

    @property
    def taps(self) -> int:
        return self.weights.shape[1]


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _cubic_aa(x: float) -> float:
    """The a = -0.5 cubic, in PyTorch's evaluation order (`HelperInterpCubic::aa_filter`)."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return 0.0


def _windows(
    in_size: int, out_size: int, support: float, filt: Callable[[float], float]
) -> tuple[list[int], list[list[float]], int]:
    """Per output sample: first source index and normalised float weights, in the
    arithmetic Pillow and PyTorch share (double precision, C truncating casts)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    taps = math.ceil(support) * 2 + 1
    inv = 1.0 / filterscale  # both multiply by the reciprocal (not divide): same last bits
    starts, rows = [], []
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - lo
        n = min(max(n, 0), taps)
        w = [filt((j + lo - center + 0.5) * inv) for j in range(n)]
        total = 0.0
        for v in w:
            total += v
        if total != 0.0:
            w = [v / total for v in w]
        starts.append(lo)
        rows.append(w)
    return starts, rows, taps


def _round_half_away(v: float) -> int:
    return int(v - 0.5) if v < 0 else int(v + 0.5)


def _axis(starts: list[int], rows: list[list[float]], taps: int, precision: int) -> AxisTaps:
    table = [[_round_half_away(v * (1 << precision)) for v in w] + [0] * (taps - len(w))
             for w in rows]
    return AxisTaps(torch.tensor(starts, dtype=torch.int64),
                    torch.tensor(table, dtype=torch.int32), precision)


@functools.lru_cache(maxsize=64)
def pil_bilinear_taps(in_size: int, out_size: int) -> AxisTaps:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for BILINEAR."""
    starts, rows, taps = _windows(in_size, out_size, 1.0, _bilinear)
    return _axis(starts, rows, taps, PIL_PRECISION_BITS)


@functools.lru_cache(maxsize=64)
def torch_bicubic_aa_taps(in_size: int, out_size: int) -> AxisTaps:
    """PyTorch's `_compute_index_ranges_int16_weights` for antialiased bicubic (align_corners
    False): the precision is the largest (up to 22 bits) at which the axis's largest weight,
    doubled, still fits in int16."""
    starts, rows, taps = _windows(in_size, out_size, 2.0, _cubic_aa)
    wt_max = max((v for w in rows for v in w), default=0.0)
    precision = 0
    while precision < TORCH_MAX_PRECISION:
        if int(0.5 + wt_max * (1 << (precision + 1))) >= INT16_LIMIT:
            break
        precision += 1
    return _axis(starts, rows, taps, precision)


@functools.lru_cache(maxsize=64)
def _on_device(axis: AxisTaps, device: torch.device) -> tuple[Tensor, Tensor]:
    """The tables on `device`, copied once: a copy from pageable memory waits for the GPU
    to drain its queue, which would stall the decoding thread at every chunk."""
    return axis.start.to(device), axis.weights.to(device)


def _resample_axis(x: Tensor, dim: int, axis: AxisTaps) -> Tensor:
    """One fixed-point pass along `dim` of uint8 `x`."""
    in_size = x.shape[dim]
    start, weights = _on_device(axis, x.device)
    shape = [1] * x.ndim
    shape[dim] = -1
    acc = torch.full((), 1 << (axis.precision - 1) if axis.precision else 0,
                     dtype=torch.int32, device=x.device)
    for k in range(axis.taps):
        index = (start + k).clamp_(max=in_size - 1)
        acc = acc + x.index_select(dim, index) * weights[:, k].view(shape)
    return (acc >> axis.precision).clamp_(0, 255).to(torch.uint8)


def resample(x: Tensor, height: AxisTaps | None, width: AxisTaps | None,
             height_first: bool = False) -> Tensor:
    """`x [..., H, W]` uint8 through the width pass, then the height pass, or the other way
    round (each pass rounds to uint8, so the order shows in the last bit). A None axis is
    skipped, as both libraries skip an axis whose size does not change."""
    passes = [(x.ndim - 1, width), (x.ndim - 2, height)]
    for dim, axis in reversed(passes) if height_first else passes:
        if axis is not None:
            x = _resample_axis(x, dim, axis)
    return x


def pil_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`x [..., H, W]` uint8 -> `[..., *size]`: `Image.resize(size[::-1], BILINEAR)` as
    Pillow 13 (the reference's, manifest.environment) computes it. Pillow 13 runs the height
    pass first when the height shrinks by more than twice as many pixels as the width
    (portrait clips, for 512²); earlier Pillows always start with the width."""
    (h, w), (out_h, out_w) = x.shape[-2:], size
    height_first = h - out_h > 0 and h - out_h > (w - out_w) * 2
    return resample(x, pil_bilinear_taps(h, out_h) if out_h != h else None,
                    pil_bilinear_taps(w, out_w) if out_w != w else None, height_first)


def torch_bicubic_aa_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`x [..., H, W]` uint8 -> `[..., *size]`: what `F.interpolate(x, size, mode="bicubic",
    antialias=True)` returns for uint8 input on the CPU."""
    (h, w), (out_h, out_w) = x.shape[-2:], size
    return resample(x, torch_bicubic_aa_taps(h, out_h) if out_h != h else None,
                    torch_bicubic_aa_taps(w, out_w) if out_w != w else None)
