"""What happens to one item, or one group of items, whichever executor runs it (the local
threads or Ray's workers): an item starts (its seed drawn, its outputs checked before any
work), is encoded, is denoised with the other items of its group, is finished (VAE) and
written. Each stage records its failures on the items it was working for.

Failures: `FoleyError` (bad clip, unwritable output) fails the item; CUDA out-of-memory fails
the item(s) of that stage (a whole group when denoising) with a clear message and empties the
CUDA cache, since the next group may fit. Any other exception is a bug: it is recorded as the
items' error (the report is written on the way out) and re-raised with its traceback, because
the same bug would most likely fail every remaining item and burn hours of GPU time producing
nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from foleyrt.batch.decoders import DecodePool
from foleyrt.batch.plan import BatchSettings, ItemResult, Status
from foleyrt.errors import FoleyError
from foleyrt.media.audio import check_output_path
from foleyrt.media.video import (
    DecodedClip,
    VideoLimits,
    assemble_clip,
    iter_ticks,
    probe_video,
)
from foleyrt.pipeline.budget import DEFAULT_MAX_ROWS
from foleyrt.pipeline.pipeline import Encoded, FoleyPipeline, FoleyResult, release_cuda_memory
from foleyrt.request import GenerationRequest

T = TypeVar("T")

OOM_ONE = ("the GPU ran out of memory on this clip; try fewer --samples, a shorter clip, or a "
           "smaller --size")
OOM_GROUP = ("the GPU ran out of memory on a group of {n} clips; try a smaller --batch-rows, "
             "fewer --samples or a smaller --size")


@dataclass
class Work:
    """An item on its way through the stages: its report row, the request it runs with (its
    seed drawn), whether its existing outputs are its own partial ones to replace, and what
    the stages made of it so far."""

    result: ItemResult
    request: GenerationRequest
    replace: bool
    started: float  # time.time() when it started (stages may run on other machines)
    encoded: Encoded | None = None

    @property
    def rows(self) -> int:
        return self.request.rows

    @property
    def shape(self) -> tuple:
        """Items of one shape share forwards, their rows stacked into one batch: the same
        lengths (prompts of other token counts share it too, their text rows padded and
        masked: `ConditionRows.cat`)."""
        assert self.encoded is not None
        return (self.encoded.lengths, self.rows)


def items_per_group(request: GenerationRequest, batch_rows: int | None) -> int:
    """The most items a group can hold: `batch_rows` (None: the row budget's cap) over an
    item's rows, at least one."""
    return max(1, (batch_rows or DEFAULT_MAX_ROWS) // request.rows)


def start(result: ItemResult, settings: BatchSettings) -> Work | None:
    """The item's seed (drawn now when it has none) and its outputs checked: an unwritable
    output must not cost a generation. None when it failed (recorded)."""
    job = result.job
    result.seed = job.seed if job.seed is not None else secrets.randbelow(2**31)
    # Some outputs exist only if an earlier run stopped midway: they are this item's own.
    replace = settings.overwrite or bool(job.existing_outputs())
    work = Work(result, job.item.request(settings.request).with_seed(result.seed), replace,
                time.time())

    def check() -> Work:
        for path in job.outputs:
            check_output_path(path, overwrite=replace, inputs=[job.item.video])
        return work

    return guarded([work], check)


def decode(work: Work, pool: DecodePool | None = None) -> DecodedClip | Path | None:
    """`decode_source` for the item, in `pool` when given (a decoding process); None when it
    failed (recorded)."""
    args = (work.result.job.item.video, work.request)
    return guarded([work], lambda: decode_source(*args) if pool is None
                   else pool.run(decode_source, *args))


def decode_source(path: Path, request: GenerationRequest,
                  limits: VideoLimits | None = None) -> DecodedClip | Path:
    """The clip at `path` decoded and resized on the CPU (within `limits`, a server's), for an
    encoder in another process or on another machine; `path` itself when the clip is longer
    than one pass: the encoder streams such a clip in windows (a long clip's frames at once
    would not fit in memory, and a `DecodedClip` is one pass)."""
    info = probe_video(path, limits, max_seconds=request.max_duration)
    if info.takes_windows(request.windowing):
        return path
    return assemble_clip(info, iter_ticks(info.path, limits=limits))  # `decode_clip`, probed


def encode(pipe: FoleyPipeline, work: Work, clip: DecodedClip | Path | None = None, *,
           wait: bool = True) -> bool:
    """Compute the item's features from `clip` (decoded elsewhere, or a path to decode here;
    None: the item's own video); `wait=False`: queue them (see `FoleyPipeline.encode`)."""
    source = clip if clip is not None else work.result.job.item.video
    work.encoded = guarded([work], lambda: pipe.encode(source, work.request, wait=wait))
    return work.encoded is not None


def denoise(pipe: FoleyPipeline, group: Sequence[Work], max_rows: int | None
            ) -> list[Tensor] | None:
    """The group's items denoised together (`max_rows` per forward; None: the budget). Their
    features are checked first (`Encoded.checked`), each item keeping the checked ones: what
    a pending check held for a fallback (the decoded frames) goes back now."""

    def run() -> list[Tensor]:
        encoded = []
        for work in group:
            assert work.encoded is not None
            work.encoded = work.encoded.checked()
            encoded.append(work.encoded)
        return pipe.denoise(encoded, max_rows=max_rows)

    message = OOM_ONE if len(group) == 1 else OOM_GROUP.format(n=len(group))
    return guarded(group, run, out_of_memory=message)


def finish(pipe: FoleyPipeline, work: Work, latents: Tensor) -> FoleyResult | None:
    """VAE decode: the item's audio, fitted to its clip, on the CPU."""
    assert work.encoded is not None
    encoded = work.encoded
    return guarded([work], lambda: pipe.finish(encoded, latents))


def write(work: Work, result: FoleyResult) -> None:
    """Every output of the item, each atomically; the item is then done."""
    job = work.result.job
    written = guarded([work], lambda: [result.save(base, overwrite=work.replace)
                                       for base in job.bases])
    if written is not None:
        work.result.status = Status.DONE
        work.result.seconds = round(time.time() - work.started, 3)


def row_limit(pipe: FoleyPipeline, work: Work, batch_rows: int | None) -> int:
    """Rows per forward for this item's shape: `batch_rows`, or the GPU's budget."""
    assert work.encoded is not None
    return pipe.max_rows([work.encoded], batch_rows)


class Grouper:
    """Encoded items by shape, each shape's group open until it holds as many items as fit
    `limit(work)` rows, rounded down to a power of two.

    Every group goes as a power of two of its items, whether it filled, waited (`ripe`) or
    is what the input's end left (`drain`): each new group size is a new shape for the
    compiled blocks and a new CUDA graph to capture (seconds, with the GPU idle), and powers
    of two keep them to a handful per clip length, each met early and reused, whatever the
    budget and the input's pace. Batching gains little past 8 clips (docs/benchmarks.md), so
    rounding a budget of 11 down to 8 costs little."""

    def __init__(self, limit: Callable[[Work], int]) -> None:
        self.limit = limit
        self.open: dict[tuple, tuple[list[Work], int, float]] = {}  # items, row limit, opened

    def add(self, work: Work) -> tuple[list[Work], int] | None:
        """Add `work`; its group with its row limit once it is full."""
        key = work.shape
        if key not in self.open:
            self.open[key] = ([], self.limit(work), time.monotonic())
        group, rows, _ = self.open[key]
        group.append(work)
        return self.close(key) if len(group) >= _power_of_two(rows // work.rows) else None

    def ripe(self, wait_s: float) -> tuple[list[Work], int] | None:
        """The fullest group open for at least `wait_s`, if any, cut to a power of two items
        (the rest stays open)."""
        now = time.monotonic()
        waited = [key for key, (_, _, opened) in self.open.items() if now - opened >= wait_s]
        if not waited:
            return None
        key = max(waited, key=lambda k: len(self.open[k][0]))
        return self.take(key, now)

    def drain(self) -> Iterator[tuple[list[Work], int]]:
        """Every open group, in pieces of powers of two."""
        while self.open:
            yield self.take(next(iter(self.open)), time.monotonic())

    def take(self, key: tuple, now: float) -> tuple[list[Work], int]:
        """The first power of two of the group's items, in input order; the rest stays open
        (and waits afresh from `now`)."""
        group, rows, _ = self.open[key]
        count = _power_of_two(len(group))
        if count == len(group):
            return self.close(key)
        group.sort(key=lambda w: w.result.job.index)
        self.open[key] = (group[count:], rows, now)
        return group[:count], rows

    def close(self, key: tuple) -> tuple[list[Work], int]:
        group, rows, _ = self.open.pop(key)
        return sorted(group, key=lambda w: w.result.job.index), rows


def _power_of_two(n: int) -> int:
    """The largest power of two <= n (1 for n < 2)."""
    return 1 << (max(n, 1).bit_length() - 1)


def guarded(works: Sequence[Work], stage: Callable[[], T], out_of_memory: str = OOM_ONE
            ) -> T | None:
    """`stage()`, or None when it failed for `works` (recorded on each, see the module's
    docstring); a bug is recorded, then re-raised."""
    oom = False
    try:
        return stage()
    except torch.cuda.OutOfMemoryError:
        oom = True
        fail(works, out_of_memory)
    except FoleyError as exc:
        fail(works, str(exc))
    except Exception as exc:
        fail(works, f"internal error ({type(exc).__name__}: {exc})")
        raise
    # After the `except` block: until then the traceback's frames hold the stage's tensors.
    if oom:
        release_cuda_memory()
    return None


def fail(works: Sequence[Work], message: str) -> None:
    """Record a failure whose message names each clip, whatever raised it."""
    for work in works:
        result = work.result
        video = str(result.job.item.video)
        result.status = Status.FAILED
        result.error = message if video in message else f"{video}: {message}"
        result.seconds = round(time.time() - work.started, 3)
