"""`FoleyPipeline` on the tiny random model: the exact modes' numbers pinned (a refactor must
not move one bit), and its stages (encode, denoise, finish) composing into `generate`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from foleyrt.accel.calibration import ActivationRecorder, read_calibration, save_calibration
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules
from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.lengths import SequenceLengths
from foleyrt.pipeline.models import random_models
from foleyrt.pipeline.pipeline import Encoded, FoleyPipeline
from foleyrt.request import GenerationRequest
from tests.tiny import tiny_conditions

REPO = Path(__file__).resolve().parents[2]
CLIP = REPO / "examples" / "clip.mp4"
COND = tiny_conditions(5, clip_frames=40, sync_tokens=120, text_tokens=77)
LENGTHS = SequenceLengths(40, 125)  # 5 s
# sha256 (first 16 hex digits) of the final latents, by the code before the Denoiser refactor
# (`7960923`): two samples guided at 4.5 over 4 steps, and one unguided over 3 steps.
DIGESTS = {
    "fp32": ("ce1f84c8cdde8342", "1350d056e9c7933c"),
    "bf16": ("39572f148d4bb605", "b5f3c1dbc6c04f18"),
    "fp8": ("be08ea4f4278d0e6", "683a029841369db1"),
    "fp8+calibrated": ("6cc5013b78c8ff42", "96761120aa539f1f"),
    "int8-weight": ("3b0508813a532681", "ca215b05b3f40075"),
    "int8": ("2f0b2b27d15e52ee", "e01c6cd5b64b41fa"),
}
VIDEO_DIGEST, TEXT_DIGEST = "9358158c4f1af070", "3f4f5b80ddce0705"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _pipeline(runtime: RuntimeConfig) -> FoleyPipeline:
    return FoleyPipeline(random_models().place(runtime), runtime)


@pytest.fixture(scope="module")
def calib_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ranges recorded over one guided eager run, written and read back as a file is."""
    pipe = _pipeline(RuntimeConfig())
    with torch.inference_mode(), \
            ActivationRecorder(quantizable_modules(pipe.models.dit)) as rec:
        pipe.denoise([Encoded(None, GenerationRequest(steps=3, seed=1), COND, LENGTHS, 5.0)])
    path = tmp_path_factory.mktemp("calib") / "calib.safetensors"
    return save_calibration(rec.calibration(AMAX_FLOOR, {}), path)


@pytest.mark.parametrize("mode", list(DIGESTS))
@torch.inference_mode()
def test_exact_modes_keep_their_numbers(mode: str, calib_path: Path) -> None:
    precision, _, calibrated = mode.partition("+")
    fields: dict = {"dtype": torch.bfloat16} if precision == "bf16" else {}
    if precision in ("fp8", "int8", "int8-weight"):
        fields["precision"] = precision
    if calibrated or precision == "int8":
        fields["calibration"] = read_calibration(calib_path)
    pipe = _pipeline(RuntimeConfig(**fields))
    guided = GenerationRequest(steps=4, guidance=4.5, samples=2, seed=3)
    plain = GenerationRequest(steps=3, guidance=1.0, samples=1, seed=4)
    (a,) = pipe.denoise([Encoded(None, guided, COND, LENGTHS, 5.0)])
    (b,) = pipe.denoise([Encoded(None, plain, COND, LENGTHS, 5.0)])
    assert (_digest(a), _digest(b)) == DIGESTS[mode]


@torch.inference_mode()
def test_video_and_text_generations_keep_their_numbers() -> None:
    pipe = _pipeline(RuntimeConfig())
    video = pipe.generate(CLIP, GenerationRequest(prompt="a ball", steps=3, seed=9, samples=2))
    text = pipe.generate(None, GenerationRequest(prompt="rain", duration=3.3, steps=3, seed=9))
    assert video.latents is not None and text.latents is not None
    assert (_digest(video.latents), _digest(text.latents)) == (VIDEO_DIGEST, TEXT_DIGEST)
    assert text.audio.shape[-1] == round(3.3 * 48000) and video.audio.shape[0] == 2


def _close(got: torch.Tensor, want: torch.Tensor, cosine: float, max_abs: float | None) -> None:
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(),
                                                want.double().flatten(), 0)
    assert cos >= cosine
    if max_abs is not None:
        assert (got - want).abs().max() <= max_abs


def _requests_together_and_alone(runtime: RuntimeConfig, cosine: float,
                                 max_abs: float | None) -> None:
    """Five requests: two lengths, several seeds, prompts (conditions), sample counts and
    guidance scales (one unguided), at most 4 rows per forward (so one length needs two
    forwards); each result is its one-at-a-time result, drawn from its own seed."""
    pipe = _pipeline(runtime)
    short = SequenceLengths.of_duration(3.0)
    short_cond = tiny_conditions(6, clip_frames=short.clip_frames,
                                 sync_tokens=short.sync_tokens, text_tokens=77)
    encoded = [Encoded(None, GenerationRequest(steps=3, seed=1), COND, LENGTHS, 5.0),
               Encoded(None, GenerationRequest(steps=3, seed=2, samples=2), COND, LENGTHS, 5.0),
               Encoded(None, GenerationRequest(steps=3, seed=1), short_cond, short, 3.0),
               Encoded(None, GenerationRequest(steps=3, seed=3, guidance=1.0), COND, LENGTHS,
                       5.0),
               Encoded(None, GenerationRequest(steps=3, seed=4, guidance=3.0), short_cond,
                       short, 3.0)]
    together = pipe.denoise(encoded, max_rows=4)
    for e, got in zip(encoded, together, strict=True):
        (alone,) = pipe.denoise([e])
        _close(got.cpu(), alone.cpu(), cosine, max_abs)
    # Seeds stay per request: the same conditions and settings, another seed, another sound.
    assert not torch.allclose(together[0][0], together[1][0])


@torch.inference_mode()
def test_requests_denoised_together_equal_each_alone() -> None:
    _requests_together_and_alone(RuntimeConfig(), cosine=0.999999, max_abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.inference_mode()
def test_requests_denoised_together_equal_each_alone_in_bf16_on_cuda() -> None:
    """bf16 GEMMs of other shapes round differently: close, not equal."""
    runtime = RuntimeConfig(device=torch.device("cuda"), dtype=torch.bfloat16)
    _requests_together_and_alone(runtime, cosine=0.9999, max_abs=None)
