"""Long videos on the tiny random model: each window's features are its own frames', a clip
that fits one window takes today's path, outputs of long clips (16 s, 40 s, a generated
3 min) and durations have the clip's length, and the VAE decodes long latents in chunks
that equal the whole decode."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
import soundfile
import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.errors import UsageError
from foleyrt.lengths import SequenceLengths, Windowing, WindowPlan, sync_window_count
from foleyrt.media.synthetic import ClipSpec, encode_clip
from foleyrt.media.video import decode_clip, to_model_range
from foleyrt.models.synchformer import sync_features
from foleyrt.pipeline import features
from foleyrt.pipeline import pipeline as pipeline_module
from foleyrt.pipeline.budget import WindowRows
from foleyrt.pipeline.decode import DECODE_CONTEXT, chunk_spans, decode_latents
from foleyrt.pipeline.models import random_models
from foleyrt.pipeline.pipeline import FoleyPipeline, initial_noise
from foleyrt.request import GenerationRequest

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "examples" / "clip.mp4"  # 4 s
RATE = 48_000
LATENT_FRAME_S = 0.02


@pytest.fixture(scope="module")
def pipe() -> FoleyPipeline:
    runtime = RuntimeConfig()
    return FoleyPipeline(random_models().place(runtime), runtime)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Long clips made small and slow (few frames to decode and encode): 12 s at 10 fps,
    16 s at 10 fps, 40 s at 5 fps and 3 min at 1 fps."""
    root = tmp_path_factory.mktemp("long")
    specs = {"12s": (10, 12.0), "16s": (10, 16.0), "40s": (5, 40.0), "3min": (1, 180.0)}
    return {name: encode_clip(root / f"{name}.mp4", ClipSpec("libx264", ".mp4", Fraction(fps),
                                                             seconds, size=(32, 32)))
            for name, (fps, seconds) in specs.items()}


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_each_window_sees_its_own_frames(pipe: FoleyPipeline, clips: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The alignment rule, end to end: 3 s windows every 2 s start on Synchformer's grid
    (every 8 s) or off it, and the last one overhangs the end. Each window's features are
    the encoders' over the clip's own frames from its first second (SigLIP2 at 8 fps, the
    Synchformer's 16-frame windows from its first 25 fps frame), the last frame held past the
    end; groups and chunks are small so windows span several encoder calls."""
    monkeypatch.setattr(features, "SIGLIP_CHUNK", 5)
    monkeypatch.setattr(features, "SYNC_GROUP", 4)
    models, cpu, path = pipe.models, torch.device("cpu"), clips["12s"]
    windowing = Windowing(3.0, 1.0)
    got = features.encode_video(models, path, "rain", "", cpu, windowing=windowing)
    assert got.plan is not None and got.plan.starts == (0, 2, 4, 6, 8, 9)
    assert got.plan.window == SequenceLengths.of_duration(3.0) == got.lengths
    clip = decode_clip(path)
    assert got.plan.clip == SequenceLengths(len(clip.siglip_u8), len(clip.sync_u8))
    window = got.plan.window
    for i, cond in enumerate(got.windows):
        siglip = _held(clip.siglip_u8, got.plan.clip_start(i), window.clip_frames)
        sync = _held(clip.sync_u8, got.plan.sync_start(i), window.sync_frames)
        _close(cond.clip_feat, models.siglip(to_model_range(siglip)))
        _close(cond.sync_feat, sync_features(models.synchformer, to_model_range(sync)))
        assert cond.text_feat is got.conditions.text_feat  # one prompt, shared


def _held(frames: torch.Tensor, start: int, count: int) -> torch.Tensor:
    index = torch.arange(start, start + count).clamp(max=len(frames) - 1)
    return frames[index]


@torch.inference_mode()
def test_a_clip_that_fits_one_window_takes_today_s_path(pipe: FoleyPipeline) -> None:
    """A 4 s clip with a 4 s window (or any longer one), a 10 s duration with a 10 s window:
    one pass, today's path, whose numbers `test_pipeline.py` pins."""
    video = pipe.encode(CLIP, GenerationRequest(window=4.0, overlap=0))
    assert video.plan is None and not video.windowed and video.lengths.sync_frames == 100
    text = pipe.encode(None, GenerationRequest(duration=10.0))
    assert text.plan is not None and text.plan.whole and not text.windowed
    assert text.lengths == SequenceLengths.of_duration(10.0)


def _generate_and_check(pipe: FoleyPipeline, video: Path, out: Path,
                        request: GenerationRequest, windows: int) -> None:
    """The audio (and the MP4's track) lasts as long as the picture; the picture is copied
    untouched."""
    result = pipe.generate(video, request)
    assert result.windows == windows
    assert result.audio.shape == (1, 1, round(result.duration_s * RATE))
    result.save(out)
    with av.open(str(out)) as made, av.open(str(video)) as source:
        assert [bytes(p) for p in made.demux(made.streams.video[0]) if p.size] == [
            bytes(p) for p in source.demux(source.streams.video[0]) if p.size]
        (audio,) = made.streams.audio
        audio_s = float(audio.duration * audio.time_base)
        video_s = float(made.streams.video[0].duration * made.streams.video[0].time_base)
    assert abs(audio_s - video_s) <= LATENT_FRAME_S


@pytest.mark.parametrize(("name", "windows"), [("16s", 2), ("40s", 5)])
@torch.inference_mode()
def test_long_clips_give_audio_of_their_length(pipe: FoleyPipeline, clips: dict[str, Path],
                                               tmp_path: Path, name: str,
                                               windows: int) -> None:
    """10 s windows, 2 s overlap, everything real (unguided, to halve the rows). The release
    cut a 16 s clip at 15 s without a word."""
    _generate_and_check(pipe, clips[name], tmp_path / "out.mp4",
                        GenerationRequest(prompt="rain", steps=2, seed=1, guidance=1.0), windows)


@torch.inference_mode()
def test_a_decoded_clip_longer_than_one_pass_is_refused(pipe: FoleyPipeline,
                                                        clips: dict[str, Path]) -> None:
    """A `DecodedClip` (decoded in another process) stops at one pass: encoding one of a
    longer clip would make its audio from its start only, so it is refused (stream it from
    its path); within one pass it is taken."""
    decoded = decode_clip(clips["16s"])
    with pytest.raises(UsageError, match=r"16s.mp4: a decoded clip is one pass, and this one "
                                         r"lasts 16.00 s; pass its path"):
        pipe.encode(decoded, GenerationRequest())
    assert pipe.encode(decode_clip(clips["12s"]), GenerationRequest()).window_count == 1


@torch.inference_mode()
def test_a_three_minute_clip_gives_three_minutes(pipe: FoleyPipeline, clips: dict[str, Path],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """23 windows through the transformer; the Synchformer and the VAE (whose numbers the
    tests above check, and which cost most of a tiny run's time) stand in as zeros of their
    shapes, so three minutes stay a few seconds of test."""
    width = pipe.models.dit.config.sync_feat_dim
    monkeypatch.setattr(features, "sync_features", lambda model, frames, batch=None: torch.zeros(
        1, 8 * sync_window_count(len(frames)), width))
    monkeypatch.setattr(pipe.models.vae, "decode",
                        lambda z: torch.zeros(z.shape[0], 1, 960 * z.shape[-1]))
    _generate_and_check(pipe, clips["3min"], tmp_path / "out.mp4",
                        GenerationRequest(prompt="rain", steps=2, seed=1, guidance=1.0), 23)


@torch.inference_mode()
def test_long_text_only(pipe: FoleyPipeline, tmp_path: Path) -> None:
    """16.5 s of text-to-audio: two windows, the whole length in the WAV."""
    text = pipe.generate(None, GenerationRequest(prompt="wind", duration=16.5, steps=1, seed=2))
    assert text.windows == 2
    wav = text.save(tmp_path / "wind.wav")[0]
    assert soundfile.info(str(wav)).frames == round(16.5 * RATE)


@torch.inference_mode()
def test_the_long_noise_is_one_draw_and_grouping_changes_nothing(pipe: FoleyPipeline) -> None:
    """One `[n, C, Na]` draw from the seed covers every window, so the result does not
    depend on how the windows share forwards."""
    encoded = pipe.encode(None, GenerationRequest(duration=18.5, steps=1, seed=4))
    assert encoded.plan is not None and encoded.plan.starts == (0, 8, 9)
    shape = (1, 128, encoded.latent_frames)
    (one,) = pipe.denoise([encoded], noises=[initial_noise(shape, 4)])
    (seeded,) = pipe.denoise([encoded], max_rows=2)
    torch.testing.assert_close(seeded, one, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_the_window_budget_decides_for_long_clips_also_under_a_given_row_count(
        pipe: FoleyPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long clip's forwards follow the window budget (`RowBudget.windows`, stubbed here:
    off CUDA it always holds): its row count is `max_rows()`'s answer, what batch mode passes
    back to `denoise`, and its holding is kept when a row count is given."""
    encoded = pipe.encode(None, GenerationRequest(duration=18.5, steps=1, seed=4))
    asked: list[tuple[int, int]] = []

    def windows(lengths: SequenceLengths, text: int, per_window: int, total: int) -> WindowRows:
        asked.append((per_window, total))
        return WindowRows(max_rows=2, hold_prepared=False)

    monkeypatch.setattr(pipe.row_budget, "windows", windows)
    held: list[bool] = []
    monkeypatch.setattr(pipeline_module, "denoise", lambda *a, **kw: held.append(
        kw["hold_prepared"]) or [torch.zeros(1)])
    assert pipe.max_rows([encoded]) == 2
    pipe.denoise([encoded], max_rows=6)
    assert held == [False] and asked == [(2, 6), (2, 6)]  # 3 windows of 2 guided rows


@torch.inference_mode()
def test_chunked_decode_equals_the_whole_decode(pipe: FoleyPipeline) -> None:
    """Chunks of at most 750 frames whose kept parts overlap by the cross-fade: what is kept
    is the whole decode's up to rounding, and each chunk's dropped edges cover the decoder's
    reach (measured: 11 latent frames)."""
    spans = chunk_spans(1000)
    assert all(d.stop - d.start <= 750 for d, _ in spans) and spans[-1][1].stop == 1000
    for (_, a), (_, b) in zip(spans, spans[1:], strict=False):
        assert a.stop - b.start == 8 and b.start - a.start > 0
    assert all(k.start - d.start in (0, DECODE_CONTEXT) for d, k in spans)
    vae, z = pipe.models.vae, torch.randn(1, 128, 1000, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(z)
    chunked = decode_latents(vae, z, torch.device("cpu"))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_a_plan_of_text_only_windows_matches_the_video_rule() -> None:
    """Text-only durations are planned by the same rule (as a clip of that length)."""
    plan = WindowPlan.of(SequenceLengths.of_duration(22.0), GenerationRequest().windowing)
    assert plan.starts == (0, 8, 12) and plan.latent_frames == 1100
