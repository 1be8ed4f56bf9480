"""Memory modes and the acceleration fallback, on the CPU (the CUDA specifics — pinned memory,
side-stream copies — are the same code paths; the logic of what moves when is tested here)."""

from __future__ import annotations

import pytest
import torch

from foleyrt.accel.offload import BlockStreamer, ModelOffloader, stream_blocks
from foleyrt.accel.runtime import OffloadKind, OffloadPlan, RuntimeConfig
from foleyrt.config import TINY
from foleyrt.errors import ConfigError
from foleyrt.models.dit import FoleyDiT
from tests.tiny import tiny_dit

CPU = torch.device("cpu")


def _dit() -> FoleyDiT:
    return tiny_dit(seed=11)


def _inputs(n_audio: int = 50, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.dit
    n_sync = 8 * ((n_audio // 2 - 16) // 8 + 1)
    return (torch.randn(2, 128, n_audio, generator=g), torch.full((2,), 500.0),
            torch.randn(2, 9, cfg.clip_dim, generator=g),
            torch.randn(2, 7, cfg.text_dim, generator=g),
            torch.randn(2, n_sync, cfg.sync_feat_dim, generator=g))


@pytest.mark.parametrize("slots", [2, 3, 4, 7])
@torch.inference_mode()
def test_streamed_blocks_compute_what_resident_blocks_do(slots: int) -> None:
    """Any slot count (also not dividing the 4 blocks), several forwards in a row, and lengths
    changing between them: identical to the model with every weight resident."""
    reference, streamed = _dit(), _dit()
    stream_blocks(streamed, slots, CPU)
    conv = streamed.single_blocks[0].linear2.w2
    assert conv.taps_on_output and conv.weight.permute(2, 0, 1).is_contiguous()  # layout kept
    for n_audio in (50, 50, 64):
        args = _inputs(n_audio, seed=n_audio)
        assert torch.equal(streamed(*args), reference(*args))


@torch.inference_mode()
def test_streaming_recovers_from_an_interrupted_forward() -> None:
    """A forward cut short (cancellation between blocks) leaves the slot schedule out of step;
    the next forward must still be right (out-of-order blocks load synchronously)."""
    reference, streamed = _dit(), _dit()
    streamer = stream_blocks(streamed, 2, CPU)
    args = _inputs()
    prepared = streamed.prepare(args[2], args[3], args[4], args[0].shape[-1])
    time = streamed.time_conditioning(args[1])
    audio = streamed.audio_embedder(args[0]) + prepared.sync_add
    streamed.triple_blocks[0](audio, prepared.visual, time.triple[0], prepared.text_k[0],
                              prepared.text_v[0], prepared.rope)  # then "cancelled"
    assert isinstance(streamer, BlockStreamer) and streamer.calls == 1
    assert torch.equal(streamed(*args), reference(*args))


@torch.inference_mode()
def test_model_offloader_brings_weights_in_for_a_stage_only() -> None:
    dit = _dit()
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    offloader = ModelOffloader([dit], CPU)
    args = _inputs()
    with offloader.on_device(dit):
        out = dit(*args)
    assert torch.equal(out, _dit()(*args))
    assert all(torch.equal(v, before[k]) for k, v in dit.state_dict().items())


def test_offload_modes_are_validated() -> None:
    assert OffloadPlan.parse("blocks:4") == OffloadPlan(OffloadKind.BLOCKS, 4)
    assert OffloadPlan.parse("model") == OffloadPlan(OffloadKind.MODEL)
    for bad in ("blocks", "blocks:1", "blocks:x", "disk"):
        with pytest.raises(ConfigError, match="offload mode"):
            RuntimeConfig(offload=bad)


def test_offload_needs_a_gpu() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        RuntimeConfig(offload="model")


@torch.inference_mode()
def test_streamed_blocks_with_the_rest_offloaded_per_stage() -> None:
    """`--offload blocks:N`: blocks stream, everything else of the transformer comes in for the
    denoising stage only, and the two managers never fight over a tensor."""
    reference, dit = _dit(), _dit()
    streamer = stream_blocks(dit, 3, CPU)
    offloader = ModelOffloader([dit], CPU, exclude=streamer.tensor_ids)
    args = _inputs()
    assert streamer.tensor_ids.isdisjoint(id(t) for t, _ in offloader.homes[id(dit)])
    for _ in range(2):
        with offloader.on_device(dit):
            assert torch.equal(dit(*args), reference(*args))
