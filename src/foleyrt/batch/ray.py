"""The Ray executor: `foleyrt batch --executor ray`, the same stages on Ray Data.

    items (the driver: seeds, output checks) -> decode: CPU tasks (`map`)
        -> generate: GPU actors (`map_batches`), each holding the models: features, grouped
           denoising, VAE -> write: CPU tasks (`map`) -> the driver: report, progress

Ray Data streams the rows through the stages with its own backpressure, so a library of any
size holds a few blocks per stage at a time. Each actor groups the items of a batch by shape
and denoises each group together, as the local executor does (`stages.Grouper`), so the same
inputs and seeds give the same outputs, file for file, on either executor.

On a cluster every node needs foleyrt installed (`pip install 'foleyrt[ray]'`), and the inputs,
OUTDIR and `--model` (a folder, or a hub id each node resolves through its Hugging Face cache)
at the same paths on every node: a shared file system. Each worker builds its runtime from the
command's flags on the GPU Ray gives it.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.batch import stages
from foleyrt.batch.plan import BatchReport, BatchSettings, ItemResult, Status
from foleyrt.batch.stages import Work
from foleyrt.errors import UsageError
from foleyrt.media.video import DecodedClip
from foleyrt.pipeline.pipeline import FoleyPipeline, FoleyResult

log = logging.getLogger(__name__)

# Memory a decoding task holds: a 15 s clip's resized frames at both rates (~150 MB), the
# source frames in flight, FFmpeg's buffers. Being a resource the generation actor does not
# ask for, it also keeps Ray from fusing decoding into the actor (it fuses stages whose
# resources agree), which would put decoding back on the GPU's critical path.
DECODE_MEMORY = 1 << 30


@dataclass(frozen=True)
class RayOptions:
    """`address`: an existing cluster (None: a local Ray started for the run);
    `gpus_per_worker` (None: 1 where the cluster has GPUs, else 0: CPU workers);
    `num_workers` (None: as many as the GPUs allow, or 1); `batch_rows` as for the local
    executor (None: each worker's row budget)."""

    address: str | None = None
    gpus_per_worker: float | None = None
    num_workers: int | None = None
    batch_rows: int | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker}")
        if self.num_workers is not None and self.num_workers < 1:
            raise UsageError(f"--num-workers must be at least 1, got {self.num_workers}")
        if self.batch_rows is not None and self.batch_rows < 1:
            raise UsageError(f"--batch-rows must be at least 1, got {self.batch_rows}")


def require_ray() -> None:
    """One line, not an ImportError, when the extra is not installed."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'foleyrt[ray]'") from None


def run_ray(
    model: str, size: str, runtime: dict[str, Any], report: BatchReport,
    settings: BatchSettings, options: RayOptions, *,
    on_item: Callable[[ItemResult], None] | None = None,
) -> None:
    """Generate every pending item of `report` on Ray, recording each outcome as it comes back
    and calling `on_item` with it. `runtime`: `RuntimeConfig.build`'s arguments, built by
    each worker on its own device. A bug in a stage is recorded, then raised here."""
    import ray

    works = []
    for result in report.pending:
        work = stages.start(result, settings)
        if work is not None:
            works.append(work)
        elif _ended(result, settings, on_item):
            return
    if not works:
        return
    with _cluster(options.address):
        gpus = _gpus_per_worker(options, ray.cluster_resources().get("GPU", 0.0))
        workers = options.num_workers or _default_workers(gpus)
        device = _worker_device(runtime["device"], gpus)
        per_batch = stages.items_per_group(settings.request, options.batch_rows)
        dataset = (
            ray.data.from_items([{"work": _pack(w)} for w in works])
            .map(_decode, num_cpus=1, memory=DECODE_MEMORY)
            .map_batches(_Generator, batch_size=per_batch, num_cpus=1, num_gpus=gpus,
                         compute=ray.data.ActorPoolStrategy(size=workers),
                         batch_format="numpy",
                         fn_constructor_kwargs={"model": model, "size": size,
                                                "runtime": {**runtime, "device": device},
                                                "batch_rows": options.batch_rows})
            .map(_write, num_cpus=1)
        )
        for row in dataset.iter_rows():
            back = _unpack(row["work"])
            result = report.items[back.result.job.index]
            for name in ("status", "error", "seconds", "seed"):
                setattr(result, name, getattr(back.result, name))
            if row["bug"]:
                raise RuntimeError(f"{result.line()}\n{row['bug']}")
            if result.status is not Status.NOT_RUN and _ended(result, settings, on_item):
                return


def _ended(result: ItemResult, settings: BatchSettings,
           on_item: Callable[[ItemResult], None] | None) -> bool:
    """Tell `on_item`; True when the run stops here (a failure under fail_fast)."""
    if on_item is not None:
        on_item(result)
    return settings.fail_fast and result.status is Status.FAILED


@contextmanager
def _cluster(address: str | None) -> Iterator[None]:
    """Connected to Ray for the run: a cluster already connected to (a caller's), the one at
    `address`, or a local one started now and stopped after."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _gpus_per_worker(options: RayOptions, cluster_gpus: float) -> float:
    if options.gpus_per_worker is None:
        return 1.0 if cluster_gpus > 0 else 0.0
    if options.gpus_per_worker > cluster_gpus:
        raise UsageError(f"--gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has "
                         f"{cluster_gpus:g} GPU(s); use 0 for CPU workers")
    return options.gpus_per_worker


def _default_workers(gpus_per_worker: float) -> int:
    import ray

    if gpus_per_worker == 0:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0.0) // gpus_per_worker))


def _worker_device(device: str, gpus_per_worker: float) -> str:
    """Each worker computes on the GPU Ray gives it, or on its CPU without one."""
    wanted = "cuda" if gpus_per_worker > 0 else "cpu"
    if device not in ("auto", wanted):
        raise UsageError(f"--device {device}: with --executor ray each worker uses "
                         f"{'the GPU Ray gives it' if wanted == 'cuda' else 'its CPU'}; "
                         "leave --device out")
    return wanted


# -- what runs on the cluster ----------------------------------------------------------------


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A CPU task: the clip decoded into both frame rates, resized on the CPU (a clip longer
    than one pass: its path, for the GPU worker to stream in windows; see `stages.decode`)."""
    work = _unpack(row["work"])
    clip, bug = _carrying_bug(lambda: stages.decode(work))
    return {"work": _pack(work), "clip": clip, "bug": bug}


class _Generator:
    """A GPU actor: the models, loaded once; per batch, features, grouped denoising and the
    VAE (`Grouper`, as the local executor groups)."""

    def __init__(self, model: str, size: str, runtime: dict[str, Any],
                 batch_rows: int | None) -> None:
        self.pipe = FoleyPipeline.from_pretrained(
            model, size, RuntimeConfig.build(**runtime)).compile_encoders()
        self.batch_rows = batch_rows

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        works = [_unpack(w) for w in batch["work"]]
        bugs = {id(w): str(bug) for w, bug in zip(works, batch["bug"], strict=True)}
        results: dict[int, Any] = {}
        grouper = stages.Grouper(
            lambda work: stages.row_limit(self.pipe, work, self.batch_rows))

        def generate(group: list[Work], max_rows: int) -> None:
            latents = stages.denoise(self.pipe, group, max_rows)
            for work, latent in zip(group, latents or [], strict=False):
                results[id(work)] = stages.finish(self.pipe, work, latent)

        def step(works: list[Work], stage: Callable[[], Any]) -> Any:
            """`stage()`, its bug carried by `works`' rows."""
            value, bug = _carrying_bug(stage)
            for work in works:
                bugs[id(work)] = bugs[id(work)] or bug
            return value

        with torch.inference_mode():
            for work, clip in zip(works, batch["clip"], strict=True):
                if not isinstance(clip, DecodedClip | Path) or any(bugs.values()):
                    continue  # failed to decode, or a bug ends the run: the rest stays undone
                # Queued, not waited for: `stages.denoise` checks a group's features once.
                if step([work], partial(stages.encode, self.pipe, work, clip, wait=False)):
                    closed = step([work], partial(grouper.add, work))
                    if closed is not None:
                        step(closed[0], partial(generate, *closed))
            for closed in grouper.drain():
                if not any(bugs.values()):
                    step(closed[0], partial(generate, *closed))
        for work in works:
            work.encoded = None  # GPU tensors: they stay here
        return {"work": [_pack(w) for w in works],
                "result": [results.get(id(w)) for w in works],
                "bug": [bugs[id(w)] for w in works]}


def _write(row: dict[str, Any]) -> dict[str, Any]:
    """A CPU task: the item's outputs, each written atomically (MP4s muxed here)."""
    work, bug, result = _unpack(row["work"]), row["bug"], row["result"]
    if not bug and isinstance(result, FoleyResult):
        _, bug = _carrying_bug(lambda: stages.write(work, result))
    return {"work": _pack(work), "bug": bug}


def _carrying_bug(stage: Callable[[], Any]) -> tuple[Any, str]:
    """`stage()`'s value and "", or None and its bug's traceback (already recorded on its
    items by `stages.guarded`) for the driver to raise: a worker's exception would end the
    dataset without saying which item met it. ("" rather than None: a column of nulls
    reaches the next stage as NaNs.)"""
    try:
        return stage(), ""
    except Exception:  # noqa: BLE001 - the driver raises it, naming the item
        return None, traceback.format_exc()


def _pack(work: Work) -> bytes:
    """An item's state as a plain bytes column, which Arrow stores as it is."""
    return pickle.dumps(work)


def _unpack(data: bytes) -> Work:
    work = pickle.loads(data)
    assert isinstance(work, Work)
    return work
