"""The GPU path's streamed encoding (frames resized and encoded chunk by chunk while decoding
goes on) gives the conditions of decoding first and encoding the whole clip at once. Run on
the CPU with the tiny random models: the orchestration (held frames, window groups across
chunk boundaries, the last partial group) is what is under test. Also: a fast mode's SigLIP2
features that overflow are computed again in fp32."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch

from foleyrt.accel.compile import compile_encoders
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.media.video import decode_clip, probe_video
from foleyrt.pipeline import features
from foleyrt.pipeline.models import random_models
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import GenerationRequest

from .conftest import Media


def test_streamed_equals_whole_clip(media: Media, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # small groups, so a 5 s clip (15 windows) spans several calls and ends on a partial one
    monkeypatch.setattr(features, "SIGLIP_CHUNK", 3)
    monkeypatch.setattr(features, "SYNC_GROUP", 4)
    models = random_models().place(RuntimeConfig())
    cpu = torch.device("cpu")
    path = media["h264_5s_25"]
    with torch.inference_mode():
        whole = features.video_conditions(models, decode_clip(path), "rain", "", cpu)
        streamed = features._stream_video(models, probe_video(path), "rain", "", cpu, False)
    assert streamed.lengths.audio_seconds == decode_clip(path).duration_s
    for name in ("clip_feat", "sync_feat", "text_feat", "uncond_text_feat"):
        got, want = getattr(streamed.conditions, name), getattr(whole, name)
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


class _OverflowsWhenFast(torch.nn.Module):
    """SigLIP2 whose fast-mode features overflow (`overflow`), as fp16 would on some clip."""

    def __init__(self, inner: torch.nn.Module, overflow: bool) -> None:
        super().__init__()
        self.inner, self.overflow = inner, overflow
        self.fast_calls: list[bool] = []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        fast = torch.get_float32_matmul_precision() == "high"  # `encoder_matmul_precision`
        self.fast_calls.append(fast)
        out = self.inner(pixels)
        return out * torch.inf if fast and self.overflow else out


@pytest.mark.parametrize("check_now", [True, False], ids=["checked", "checked-later"])
def test_fast_features_that_overflow_are_encoded_again_in_fp32(media: Media,
                                                                check_now: bool) -> None:
    """Checked at once, or later (batch mode's GPU thread queues the encoders and checks
    once per group): either way an overflow is encoded again in fp32, and only then."""
    models = random_models().place(RuntimeConfig())
    cpu = torch.device("cpu")
    clip = decode_clip(media["h264_5s_25"])
    with torch.inference_mode():
        want = features.encode_video(models, clip, "rain", "", cpu)
        for overflow, calls in ((False, [True]), (True, [True, False])):
            stub = _OverflowsWhenFast(models.siglip, overflow)
            got = features.encode_video(replace(models, siglip=stub), clip, "rain", "", cpu,
                                        fast=True, check_now=check_now)
            if not check_now:
                assert stub.fast_calls == [True] and got.fallback is not None
                got = got.checked()
            assert stub.fast_calls == calls and got.fallback is None
            assert got.siglip_finite()
            torch.testing.assert_close(got.conditions.clip_feat, want.conditions.clip_feat,
                                       rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_queued_encoding_does_not_wait_for_queued_gpu_work(media: Media) -> None:
    """Batch mode's GPU thread queues a clip's encoders behind a group's denoising
    (`encode(wait=False)`, stood in for here by a GPU spin): it returns while the spin runs,
    and the features, once checked, are those of a waited encoding."""
    runtime = RuntimeConfig(device=torch.device("cuda"))
    pipe = FoleyPipeline(random_models().place(runtime), runtime)
    clip = decode_clip(media["h264_5s_25"])
    request = GenerationRequest(prompt="rain")
    with torch.inference_mode():
        want = pipe.encode(clip, request)
        torch.cuda._sleep(4_000_000_000)  # cycles: seconds at any GPU clock
        spinning = torch.cuda.Event()
        spinning.record()
        queued = pipe.encode(clip, request, wait=False)
        assert not spinning.query()
        got = queued.checked()
    for f in fields(want.conditions):
        torch.testing.assert_close(getattr(got.conditions, f.name),
                                   getattr(want.conditions, f.name), msg=f.name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_encoders_stream_the_eager_features(media: Media) -> None:
    """On CUDA, a clip streamed through compiled encoders (SigLIP2 called on the feeding
    thread, chunks of `SIGLIP_CHUNK` frames then a partial one) gives the eager features."""
    cuda = torch.device("cuda")
    models = random_models().place(RuntimeConfig(device=cuda))
    path = media["h264_5s_25"]
    with torch.inference_mode():
        eager = features._stream_video(models, probe_video(path), "rain", "", cuda, True)
        compile_encoders(models.siglip.vision_model, models.synchformer)
        compiled = features._stream_video(models, probe_video(path), "rain", "", cuda, True)
    for f in fields(eager.conditions):
        torch.testing.assert_close(getattr(compiled.conditions, f.name),
                                   getattr(eager.conditions, f.name), rtol=2e-3, atol=2e-3,
                                   msg=f.name)
