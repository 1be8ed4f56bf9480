"""The transformer: released key lists, the prepare/velocity split, and the bf16 regime."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from foleyrt.config import TINY, XL, XXL, DiTConfig
from foleyrt.errors import ConfigError
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.layers import TemporalConv
from foleyrt.models.random_init import randomize_
from tests.conftest import FIXTURES


@pytest.mark.parametrize(("spec", "name"), [(XXL, "HunyuanVideoFoley-xxl"),
                                            (XL, "HunyuanVideoFoley-xl")])
def test_released_state_dict_keys_shapes_dtypes(spec, name, fixtures_dir) -> None:
    """Built on meta in bf16 (as the release builds it), the key/shape/dtype list equals the
    released checkpoint's, in order: the real files load with identical keys."""
    real = json.loads((FIXTURES / "real_model_state_dicts.json").read_text())[name]
    with torch.device("meta"):
        model = FoleyDiT(spec.dit).to(torch.bfloat16)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in model.state_dict().items()]
    assert ours == real["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == real["num_params"]


def _tiny_inputs(batch: int = 2, n_audio: int = 57, n_vis: int = 10, n_sync: int = 16,
                 n_text: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.dit
    return {
        "x": torch.randn(batch, cfg.audio_vae_latent_dim, n_audio, generator=g),
        "t": torch.rand(batch, generator=g) * 1000,
        "clip_feat": torch.randn(batch, n_vis, cfg.clip_dim, generator=g),
        "cond": torch.randn(batch, n_text, cfg.text_dim, generator=g),
        "sync_feat": torch.randn(batch, n_sync, cfg.sync_feat_dim, generator=g),
    }


@pytest.fixture(scope="module")
def tiny_dit() -> FoleyDiT:
    return randomize_(FoleyDiT(TINY.dit), seed=3).eval()


@torch.inference_mode()
def test_prepare_once_then_velocity_matches_forward(tiny_dit) -> None:
    """Conditions prepared once serve every step: identical to the full forward per step."""
    inp = _tiny_inputs()
    prepared = tiny_dit.prepare(inp["clip_feat"], inp["cond"], inp["sync_feat"],
                                inp["x"].shape[-1])
    for t in (torch.full((2,), 1000.0), torch.full((2,), 20.0)):
        full = tiny_dit(inp["x"], t, inp["clip_feat"], inp["cond"], inp["sync_feat"])
        assert torch.equal(tiny_dit.velocity(inp["x"], t, prepared), full)


@torch.inference_mode()
def test_modulations_at_the_sync_rate_equal_those_per_audio_frame(tiny_dit) -> None:
    """Fewer sync tokens than audio frames: the single blocks modulate from the sync-rate rows
    and resample after the GEMM; the same velocity as from the resampled rows (exact: every
    output row comes from the same input row)."""
    inp = _tiny_inputs()
    prepared = tiny_dit.prepare(inp["clip_feat"], inp["cond"], inp["sync_feat"],
                                inp["x"].shape[-1])
    assert prepared.sync_rows is not None
    assert prepared.sync_rows.shape[1] < prepared.audio_len
    per_frame = dataclasses.replace(prepared, sync_rows=None, sync_index=None)
    torch.testing.assert_close(tiny_dit.velocity(inp["x"], inp["t"], prepared),
                               tiny_dit.velocity(inp["x"], inp["t"], per_frame),
                               rtol=1e-6, atol=1e-6)


@torch.inference_mode()
def test_rows_are_independent(tiny_dit) -> None:
    inp = _tiny_inputs()
    both = tiny_dit(**inp)
    for row in range(2):
        one = tiny_dit(**{k: v[row : row + 1] for k, v in inp.items()})
        torch.testing.assert_close(one, both[row : row + 1], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_drop_visual_uses_empty_features_without_touching_inputs(tiny_dit) -> None:
    inp = _tiny_inputs()
    clip_before = inp["clip_feat"].clone()
    out = tiny_dit(**inp, drop_visual=[True, False])
    assert torch.equal(inp["clip_feat"], clip_before)
    manual = dict(inp)
    manual["clip_feat"] = inp["clip_feat"].clone()
    manual["sync_feat"] = inp["sync_feat"].clone()
    manual["clip_feat"][0] = tiny_dit.empty_clip_feat
    manual["sync_feat"][0] = tiny_dit.empty_sync_feat
    assert torch.equal(out, tiny_dit(**manual))


@pytest.mark.parametrize("n_audio,n_vis", [(40, 40), (30, 45), (101, 16)])
@torch.inference_mode()
def test_lengths_of_any_ratio_run(tiny_dit, n_audio, n_vis) -> None:
    """Equal, shorter and longer visual sequences (the interleaved RoPE resamples both ways)."""
    out = tiny_dit(**_tiny_inputs(n_audio=n_audio, n_vis=n_vis))
    assert out.shape == (2, 128, n_audio) and torch.isfinite(out).all()


@torch.inference_mode()
def test_bf16_weights_follow_the_release_regime(tiny_dit) -> None:
    """bf16 weights without autocast: output bf16 and close to fp32 (the audio residual
    stream stays fp32 inside, so the gap is bf16 rounding, not a broken path)."""
    inp = _tiny_inputs()
    ref = tiny_dit(**inp)
    bf16 = FoleyDiT(TINY.dit)
    bf16.load_state_dict(tiny_dit.state_dict())
    out = bf16.to(torch.bfloat16).eval()(**inp)
    assert out.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def test_config_rejects_unknown_and_broken_fields() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        DiTConfig.from_official({"hidden_size": 64, "num_heads": 2, "hiden_size": 3})
    with pytest.raises(ConfigError, match="sync_modulation"):
        DiTConfig(hidden_size=64, num_heads=2, sync_modulation=True)
    with pytest.raises(ConfigError, match="divisible"):
        DiTConfig(hidden_size=65, num_heads=2)


def test_state_dict_round_trips_the_official_layout(fixtures_dir) -> None:
    """Single blocks keep qkv rows in their own order inside; what goes in comes back out."""
    from safetensors.torch import load_file

    official = load_file(str(fixtures_dir / "weights" / "dit.safetensors"))
    cfg = DiTConfig.from_official(json.loads((fixtures_dir / "manifest.json").read_text())
                                  ["weights"]["dit"]["config"]["model_config"]["model_kwargs"])
    model = FoleyDiT(cfg)
    model.load_state_dict(official)
    saved = model.state_dict()
    assert set(saved) == set(official)
    assert all(torch.equal(saved[k], official[k]) for k in official)


@pytest.mark.parametrize(("c_in", "c_out"), [(12, 20), (20, 12), (16, 16)],
                         ids=["widening-taps-on-input", "narrowing-taps-on-output", "square"])
def test_temporal_conv_is_conv1d_in_either_tap_arrangement(c_in: int, c_out: int) -> None:
    """Both GEMM arrangements equal `F.conv1d` with 'same' padding; the tap-major storage is
    invisible in the state dict and survives an assign-load (the released loading path)."""
    conv = randomize_(TemporalConv(c_in, c_out, 3, bias=True), seed=3)
    x = torch.randn(2, 9, c_in, generator=torch.Generator().manual_seed(0))
    want = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=1).transpose(1, 2)
    torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-5)
    assert conv.taps_on_output == (c_in >= c_out)

    state = {k: v.contiguous() for k, v in conv.state_dict().items()}  # as a file stores it
    assert state["weight"].shape == (c_out, c_in, 3)
    with torch.device("meta"):
        loaded = TemporalConv(c_in, c_out, 3, bias=True)
    loaded.load_state_dict(state, assign=True)
    assert loaded.weight.stride() == conv.weight.stride()  # GEMM view without a copy
    torch.testing.assert_close(loaded(x), want, rtol=1e-5, atol=1e-5)
