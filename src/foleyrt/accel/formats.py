"""What a GEMM layer's `gemm` reads: the rows a fused kernel (`accel.kernels`) writes for it
directly, so that no separate cast, quantisation or unfold runs in between."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from foleyrt.models.layers import GemmLayer, TemporalConv


@dataclass(frozen=True)
class GemmInput:
    """Input rows: values rounded to `round_dtype`, then (`scale` given) divided by that static
    per-tensor scale and stored as `dtype`; `taps` consecutive tokens per row (a temporal conv
    with its taps on the input: `TapLayout.gemm_input`'s unfold), else 1."""

    dtype: torch.dtype
    round_dtype: torch.dtype
    scale: Tensor | None = None
    taps: int = 1


@runtime_checkable
class FormattedGemm(Protocol):
    """A GEMM layer that states its own input format (the quantised ones)."""

    def input_format(self) -> GemmInput: ...


def input_format(layer: GemmLayer | FormattedGemm) -> GemmInput:
    """The format `layer.gemm` reads: a quantised layer's own, else its weight dtype (and a
    temporal conv's unfolded taps)."""
    if isinstance(layer, FormattedGemm):
        return layer.input_format()
    dtype = layer.weight.dtype
    return GemmInput(dtype, dtype, taps=layer.input_taps if isinstance(layer, TemporalConv) else 1)
