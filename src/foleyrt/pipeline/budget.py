"""How many transformer rows one forward may hold: what the GPU's free memory allows.

Rows share a forward when their shapes match (several clips of one length, the windows of a
long clip); more rows per forward keep the GPU busier, up to a point, and cost activation
memory in proportion. The bytes one row needs are measured, not guessed: one eager forward of
a single row at the request's lengths, its peak allocation above what was allocated before
(cached per shape). The budget is the free memory, less a reserve, over that, capped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from foleyrt.lengths import SequenceLengths
from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.conditions import ConditionRows

DEFAULT_MAX_ROWS = 32  # 16 guided clips: past this, throughput barely grows (docs/benchmarks.md)
RESERVE_FRACTION = 0.15  # of the device's memory, kept for the VAE, encoders and fragmentation


@dataclass
class RowBudget:
    """Rows per forward for a model on a device. `max_rows` caps every answer (also off CUDA,
    where it is the answer); `rows(lengths, text_tokens)` measures once per shape."""

    model: FoleyDiT
    max_rows: int = DEFAULT_MAX_ROWS
    reserve_fraction: float = RESERVE_FRACTION
    _bytes_per_row: dict[tuple[int, int, int, int], int] = field(default_factory=dict)

    def rows(self, lengths: SequenceLengths, text_tokens: int) -> int:
        device = next(self.model.parameters()).device
        if device.type != "cuda":
            return self.max_rows
        per_row = self.bytes_per_row(lengths, text_tokens)
        free, total = torch.cuda.mem_get_info(device)
        usable = free - self.reserve_fraction * total
        return max(1, min(self.max_rows, int(usable // max(per_row, 1))))

    @torch.inference_mode()
    def bytes_per_row(self, lengths: SequenceLengths, text_tokens: int) -> int:
        """Peak activation bytes of one row's forward (eager: an upper bound for the compiled
        forward, whose kernels fuse more)."""
        key = (lengths.latent_frames, lengths.clip_frames, lengths.sync_tokens, text_tokens)
        if key not in self._bytes_per_row:
            self._bytes_per_row[key] = self._measure(lengths, text_tokens)
        return self._bytes_per_row[key]

    def _measure(self, lengths: SequenceLengths, text_tokens: int) -> int:
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
        dit.velocity(x, torch.full((1,), 500.0, device=device), prepared)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
