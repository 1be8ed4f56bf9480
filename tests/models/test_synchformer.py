"""Synchformer: released key tree, fixture parity, segmenting, token order and loading.

The real-size model is only ever built on `meta`; everything that runs uses the tiny config.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from foleyrt.config import TINY, SynchformerConfig
from foleyrt.errors import InputError
from foleyrt.models.random_init import randomize_
from foleyrt.models.synchformer import (
    FullSynchformer,
    Synchformer,
    UnusedPartsConfig,
    segment_windows,
    sync_features,
)
from foleyrt.verify import run_manifest
from foleyrt.weights import load_synchformer

CFG = TINY.synchformer
FRAME = (3, 224, 224)


def _layout(module: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")]
            for k, v in module.state_dict().items()]


@pytest.fixture(scope="module")
def tiny() -> Synchformer:
    return randomize_(Synchformer(CFG), seed=5).eval()


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *FRAME, generator=g) * 2 - 1


def test_released_visual_branch_size() -> None:
    with torch.device("meta"):
        model = Synchformer(SynchformerConfig())
    assert len(model.state_dict()) == 238
    assert sum(p.numel() for p in model.parameters()) == 122_440_704


def test_full_tree_matches_released_file(fixtures_dir) -> None:
    """Key, shape, dtype and order of all 513 tensors of `synchformer_state_dict.pth`."""
    real = json.loads((fixtures_dir / "real_model_state_dicts.json").read_text())["Synchformer"]
    with torch.device("meta"):
        full = FullSynchformer()
    assert _layout(full) == real["state_dict"]
    assert sum(p.numel() for p in full.parameters()) == 237_460_245


def test_fixture_cases_pass(fixtures_dir) -> None:
    results = list(run_manifest(fixtures_dir, only=["D"]))
    assert results, "no D cases in the manifest"
    for result in results:
        assert result.passed, result.line()


def test_segment_windows() -> None:
    frames = torch.arange(250.0).view(250, 1, 1, 1).expand(250, 3, 2, 2)
    windows = segment_windows(frames)
    assert windows.shape == (30, 1, 16, 3, 2, 2)
    assert torch.equal(windows[:, 0, :, 0, 0, 0],
                       8 * torch.arange(30.0)[:, None] + torch.arange(16.0))
    assert segment_windows(frames[:16]).shape[0] == 1
    assert segment_windows(frames[:31]).shape[0] == 2  # trailing frames dropped
    with pytest.raises(InputError, match="too short.*at least 16"):
        segment_windows(frames[:15])


@torch.inference_mode()
def test_sync_features_token_order(tiny) -> None:
    """Token 8 * segment + step, whatever the batching; batched = per-segment runs."""
    frames = _frames(40)  # 4 segments
    per_segment = torch.cat([tiny(frames[8 * i : 8 * i + 16][None, None])[0, 0]
                             for i in range(4)])
    for batch_size in (None, 1, 3):
        out = sync_features(tiny, frames, batch_size=batch_size)
        assert out.shape == (1, 32, CFG.embed_dim)
        torch.testing.assert_close(out[0], per_segment, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_forward_batch_and_segments_independent(tiny) -> None:
    x = _frames(32).view(2, 1, 16, *FRAME).expand(2, 2, 16, *FRAME).clone()
    out = tiny(x)
    assert out.shape == (2, 2, 8, CFG.embed_dim)
    torch.testing.assert_close(out[1, 1], tiny(x[1:, 1:])[0, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be"):
        tiny(x[:, :, :8])


def test_load_fixture_file(fixtures_dir) -> None:
    from safetensors.torch import load_file

    path = fixtures_dir / "weights" / "synchformer_vfeat.safetensors"
    model = load_synchformer(path, SynchformerConfig.from_official_overrides(
        {"EMBED_DIM": 32, "NUM_HEADS": 2, "DEPTH": 2}))
    stored = load_file(path)
    assert model.state_dict().keys() == stored.keys()
    assert all(torch.equal(v, stored[k]) for k, v in model.state_dict().items())


@torch.inference_mode()
def test_load_full_key_file(tmp_path, caplog) -> None:
    """A full released-layout file loads into the visual model: the other parts are
    reported as ignored, and the visual output is that of the full tree."""
    unused = UnusedPartsConfig(width=16, heads=2, mlp_hidden=32, ast_layers=1, offset_layers=1)
    full = randomize_(FullSynchformer(CFG, unused), seed=9).eval()
    path = tmp_path / "synchformer_state_dict.pth"
    torch.save(full.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="foleyrt.weights"):
        model = load_synchformer(path, CFG)
    assert "afeat_extractor.*, aproj.*, transformer.*, vproj.*" in caplog.text
    assert type(model) is Synchformer
    x = _frames(16, seed=1)[None, None]
    assert torch.equal(model(x), full(x))


@torch.inference_mode()
def test_low_precision_weights_accept_fp32_frames(tiny) -> None:
    """bf16 weights with fp32 frames (the pipeline's preprocessed pixels) run in bf16."""
    frames = _frames(16, seed=2)
    ref = sync_features(tiny, frames)
    low = sync_features(copy.deepcopy(tiny).to(torch.bfloat16), frames)
    assert low.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(low.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.99
