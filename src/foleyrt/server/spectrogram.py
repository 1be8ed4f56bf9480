"""A spectrogram picture of one generated track, for the UI: a glance shows whether the
sound has onsets where the picture has events, before anyone presses play.

Log-magnitude STFT (torch) on a logarithmic frequency axis (as hearing spreads it: a linear
axis squeezes everything below 3 kHz into the bottom rows) -> 8-bit levels over the top
`range_db` decibels -> a palette image (Pillow). Low frequencies at the bottom.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

# Dark blue -> violet -> orange -> pale yellow: quiet reads as background, loud stands out.
_PALETTE_STOPS = np.array(
    [[8, 8, 32], [64, 16, 112], [168, 40, 110], [240, 110, 50], [252, 236, 164]], np.float32
)
F_MIN = 40.0


def _palette() -> list[int]:
    """256 RGB entries interpolated between the stops, flattened as Pillow wants them."""
    at = np.linspace(0, len(_PALETTE_STOPS) - 1, 256)
    channels = [np.interp(at, np.arange(len(_PALETTE_STOPS)), _PALETTE_STOPS[:, c])
                for c in range(3)]
    return np.stack(channels, axis=1).round().astype(np.uint8).ravel().tolist()


def _log_frequency_rows(db: Tensor, sample_rate: int, rows: int) -> Tensor:
    """Resample `[bins, time]` (bins linear 0..Nyquist) to `rows` log-spaced frequencies."""
    nyquist = sample_rate / 2
    freqs = torch.logspace(math.log10(F_MIN), math.log10(nyquist), rows, dtype=torch.float64)
    pos = (freqs / nyquist * (db.shape[0] - 1)).float()
    lo = pos.floor().long().clamp(max=db.shape[0] - 2)
    frac = (pos - lo)[:, None]
    return db[lo] * (1 - frac) + db[lo + 1] * frac


def spectrogram_levels(
    track: Tensor, sample_rate: int, *, rows: int = 240, n_fft: int = 2048, hop: int = 256,
    range_db: float = 80.0,
) -> np.ndarray:
    """`[channels, n]` audio -> `[rows, frames]` uint8 levels, 255 the loudest, low
    frequencies last (the bottom of a picture)."""
    mono = track.float().mean(dim=0)
    if mono.numel() < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.numel()))
    spec = torch.stft(mono, n_fft, hop_length=hop, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = _log_frequency_rows(20 * torch.log10(spec.clamp_min(1e-10)), sample_rate, rows)
    db = db.clamp_min(db.max() - range_db)
    levels = (db - db.min()) / (db.max() - db.min()).clamp_min(1e-6) * 255
    return levels.flip(0).round().to(torch.uint8).numpy()


def spectrogram_image(track: Tensor, sample_rate: int, *, width: int = 800,
                      height: int = 240) -> Image.Image:
    image = Image.fromarray(spectrogram_levels(track, sample_rate, rows=height), mode="L")
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    image.putpalette(_palette())
    return image.convert("RGB")


def write_spectrogram(track: Tensor, sample_rate: int, path: Path) -> Path:
    spectrogram_image(track, sample_rate).save(path, format="PNG", optimize=True)
    return path
