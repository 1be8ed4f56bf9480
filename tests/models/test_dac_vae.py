"""The audio VAE: architecture (keys, sizes, lengths), parity cases C*, checkpoint loading."""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foleyrt.config import RELEASED_DAC, TINY, DACConfig
from foleyrt.errors import InputError, UsageError, WeightsError
from foleyrt.models.dac_vae import DACVAE, DiagonalGaussian
from foleyrt.models.random_init import random_vae, randomize_
from foleyrt.verify import run_manifest
from foleyrt.weights import load_dac


def _count(model: torch.nn.Module) -> tuple[int, int]:
    return len(model.state_dict()), sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def released() -> DACVAE:
    with torch.device("meta"):
        return DACVAE(RELEASED_DAC)


@pytest.fixture(scope="module")
def tiny_random() -> DACVAE:
    return randomize_(DACVAE(TINY.dac), seed=3).eval()


def test_tiny_random_vae_is_well_conditioned() -> None:
    """Issue 19: raw random gains made the tiny-random VAE a square-wave generator (97 % of
    samples at +-1, fp32 1e-2 from fp64). `random_vae` gives speech-level sound from a latent
    of the sampler's scale, and fp32 within rounding of fp64."""
    vae = random_vae(TINY.dac, seed=1).eval()
    z = 2 * torch.randn(1, vae.latent_dim, 100, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        audio = vae.decode(z)
        exact = vae.double().decode(z.double())
    rms = audio.square().mean().sqrt().item()
    assert 0.05 < rms < 0.3, rms
    assert (audio.abs() > 0.99).float().mean().item() < 0.001
    assert (audio.double() - exact).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def manifest_entry(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "manifest.json").read_text())["weights"]["dac"]


@pytest.fixture(scope="module")
def tiny_config(manifest_entry: dict) -> DACConfig:
    return DACConfig.from_kwargs(manifest_entry["constructor_kwargs"])


@pytest.fixture(scope="module")
def flat_state(fixtures_dir: Path, manifest_entry: dict) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / manifest_entry["file"]))


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def test_released_model_has_the_official_keys_and_size(released: DACVAE) -> None:
    assert _count(released) == (298, 371_589_058)
    shapes = {k: tuple(v.shape) for k, v in released.state_dict().items()}
    assert shapes["decoder.model.1.block.1.weight_g"] == (2048, 1, 1)
    assert shapes["decoder.model.1.block.1.weight_v"] == (2048, 1024, 16)
    assert shapes["decoder.model.1.block.1.bias"] == (1024,)
    assert shapes["decoder.model.2.block.3.block.1.weight_v"] == (512, 512, 7)
    assert shapes["decoder.model.7.weight_v"] == (1, 64, 7)
    assert shapes["encoder.block.5.block.4.weight_v"] == (4096, 2048, 16)
    assert shapes["encoder.block.7.weight_v"] == (128, 4096, 3)
    assert shapes["quant_conv.weight"] == (256, 128, 1)
    assert shapes["post_quant_conv.weight"] == (128, 128, 1)


def test_decoder_only_build_is_exactly_the_inference_part(released: DACVAE) -> None:
    with torch.device("meta"):
        decoder_only = DACVAE(RELEASED_DAC, decoder_only=True)
    assert _count(decoder_only) == (149, 75_498_690)
    full = {k: v.shape for k, v in released.state_dict().items()
            if k.startswith(("post_quant_conv.", "decoder."))}
    assert {k: v.shape for k, v in decoder_only.state_dict().items()} == full
    assert released.hop_length == 960 and released.latent_rate == 50
    assert released.sample_rate == 48000 and released.latent_dim == 128


def test_keys_shapes_and_order_match_the_official_state_dict(
    manifest_entry: dict, tiny_config: DACConfig
) -> None:
    with torch.device("meta"):
        model = DACVAE(tiny_config)
    got = [[k, list(v.shape), "float32"] for k, v in model.state_dict().items()]
    assert got == manifest_entry["state_dict"]


def test_length_rules(tiny_random: DACVAE) -> None:
    with torch.no_grad():
        assert tiny_random.decode(torch.randn(2, 128, 3)).shape == (2, 1, 2880)
        audio = torch.randn(1, 1, 2980)
        x = tiny_random.preprocess(audio, 48000)
        assert x.shape == (1, 1, 3840)
        assert torch.equal(x[..., :2980], audio) and not x[..., 2980:].any()
        assert tiny_random.preprocess(x).shape == (1, 1, 3840)  # already a multiple: unchanged
        assert tiny_random.encode(x).mean.shape == (1, 128, 4)
    with pytest.raises(InputError, match="44100"):
        tiny_random.preprocess(audio, 44100)


def test_decode_output_is_bounded(tiny_random: DACVAE) -> None:
    with torch.no_grad():
        audio = tiny_random.decode(10 * torch.randn(1, 128, 2))
    assert audio.abs().max() <= 1  # tanh; fp32 saturates to exactly 1 for large inputs


def test_posterior() -> None:
    moments = torch.cat([torch.zeros(2, 3, 4), torch.full((2, 3, 4), 50.0)], dim=1)
    moments[:, 3:, 0] = -100.0
    post = DiagonalGaussian.from_moments(moments)
    assert post.logvar.max() == 20 and post.logvar.min() == -30
    assert torch.allclose(post.std, torch.exp(0.5 * post.logvar))
    assert torch.allclose(post.var, post.std**2)
    assert post.mode() is post.mean
    a = post.sample(torch.Generator().manual_seed(0))
    b = post.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2, 3, 4)
    standard = DiagonalGaussian(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    assert torch.equal(standard.kl(), torch.zeros(2))


# --------------------------------------------------------------------------------------------
# Parity with the official implementation
# --------------------------------------------------------------------------------------------


def test_reference_vae_cases_pass(fixtures_dir: Path) -> None:
    results = list(run_manifest(fixtures_dir, only=["C"]))
    assert results, "no C cases in the reference manifest"
    for result in results:
        assert result.passed, result.line()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _container(path: Path, state: dict, kwargs: dict) -> Path:
    torch.save({"state_dict": state, "metadata": {"kwargs": kwargs}}, path)
    return path


def test_official_container_loads_with_its_metadata_kwargs(
    fixtures_dir: Path, tiny_config: DACConfig, flat_state: dict
) -> None:
    model = load_dac(fixtures_dir / "weights" / "dac.pth", fold=False)
    assert model.config == tiny_config
    assert model.decoder_only and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, flat_state[key]), key


def test_flat_safetensors_needs_its_config(fixtures_dir: Path, tiny_config: DACConfig) -> None:
    path = fixtures_dir / "weights" / "dac.safetensors"
    model = load_dac(path, config=tiny_config, decoder_only=False)
    assert model.config == tiny_config and not model.decoder_only
    # Without kwargs anywhere the released architecture is assumed: the tiny file cannot fit.
    with pytest.raises(WeightsError, match="dac.safetensors"):
        load_dac(path)


def test_safetensors_with_json_kwargs_in_its_header(
    tmp_path: Path, manifest_entry: dict, tiny_config: DACConfig, flat_state: dict
) -> None:
    path = tmp_path / "vae.safetensors"
    save_file(flat_state, str(path),
              metadata={"kwargs": json.dumps(manifest_entry["constructor_kwargs"])})
    assert load_dac(path).config == tiny_config


def test_caller_choices_win_and_unknown_kwargs_are_dropped(
    tmp_path: Path, manifest_entry: dict, tiny_config: DACConfig, flat_state: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kwargs = {**manifest_entry["official_container"]["metadata_kwargs"], "stale_option": 1}
    path = _container(tmp_path / "vae.pth", flat_state, kwargs)
    assert load_dac(path).sample_rate == 48000
    assert load_dac(path, overrides={"sample_rate": 44100}).sample_rate == 44100
    other = dataclasses.replace(tiny_config, sample_rate=32000)
    with caplog.at_level(logging.WARNING):
        assert load_dac(path, config=other).sample_rate == 32000
    assert "differ" in caplog.text


def test_discrete_codec_checkpoint_is_refused(
    tmp_path: Path, manifest_entry: dict, flat_state: dict
) -> None:
    kwargs = {**manifest_entry["constructor_kwargs"], "continuous": False}
    path = _container(tmp_path / "codec.pth", flat_state, kwargs)
    with pytest.raises(WeightsError, match="codec.pth.*continuous"):
        load_dac(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.pth", b"", "empty"),
        ("corrupt.pth", b"\x80\x04not a pickle at all" * 10, "not a readable PyTorch"),
        ("corrupt.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage", "safetensors"),
    ],
)
def test_unreadable_files_give_one_line_errors(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        load_dac(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        load_dac(tmp_path / "nope.pth")


def test_torch_package_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "packaged.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("DAC/.data/extern_modules", "einops\n")
        zf.writestr("DAC/DAC.pth", b"\x80\x04.")
    with pytest.raises(WeightsError, match="torch.package"):
        load_dac(path)


def test_missing_decoder_key_and_wrong_shape_are_errors(
    tmp_path: Path, tiny_config: DACConfig, flat_state: dict
) -> None:
    missing = dict(flat_state)
    del missing["decoder.model.3.block.2.block.1.weight_v"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="decoder.model.3.block.2.block.1.weight_v"):
        load_dac(tmp_path / "missing.safetensors", config=tiny_config)

    wrong = dict(flat_state, **{"post_quant_conv.bias": torch.zeros(7)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsError, match="post_quant_conv.bias"):
        load_dac(tmp_path / "wrong.safetensors", config=tiny_config)


def test_decoder_only_file_loads_decoder_only(
    tmp_path: Path, tiny_config: DACConfig, flat_state: dict
) -> None:
    decoder = {k: v for k, v in flat_state.items() if k.startswith(("decoder.", "post_quant"))}
    save_file(decoder, str(tmp_path / "decoder.safetensors"))
    model = load_dac(tmp_path / "decoder.safetensors", config=tiny_config)
    with pytest.raises(UsageError, match="decoder-only"):
        model.encode(torch.zeros(1, 1, 960))
    with pytest.raises(WeightsError, match="missing"):
        load_dac(tmp_path / "decoder.safetensors", config=tiny_config, decoder_only=False)


def test_load_casts_to_the_requested_dtype(fixtures_dir: Path) -> None:
    model = load_dac(fixtures_dir / "weights" / "dac.pth", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        audio = model.decode(torch.randn(1, 128, 2))  # fp32 latents, as the sampler gives
    assert audio.dtype == torch.bfloat16 and torch.isfinite(audio.float()).all()


# --------------------------------------------------------------------------------------------
# Weight-norm folding
# --------------------------------------------------------------------------------------------


def test_folding_keeps_outputs_and_a_valid_state_dict(
    fixtures_dir: Path, tiny_config: DACConfig
) -> None:
    path = fixtures_dir / "weights" / "dac.safetensors"
    live = load_dac(path, config=tiny_config, decoder_only=False, fold=False)
    folded = load_dac(path, config=tiny_config, decoder_only=False, fold=False).fold_weight_norm()
    z = torch.randn(2, 128, 5, generator=torch.Generator().manual_seed(0))
    audio = torch.randn(2, 1, 4800, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(folded.decode(z), live.decode(z), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(folded.encode(audio).mean, live.encode(audio).mean,
                                   rtol=1e-5, atol=1e-5)
        # The folded state dict (same keys) is still a weight-norm checkpoint of the same model.
        assert list(folded.state_dict()) == list(live.state_dict())
        fresh = DACVAE(tiny_config)
        fresh.load_state_dict(folded.state_dict())
        torch.testing.assert_close(fresh.decode(z), live.decode(z), rtol=1e-5, atol=1e-5)
        # Loading into a folded model makes it normalise again.
        folded.load_state_dict(live.state_dict())
        torch.testing.assert_close(folded.decode(z), live.decode(z), rtol=0, atol=0)
