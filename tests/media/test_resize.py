"""The tensor-op resizes (`foleyrt.media.resize`) against the libraries the release uses:
byte-for-byte equal, on shapes that exercise both pass orders, up- and down-scaling, an
unchanged axis and wide antialiasing windows. They run on the CPU here; the same integer
ops give the same bytes on a GPU (`foleyrt verify --device cuda` checks fixture E1 there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from foleyrt.media.resize import pil_bilinear_resize, torch_bicubic_aa_resize
from foleyrt.media.video import FramePrep, assemble_clip, iter_ticks, probe_video

from .conftest import Media

SHAPES = [  # (in_h, in_w, out_h, out_w)
    (72, 128, 51, 51),  # landscape down: width pass first
    (300, 120, 51, 51),  # portrait down: Pillow 13 runs the height pass first
    (37, 23, 64, 48),  # up on both axes
    (64, 200, 64, 17),  # one axis unchanged
    (500, 41, 9, 40),  # wide window (55x) on one axis, nearly unchanged on the other
]


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """Noise on a smooth ramp: values near 0 and 255 (clamping) and fine detail (rounding)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-40, 300, w)[None, :, None] + np.linspace(0, 60, h)[:, None, None]
    return np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
def test_bit_exact_with_pillow_and_pytorch(shape: tuple[int, int, int, int]) -> None:
    h, w, out_h, out_w = shape
    rgb = _image(h, w, seed=h * w)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    pillow = np.array(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BILINEAR))
    assert np.array_equal(pil_bilinear_resize(chw, (out_h, out_w)).permute(1, 2, 0).numpy(),
                          pillow)
    native = torch.nn.functional.interpolate(chw[None], size=(out_h, out_w), mode="bicubic",
                                             antialias=True, align_corners=False)[0]
    assert torch.equal(torch_bicubic_aa_resize(chw, (out_h, out_w)), native)


def test_clip_pixels_same_on_either_path(media: Media) -> None:
    """The whole preprocessing of a clip through the tensor-op path (what a GPU runs) equals
    the CPU threads' Pillow/native path."""
    path = media["h264_2s_30_portrait"]
    info = probe_video(path)
    cpu = assemble_clip(info, iter_ticks(path))
    ops = assemble_clip(info, iter_ticks(path),
                        prep=FramePrep(torch.device("cpu"), tensor_ops=True))
    assert torch.equal(cpu.siglip_u8, ops.siglip_u8) and torch.equal(cpu.sync_u8, ops.sync_u8)
    assert cpu.sync_source_index == ops.sync_source_index
