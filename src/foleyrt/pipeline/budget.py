"""How many transformer rows one forward may hold: what the GPU's free memory allows.

Rows share a forward when their shapes match (several clips of one length, the windows of a
long clip); more rows per forward keep the GPU busier, up to a point, and cost activation
memory in proportion. The bytes one row needs are measured, not guessed: one eager forward of
a single row at the request's lengths, its peak allocation above what was allocated before
(cached per shape). The budget is the free memory (what PyTorch's allocator caches unused
included), less a reserve, over that, capped.

The windows of a long clip are held to more than the free memory: their denoising keeps
within `LONG_MEMORY_FACTOR` of a guided 15 s clip's (the resident weights plus that clip's
rows), however long the clip. Their rows per forward are chosen under that ceiling, and
when keeping every forward's prepared conditions across the steps would pass it (they grow
with the clip), forwards are prepared again at each step instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from foleyrt.lengths import SequenceLengths
from foleyrt.models.dit import FoleyDiT
from foleyrt.request import MAX_SECONDS
from foleyrt.sampling.conditions import ConditionRows

DEFAULT_MAX_ROWS = 32  # 16 guided clips: past this, throughput barely grows (docs/benchmarks.md)
RESERVE_FRACTION = 0.15  # of the device's memory, kept for the VAE, encoders and fragmentation
LONG_MEMORY_FACTOR = 1.2  # a long clip's denoising peak, over a 15 s clip's


@dataclass(frozen=True)
class RowCost:
    """What one row of a shape costs on the GPU: its prepared conditions (kept while its
    forward is prepared) and its peak over a whole forward (those included)."""

    prepared: int
    peak: int


@dataclass(frozen=True)
class WindowRows:
    """How the windows of long clips go through the GPU: rows per forward, and whether every
    forward stays prepared across the steps (`denoise`'s `hold_prepared`)."""

    max_rows: int
    hold_prepared: bool


@dataclass
class RowBudget:
    """Rows per forward for a model on a device. `max_rows` caps every answer (also off CUDA,
    where it is the answer); `rows(lengths, text_tokens)` measures once per shape."""

    model: FoleyDiT
    max_rows: int = DEFAULT_MAX_ROWS
    reserve_fraction: float = RESERVE_FRACTION
    _costs: dict[tuple[int, int, int, int], RowCost] = field(default_factory=dict)

    def rows(self, lengths: SequenceLengths, text_tokens: int) -> int:
        device = next(self.model.parameters()).device
        if device.type != "cuda":
            return self.max_rows
        per_row = self.bytes_per_row(lengths, text_tokens)
        free, total = torch.cuda.mem_get_info(device)
        # What PyTorch's allocator holds unused counts as free: it releases its cache rather
        # than fail an allocation, and a new CUDA graph reuses its shared pool's free blocks.
        # The driver's figure alone falls as the cache grows, and the groups would with it.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        usable = free + cached - self.reserve_fraction * total
        return max(1, min(self.max_rows, int(usable // max(per_row, 1))))

    def windows(self, lengths: SequenceLengths, text_tokens: int, rows_per_window: int,
                total_rows: int) -> WindowRows:
        """Forwards for `total_rows` rows of windows of `lengths` (`rows_per_window` each),
        held to a 15 s clip's denoising memory (see `window_rows`)."""
        device = next(self.model.parameters()).device
        if device.type != "cuda":
            return WindowRows(self.max_rows, hold_prepared=True)
        return window_rows(torch.cuda.memory_allocated(device), self.cost(lengths, text_tokens),
                           self.cost(SequenceLengths.of_duration(MAX_SECONDS), text_tokens),
                           rows_per_window, total_rows, self.rows(lengths, text_tokens))

    def bytes_per_row(self, lengths: SequenceLengths, text_tokens: int) -> int:
        """Peak bytes of one row's forward (eager: an upper bound for the compiled forward,
        whose kernels fuse more)."""
        return self.cost(lengths, text_tokens).peak

    @torch.inference_mode()
    def cost(self, lengths: SequenceLengths, text_tokens: int) -> RowCost:
        """One row's `RowCost` at these lengths, measured once per shape."""
        key = (lengths.latent_frames, lengths.clip_frames, lengths.sync_tokens, text_tokens)
        if key not in self._costs:
            self._costs[key] = self._measure(lengths, text_tokens)
        return self._costs[key]

    def _measure(self, lengths: SequenceLengths, text_tokens: int) -> RowCost:
        dit, cfg = self.model, self.model.config
        device = next(dit.parameters()).device
        rows = ConditionRows(dit.empty_clip(1, lengths.clip_frames).float(),
                             torch.zeros(1, text_tokens, cfg.text_dim, device=device),
                             dit.empty_sync(1, lengths.sync_tokens).float(),
                             lengths.latent_frames)
        x = torch.zeros(1, cfg.audio_vae_latent_dim, lengths.latent_frames, device=device)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        prepared = dit.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
        held = torch.cuda.memory_allocated(device) - before
        dit.velocity(x, torch.full((1,), 500.0, device=device), prepared)
        torch.cuda.synchronize(device)
        return RowCost(held, torch.cuda.max_memory_allocated(device) - before)


def window_rows(resident: int, window: RowCost, clip: RowCost, rows_per_window: int,
                total_rows: int, free_rows: int) -> WindowRows:
    """Rows per forward for `total_rows` rows of windows costing `window` each, within
    `LONG_MEMORY_FACTOR` of the denoising peak of a 15 s clip of `rows_per_window` rows
    costing `clip` each (`resident`: the bytes allocated besides), and at most `free_rows`
    (what the free memory allows). Every forward stays prepared when all rows' conditions fit
    beside the forward's activations; else forwards are prepared per step. A window's rows
    are never split: at least `rows_per_window`."""
    ceiling = LONG_MEMORY_FACTOR * (resident + rows_per_window * clip.peak) - resident
    active = max(window.peak - window.prepared, 1)  # a row's bytes beyond its conditions
    rows = int((ceiling - total_rows * window.prepared) // active)
    if rows >= rows_per_window:
        return WindowRows(max(rows_per_window, min(rows, free_rows)), hold_prepared=True)
    fresh = int(ceiling // max(window.peak, 1))
    return WindowRows(max(rows_per_window, min(fresh, free_rows)), hold_prepared=False)
