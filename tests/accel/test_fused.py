"""The blocks on hand-fused kernels (`accel.fused`, `accel.kernels`).

On the CPU the custom ops run their PyTorch references, so the fused blocks must give exactly
the model's own numbers (what the fused forward rearranges: GEMM input formats, tap sums,
modulation rows, unfolds); Dynamo traces it whole. The Triton kernels themselves run on the CPU
under Triton's interpreter in fp32 (the interpreter truncates narrowing casts, so the bf16 and
float8 roundings are checked on CUDA only), and on CUDA they must match the references within
a rounding of the output format (run on the GPU machine; skipped here)."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foleyrt.accel import kernels
from foleyrt.accel.fused import FusedSingleBlock, FusedTripleBlock, fuse_blocks
from foleyrt.config import TINY
from foleyrt.models.layers import rope_table
from tests.tiny import quantized_copy, tiny_inputs

VARIANTS = ("none", "fp8", "fp8+calibrated", "int8")
cuda = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton_available()),
                          reason="the Triton kernels need CUDA")


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_blocks_give_the_model_numbers(tiny_dit, calibration, variant, dtype) -> None:
    """Whole velocities, sync rows fewer than audio frames (rows through an index) and as many
    (one row per frame)."""
    model = quantized_copy(tiny_dit, variant, calibration, dtype)
    fused = copy.deepcopy(model)
    assert fuse_blocks(fused) == TINY.dit.depth_single_blocks + TINY.dit.depth_triple_blocks
    assert all(type(b) is FusedSingleBlock for b in fused.single_blocks)
    assert all(type(b) is FusedTripleBlock for b in fused.triple_blocks)
    for n_audio in (57, 12):
        inputs = {k: v if k == "t" else v.to(dtype)
                  for k, v in tiny_inputs(2, n_audio=n_audio).items()}
        assert torch.equal(fused(**inputs), model(**inputs)), (variant, n_audio)
    assert fused.state_dict().keys() == model.state_dict().keys()


@torch.no_grad()
def test_fused_blocks_trace_with_dynamo_fullgraph(tiny_dit, calibration) -> None:
    """As `--accel compile` compiles them: no graph break through the custom ops, one graph
    for two lengths, same numbers."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = quantized_copy(tiny_dit, "fp8+calibrated", calibration)
    fuse_blocks(model)
    cases = []
    for n_audio in (57, 31):
        inp = tiny_inputs(3, n_audio=n_audio)
        prepared = model.prepare(inp["clip_feat"], inp["cond"], inp["sync_feat"], n_audio)
        x, t = inp["x"], inp["t"]
        cases.append((x, t, prepared, model.velocity(x, t, prepared)))
    for block in (model.triple_blocks[0], model.single_blocks[0]):
        block.compile(backend="eager", fullgraph=True, dynamic=True)
    for x, t, prepared, eager in cases:
        assert torch.equal(model.velocity(x, t, prepared), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


# ---- the Triton kernels against the references ---------------------------------------------


def _interpreted_kernel_checks() -> None:
    """Run in a process with TRITON_INTERPRET=1 (read when the kernels are defined): each
    kernel on CPU tensors, fp32, against its reference."""
    from foleyrt.accel.kernels import (
        FP32_EPS,
        _launch_norm_modulate,
        triton_rms_rope,
        triton_swiglu,
    )

    g = torch.Generator().manual_seed(0)
    b, n, heads, d, s, c = 2, 19, 3, 16, 25, 40
    qkv = torch.randn(b, n, 3 * heads * d, generator=g)
    weight = torch.rand(d, generator=g) + 0.5
    cos, sin = rope_table(torch.arange(n, dtype=torch.float32), d)
    for col in (0, heads * d):
        out = qkv.new_empty(b, n, heads, d)
        triton_rms_rope[(b * n,)](qkv[..., col:], out, weight, cos, sin, n, qkv.stride(1),
                                   heads, d, FP32_EPS, BLOCK_H=4, BLOCK_D=d)
        torch.testing.assert_close(
            out, kernels._rms_rope_reference(qkv, col, heads, d, weight, cos, sin))
    hidden = torch.randn(b, n, 2 * c, generator=g) * 3
    for scale in (None, torch.tensor(0.3)):
        out = hidden.new_empty(b, n, c)
        triton_swiglu[(b * n, 2)](hidden, out, scale if scale is not None else hidden, c,
                                  QUANTIZE=scale is not None, QMAX=1e30,
                                  ROUND_DTYPE=kernels.tl.float32, BLOCK=32)
        ref = kernels._swiglu_reference(hidden, torch.float32, torch.float32, None, 1)
        torch.testing.assert_close(out, ref if scale is None else ref / scale)
    x = torch.randn(b, n, c, generator=g) * 3
    table = torch.randn(b, s, 6 * c, generator=g)
    index = torch.randint(0, s, (n,), generator=g)
    for y_taps, out_taps, scale in ((3, 3, None), (1, 1, torch.tensor(0.3)), (3, 1, None)):
        y = torch.randn(b, n, y_taps * c, generator=g)
        bias = torch.randn(c, generator=g)
        for idx, tab in ((index, table), (None, table[:, :1]), (None, table[:, :n])):
            x_new, h = torch.empty_like(x), x.new_empty(b, n, out_taps * c)
            _launch_norm_modulate(x, x_new, y, y_taps, bias, tab, idx, 2 * c, 3 * c, 4 * c,
                                  1e-5, h, torch.float32, scale, out_taps)
            x_ref = kernels._residual_reference(x, y, y_taps, bias, tab, idx, 2 * c)
            torch.testing.assert_close(x_new, x_ref)
            h_ref = kernels._norm_modulate_reference(x_ref, tab, idx, 3 * c, 4 * c, 1e-5,
                                                     torch.float32, torch.float32, None, out_taps)
            # A static scale in fp32 (the interpreter's float8 cast truncates): divided only.
            torch.testing.assert_close(h, h_ref if scale is None else h_ref / scale)


def test_triton_kernels_under_the_interpreter() -> None:
    """Indexing, tap sums, unfolds, modulation rows, norms and RoPE of the kernels as written
    (CI installs Triton for this; FOLEYRT_KERNELS_REQUIRED turns the skip into a failure)."""
    if importlib.util.find_spec("triton") is None:
        if os.environ.get("FOLEYRT_KERNELS_REQUIRED"):
            pytest.fail("FOLEYRT_KERNELS_REQUIRED is set but Triton is not installed")
        pytest.skip("Triton is not installed")
    repo = Path(__file__).resolve().parents[2]
    code = "import tests.accel.test_fused as t; t._interpreted_kernel_checks()"
    run = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                         text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _close_in_format(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal up to one rounding of `dtype` (fused arithmetic may land on the other side)."""
    a, b = a.float(), b.float()
    ulp = {torch.float32: 2e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}.get(dtype, 2**-3)
    assert ((a - b).abs() <= ulp * b.abs() + 1e-5).float().mean() > 0.999
    assert (a - b).abs().max() <= 2 * ulp * b.abs().max()


@cuda
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("taps", [(3, 3), (1, 1)])
def test_norm_modulate_kernels_match_the_references(dtype, quantized, taps) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    b, n, s, c = 3, 37, 15, 96
    y_taps, out_taps = taps
    x = torch.randn(b, n, c, device="cuda", generator=g) * 3
    y = torch.randn(b, n, y_taps * c, device="cuda", generator=g).to(dtype)
    bias = torch.randn(c, device="cuda", generator=g).to(dtype)
    table = torch.randn(b, s, 6 * c, device="cuda", generator=g).to(dtype)
    index = torch.randint(0, s, (n,), device="cuda", generator=g)
    out_dtype = torch.float8_e4m3fn if quantized else dtype
    scale = torch.tensor(0.03, device="cuda") if quantized else None
    for idx, tab in ((index, table), (None, table[:, :1]), (None, table[:, :1].expand(-1, n, -1)
                                                            .contiguous())):
        args = (tab, idx, 3 * c, 4 * c, 1e-5, out_dtype, dtype, scale, out_taps)
        h = torch.ops.foleyrt.norm_modulate(x, *args)
        ref = kernels._norm_modulate_reference(x, *args)
        _close_in_format(h, ref, out_dtype)
        x_new, h = torch.ops.foleyrt.residual_norm_modulate(
            x, y, y_taps, bias, tab, idx, 2 * c, *args[2:])
        x_ref = kernels._residual_reference(x, y, y_taps, bias, tab, idx, 2 * c)
        torch.testing.assert_close(x_new, x_ref, rtol=1e-5, atol=1e-5)
        _close_in_format(h, kernels._norm_modulate_reference(x_ref, *args), out_dtype)


@cuda
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantized", [False, True])
def test_swiglu_kernel_matches_the_reference(dtype, quantized) -> None:
    g = torch.Generator(device="cuda").manual_seed(2)
    hidden = (torch.randn(3, 29, 2 * 1100, device="cuda", generator=g) * 3).to(dtype)
    out_dtype = torch.float8_e4m3fn if quantized else dtype
    scale = torch.tensor(0.05, device="cuda") if quantized else None
    out = kernels.swiglu(hidden, out_dtype, dtype, scale, 1)
    _close_in_format(out, kernels._swiglu_reference(hidden, out_dtype, dtype, scale, 1),
                     out_dtype)


@cuda
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_rope_kernel_matches_the_reference(dtype) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    b, n, heads, d = 2, 41, 6, 32
    qkv = torch.randn(b, n, 3 * heads * d, device="cuda", generator=g).to(dtype)
    weight = torch.rand(d, device="cuda", generator=g).to(dtype) + 0.5
    cos, sin = rope_table(torch.arange(n, device="cuda", dtype=torch.float32), d)
    for col in (0, heads * d):
        out = torch.ops.foleyrt.rms_rope(qkv, col, heads, d, weight, cos, sin)
        ref = kernels._rms_rope_reference(qkv, col, heads, d, weight, cos, sin)
        _close_in_format(out, ref, dtype)


@cuda
@torch.no_grad()
def test_fused_model_on_cuda_is_close_to_the_model(tiny_dit) -> None:
    model = copy.deepcopy(tiny_dit).cuda().to(torch.bfloat16)
    fused = copy.deepcopy(model)
    fuse_blocks(fused)
    inputs = {k: v.cuda() if k == "t" else v.cuda().to(torch.bfloat16)
              for k, v in tiny_inputs(4).items()}
    a, b = fused(**inputs).float(), model(**inputs).float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999
