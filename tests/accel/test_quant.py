"""Quantised precisions on the tiny config, on the CPU (PyTorch's CPU `_scaled_mm` and
`_int_mm` run the very calls the GPU runs): per-module error bounds, the velocity of a full
forward and a guided sampling loop against fp32, state-dict names, Dynamo fullgraph tracing of
quantised blocks, misuse errors, and community fp8 checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from foleyrt.accel import quant
from foleyrt.accel.quant import (
    Fp8Gemm,
    Int8Gemm,
    Int8WeightGemm,
    QuantizedGemm,
    quantizable_modules,
    quantizable_names,
    quantize_,
    require_kernels,
)
from foleyrt.accel.recipes import apply
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY, XXL, DiffusionConfig
from foleyrt.errors import ConfigError, WeightsError
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.layers import Linear, TemporalConv, release_weight_keys
from foleyrt.models.random_init import randomize_
from foleyrt.pipeline.models import load_dit
from foleyrt.sampling.denoiser import ModuleDenoiser
from foleyrt.sampling.loop import Task, denoise
from foleyrt.sampling.schedule import flow_schedule
from tests.tiny import quantized_copy, tiny_conditions, tiny_inputs

# Issue 4: quantised vs unquantised velocity / final latent, cosine on random weights.
COSINE_BOUND = 0.99
# Relative L2 error of one module's output vs fp32 (measured 0.036 / 0.007 / 0.011).
MODULE_BOUND = {"fp8": 0.05, "fp8+calibrated": 0.05, "int8-weight": 0.01, "int8": 0.02}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


PRECISIONS = ("fp8", "fp8+calibrated", "int8-weight", "int8")


# ---- what is quantised ---------------------------------------------------------------------


def test_quantised_set_is_every_step_gemm_except_the_high_precision_ones() -> None:
    """All Linear / TemporalConv layers of the blocks, minus the triple blocks' modulations, the
    per-request text K/V and the last triple block's visual tail (never run): 391 for XXL."""
    with torch.device("meta"):
        dit = FoleyDiT(XXL.dit)
    last = f"triple_blocks.{XXL.dit.depth_triple_blocks - 1}."
    gemms = {name for name, m in dit.named_modules()
             if isinstance(m, Linear | TemporalConv) and name.startswith(("triple_", "single_"))}
    kept = {n for n in gemms if n.endswith(("_mod.linear", "text_cross_kv"))
            or (n.startswith(last) and n.removeprefix(last) in quant.VISUAL_TAIL)}
    assert set(quantizable_names(XXL.dit)) == gemms - kept
    assert len(quantizable_names(XXL.dit)) == 18 * 12 - 5 + 36 * 5


# ---- one module ----------------------------------------------------------------------------


def _modules(layer: Linear | TemporalConv, x: torch.Tensor) -> dict[str, QuantizedGemm]:
    amax = float(x.abs().max())
    return {"fp8": Fp8Gemm(layer), "fp8+calibrated": Fp8Gemm(layer, amax=amax),
            "int8-weight": Int8WeightGemm(layer),
            "int8": Int8Gemm(layer, amax, x.abs().flatten(0, -2).amax(0))}


@pytest.mark.parametrize(("layer", "shape"), [
    (Linear(64, 96), (2, 57, 64)),
    (TemporalConv(64, 96, 3, bias=True), (2, 57, 64)),
    (Linear(36, 20), (5, 36)),  # unaligned K and N, fewer rows than _int_mm takes: padded
    (TemporalConv(36, 20, 3, bias=False), (1, 3, 36)),
    (TemporalConv(48, 48, 3, bias=True), (2, 11, 48)),
    (TemporalConv(80, 24, 3, bias=True), (2, 11, 80)),
], ids=["linear", "temporal-conv", "linear-unaligned", "conv-unaligned", "conv-square",
        "conv-narrowing"])
@torch.no_grad()
def test_module_error_bounds(layer: Linear | TemporalConv, shape: tuple[int, ...]) -> None:
    randomize_(layer, seed=1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    reference = layer(x)
    for precision, module in _modules(layer, x).items():
        y = module(x)
        assert y.shape == reference.shape and y.dtype == reference.dtype
        assert _rel(y, reference) < MODULE_BOUND[precision], precision


def test_quantised_convs_keep_the_source_arrangement_of_taps() -> None:
    """Every format puts a conv's taps where the compute-dtype layer does (see
    `taps_on_output`): the output for a conv that does not widen, else the input."""
    square = randomize_(TemporalConv(48, 48, 3, bias=True), seed=1)
    widening = randomize_(TemporalConv(24, 80, 3, bias=True), seed=2)
    for layer, on_output in ((square, True), (widening, False)):
        assert layer.taps_on_output == on_output
        for module in (Fp8Gemm(layer), Fp8Gemm(layer, amax=1.0), Int8WeightGemm(layer),
                       Int8Gemm(layer, 1.0, None)):
            assert module.taps_on_output == on_output


@pytest.mark.parametrize("channels", [(48, 64), (80, 24)], ids=["taps-on-input", "taps-on-output"])
@torch.no_grad()
def test_static_fp8_conv_is_the_conv_of_the_rounded_values(channels: tuple[int, int]) -> None:
    """Static fp8 rounds a conv's GEMM input (the unfolded window, or the plain tokens): the
    result must be exactly the conv of the rounded input (saturated where beyond the range;
    zero padding) with the rounded weight."""
    layer = randomize_(TemporalConv(*channels, 3, bias=True), seed=3)
    x = torch.randn(2, 9, channels[0], generator=torch.Generator().manual_seed(4))
    module = Fp8Gemm(layer, amax=0.5 * float(x.abs().max()))  # some inputs saturate
    scale = module.input_scale
    x_grid = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).double() * scale.double()
    w = module.weight.double() * module.weight_scale.double()
    reference = F.conv1d(x_grid.transpose(1, 2), w, layer.bias.double(), padding=1)
    torch.testing.assert_close(module(x).double(), reference.transpose(1, 2),
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_smoothquant_moves_outlier_channels_into_the_weights() -> None:
    """Three activation channels 40x larger than the rest: one per-tensor scale wastes most of
    int8's range on them; migrating the range to the weights recovers the error."""
    layer = randomize_(Linear(64, 96), seed=2)
    x = torch.randn(4, 50, 64, generator=torch.Generator().manual_seed(0))
    x[..., :3] *= 40
    reference, amax = layer(x), float(x.abs().max())
    plain = _rel(Int8Gemm(layer, amax, None)(x), reference)
    smooth = _rel(Int8Gemm(layer, amax, x.abs().flatten(0, -2).amax(0))(x), reference)
    assert smooth < MODULE_BOUND["int8"] < plain


@torch.no_grad()
def test_bf16_compute_dtype_in_and_out() -> None:
    layer = randomize_(Linear(64, 96), seed=1)
    x = torch.randn(2, 9, 64)
    reference = layer(x)
    for precision, module in _modules(layer.to(torch.bfloat16), x).items():
        y = module(x)  # fp32 in, cast like the layer it replaces
        assert y.dtype == torch.bfloat16
        assert _rel(y, reference) < MODULE_BOUND[precision] + 0.01, precision


# ---- the whole transformer -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.inference_mode()
def test_velocity_of_a_full_forward(tiny_dit, calibration, dtype) -> None:
    inp = tiny_inputs(seed=0)
    reference = tiny_dit(**inp)
    for precision in PRECISIONS:
        out = quantized_copy(tiny_dit, precision, calibration, dtype)(**inp)
        assert out.dtype == dtype
        assert _cosine(out, reference) >= COSINE_BOUND, precision


@torch.inference_mode()
def test_final_latent_of_a_guided_loop(tiny_dit, calibration) -> None:
    """Ten guided Euler steps: errors of every step accumulate in the latent."""
    cond = tiny_conditions(5, clip_frames=10)
    noise = torch.randn(1, TINY.dit.audio_vae_latent_dim, 50,
                        generator=torch.Generator().manual_seed(6))
    schedule = flow_schedule(10, DiffusionConfig())

    def loop(dit: FoleyDiT) -> torch.Tensor:
        return denoise(ModuleDenoiser(dit), [Task.whole(noise, 4.5, cond)], schedule)[0]

    reference = loop(tiny_dit)
    for precision in PRECISIONS:
        latent = loop(quantized_copy(tiny_dit, precision, calibration))
        assert _cosine(latent, reference) >= COSINE_BOUND, precision


@torch.inference_mode()
def test_state_dict_names_kept_and_round_trip(tiny_dit, calibration) -> None:
    original = tiny_dit.state_dict()
    inp = tiny_inputs(seed=1)
    extras = {"fp8": {"weight_scale"}, "fp8+calibrated": {"weight_scale", "input_scale"},
              "int8-weight": {"weight_scale"},
              "int8": {"input_scale", "output_scale"}}
    for precision in PRECISIONS:
        model = quantized_copy(tiny_dit, precision, calibration)
        state = model.state_dict()
        fused = {n for n in quantizable_names(TINY.dit) if n.endswith(".w13")}
        split = {k for n in fused for k in release_weight_keys(n)}  # saved fused, quantised
        assert all(state[k].shape == v.shape for k, v in original.items() if k not in split)
        assert split <= set(original) - set(state)
        added = set(state) - set(original) - {f"{n}.weight" for n in fused}
        assert {k.rsplit(".", 1)[-1] for k in added} == extras[precision]
        twin = quantized_copy(randomize_(FoleyDiT(TINY.dit), seed=9).eval(), precision, calibration)
        twin.load_state_dict(state)
        assert torch.equal(twin(**inp), model(**inp)), precision


@torch.no_grad()
def test_quantised_blocks_trace_with_dynamo_fullgraph(tiny_dit, calibration) -> None:
    """As `--accel compile` compiles them (fullgraph, dynamic lengths), with the eager backend:
    no graph break, no host sync, one graph per block for two lengths, same numbers."""
    g = torch.Generator().manual_seed(0)
    cfg = TINY.dit
    for precision in PRECISIONS:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model = quantized_copy(tiny_dit, precision, calibration)
        cases = []
        for n_audio in (57, 31):
            prepared = model.prepare(torch.randn(2, 10, cfg.clip_dim, generator=g),
                                     torch.randn(2, 7, cfg.text_dim, generator=g),
                                     torch.randn(2, 16, cfg.sync_feat_dim, generator=g), n_audio)
            x, t = torch.randn(2, 128, n_audio, generator=g), torch.rand(2, generator=g) * 1000
            cases.append((x, t, prepared, model.velocity(x, t, prepared)))
        for block in (model.triple_blocks[0], model.single_blocks[0]):
            block.compile(backend="eager", fullgraph=True, dynamic=True)
        for x, t, prepared, eager in cases:
            assert torch.equal(model.velocity(x, t, prepared), eager), precision
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2, precision


# ---- recipe rules and errors ---------------------------------------------------------------


def test_quantize_refuses_misuse(tiny_dit, calibration) -> None:
    model = quantized_copy(tiny_dit, "int8-weight", calibration)
    modules = dict(model.named_modules())
    with pytest.raises(ConfigError, match="quantised already"):
        quantize_(model, "fp8")
    assert dict(model.named_modules()) == modules
    fresh = copy.deepcopy(tiny_dit)
    for precision, kwargs, match in [
        ("int8", {}, "needs a calibration"),
        ("bf16", {}, "not a quantised one"),
        ("int8-weight", {"prequantized": {"single_blocks.0.linear1"}}, "only by precision fp8"),
        ("fp8", {"prequantized": {"final_layer.linear"}}, "not quantisable"),
    ]:
        with pytest.raises(ConfigError, match=match):
            quantize_(fresh, precision, **kwargs)
    assert not any(isinstance(m, QuantizedGemm) for m in fresh.modules())


def test_a_device_without_the_kernel_is_one_line_error(tiny_dit, monkeypatch) -> None:
    def unsupported(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torch._scaled_mm is only supported on CUDA devices with compute "
                           "capability >= 9.0 or 8.9, or ROCm MI300+\nmore detail")

    monkeypatch.setattr(torch, "_scaled_mm", unsupported)
    with pytest.raises(ConfigError, match="compute capability 8.9 or newer") as info:
        require_kernels("fp8", torch.device("cpu"), torch.float32)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="compute capability 8.9 or newer"):
        RuntimeConfig.build("cpu", precision="fp8")  # the front ends' constructor tries them


def test_runtime_precision_is_the_first_recipe(tiny_dit) -> None:
    model = copy.deepcopy(tiny_dit).bfloat16()
    apply(model, RuntimeConfig(dtype=torch.bfloat16, precision="bf16"))
    assert not any(isinstance(m, QuantizedGemm) for m in model.modules())
    apply(model, RuntimeConfig(precision="fp8"))
    assert all(isinstance(m, Fp8Gemm) for m in quantizable_modules(model).values())
    fresh = copy.deepcopy(tiny_dit)
    apply(fresh, RuntimeConfig(precision="fp8"), disable={"precision"})  # an ablation
    assert not any(isinstance(m, QuantizedGemm) for m in fresh.modules())


# ---- community fp8 checkpoints -------------------------------------------------------------


def _fp8_checkpoint(path: Path, dit: FoleyDiT, fmt: torch.dtype) -> dict[str, torch.Tensor]:
    """The tiny state dict with every quantisable weight stored as `fmt` (like community fp8
    files: a plain cast, no scales), the rest as is."""
    names = {k for n in quantizable_names(dit.config) for k in release_weight_keys(n)}
    state = {k: (v.to(fmt) if k in names else v).contiguous() for k, v in dit.state_dict().items()}
    save_file(state, str(path))
    return state


def test_community_e4m3_weights_are_used_as_stored(tiny_dit, tmp_path) -> None:
    path = tmp_path / "hunyuanvideo_foley.safetensors"
    stored = _fp8_checkpoint(path, tiny_dit, torch.float8_e4m3fn)
    runtime = RuntimeConfig(precision="fp8")
    dit, names = load_dit(path, TINY.dit, runtime)
    assert names == set(quantizable_names(TINY.dit))
    apply(dit, runtime, stored_fp8=names)
    state = dit.state_dict()
    for name in names:
        weight = state[f"{name}.weight"]
        assert weight.dtype == torch.float8_e4m3fn
        release = torch.cat([stored[k] for k in release_weight_keys(name)])  # w13: w1, w3
        assert torch.equal(weight.view(torch.uint8), release.view(torch.uint8))
        assert (state[f"{name}.weight_scale"] == 1).all()
    with torch.inference_mode():
        assert _cosine(dit(**tiny_inputs(0)), tiny_dit(**tiny_inputs(0))) >= COSINE_BOUND


@pytest.mark.parametrize(("fmt", "precision"), [(torch.float8_e4m3fn, None),
                                                (torch.float8_e5m2, "fp8")])
def test_other_fp8_loads_are_upcast(tiny_dit, tmp_path, fmt, precision) -> None:
    """e4m3 for an unquantised precision, e5m2 for any: upcast on load (exact), then, for fp8,
    quantised like any weight."""
    path = tmp_path / "dit.safetensors"
    stored = _fp8_checkpoint(path, tiny_dit, fmt)
    dit, names = load_dit(path, TINY.dit, RuntimeConfig(precision=precision))
    assert names == frozenset()
    key = "single_blocks.1.linear2.w2.weight"
    assert dit.state_dict()[key].dtype == torch.float32
    assert torch.equal(dit.state_dict()[key], stored[key].float())


def test_scaled_fp8_checkpoints_are_refused(tiny_dit, tmp_path) -> None:
    path = tmp_path / "dit.safetensors"
    state = _fp8_checkpoint(path, tiny_dit, torch.float8_e4m3fn)
    state["single_blocks.0.linear1.scale_weight"] = torch.tensor(0.5)
    save_file(state, str(path))
    with pytest.raises(WeightsError, match="scaled-fp8"):
        load_dit(path, TINY.dit, RuntimeConfig(precision="fp8"))
