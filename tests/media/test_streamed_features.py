"""The GPU path's streamed encoding (frames resized and encoded chunk by chunk while decoding
goes on) gives the conditions of decoding first and encoding the whole clip at once. Run on
the CPU with the tiny random models: the orchestration (held frames, window groups across
chunk boundaries, the last partial group) is what is under test. Also: a fast mode's SigLIP2
features that overflow are computed again in fp32."""

from __future__ import annotations

from dataclasses import replace

import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.media.video import decode_clip, probe_video
from foleyrt.pipeline import features
from foleyrt.pipeline.models import random_models

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


def test_fast_features_that_overflow_are_encoded_again_in_fp32(media: Media) -> None:
    models = random_models().place(RuntimeConfig())
    cpu = torch.device("cpu")
    clip = decode_clip(media["h264_5s_25"])
    with torch.inference_mode():
        want = features.encode_video(models, clip, "rain", "", cpu)
        for overflow, calls in ((False, [True]), (True, [True, False])):
            stub = _OverflowsWhenFast(models.siglip, overflow)
            got = features.encode_video(replace(models, siglip=stub), clip, "rain", "", cpu,
                                        fast=True)
            assert stub.fast_calls == calls
            assert got.siglip_finite()
            torch.testing.assert_close(got.conditions.clip_feat, want.conditions.clip_feat,
                                       rtol=1e-3, atol=1e-3)
