"""CUDA graphs over one whole velocity evaluation.

One forward of the XXL model launches ~2,000 kernels; at 8 s that is more launch time than
math. A captured graph replays them with no Python and no launch gaps. Graphs are keyed by
the shapes of a request (rows, audio/visual/text lengths, dtype); the step-invariant
conditions live in static buffers owned by the graph, so the next request of the same shape
copies its conditions in (a few MB) instead of capturing again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from foleyrt.models.dit import FoleyDiT, PreparedConditions, TimeConditioning
from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.denoiser import Velocity
from foleyrt.sampling.schedule import Schedule

log = logging.getLogger(__name__)

# Distinct request shapes kept captured: a batch run's group sizes (powers of two, 1-16 clips)
# of a length or two. The graphs share one memory pool, so each adds its static buffers only.
MAX_GRAPHS = 8
WARMUP_ITERS = 2


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor inside a (nested) dataclass / list / tuple, in a fixed order."""
    if isinstance(obj, Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _clone(obj: Any) -> Any:
    """Deep copy of the tensors of a (nested) dataclass, structure kept."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _clone(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    if isinstance(obj, list):
        return [_clone(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(item) for item in obj)
    return obj


def capture(run: Callable[[], Any], pool: Any = None,
            warmup: int = WARMUP_ITERS) -> tuple[torch.cuda.CUDAGraph, Any]:
    """`run` captured in a CUDA graph, and what the captured call returned (its static
    output). Warm-up calls run first on a side stream: compiling, autotuning and lazy
    initialisation must not happen inside the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads (the server's workers, a thread per GPU; batch mode's decoder
    # threads on their own streams) may synchronise or allocate while this thread captures;
    # only this thread's calls must not break the capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = run()
    return graph, out


def shape_key(x: Tensor, inputs: Any) -> tuple:
    """Shapes only: the latent's dtype changes after step 0 (bf16 noise, then fp32), but the
    model casts it to its own dtype first thing, which the static buffer's `copy_` does too."""
    return (tuple(x.shape), *(tuple(t.shape) for t in _tensors(inputs)))


class GraphedVelocity:
    """`dit.velocity` captured for one shape; call with new `(x, step)` per step.

    The timestep-only work (embedding, triple-block modulations) comes from a table computed
    for the whole schedule before the loop; the graph picks the step's row on the device."""

    def __init__(self, dit: FoleyDiT, x: Tensor, prepared: PreparedConditions,
                 table: TimeConditioning, pool: Any) -> None:
        self.static_x = x.to(dit.audio_embedder.proj.weight.dtype, copy=True)
        self.static_step = torch.zeros(1, dtype=torch.long, device=x.device)
        self.static_inputs = _clone((prepared, table))
        self._static_tensors = _tensors(self.static_inputs)
        rows = x.shape[0]

        def run() -> Tensor:
            cond, time = self.static_inputs
            return dit.velocity(self.static_x, None, cond, time.select(self.static_step, rows))

        self.graph, self.static_out = capture(run, pool)
        self.owner: object = None  # set by `GraphedDenoiser` when it loads its conditions

    def load(self, prepared: PreparedConditions, table: TimeConditioning) -> None:
        """Copy a request's conditions and time table into the graph's static buffers."""
        for dst, src in zip(self._static_tensors, _tensors((prepared, table)), strict=True):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)

    def __call__(self, x: Tensor, step: int) -> Tensor:
        self.static_x.copy_(x)
        self.static_step.fill_(step)
        self.graph.replay()
        return self.static_out.clone()


class GraphedDenoiser:
    """The compiled transformer with each forward captured in a CUDA graph, per request shape
    (rows, audio/visual/text lengths), least recently used evicted, one shared memory pool.
    Forwards of the same shape share a graph: each copies its conditions into the graph's
    static buffers when the graph last ran another's (a few MB per step)."""

    text_masks = True

    def __init__(self, model: FoleyDiT, max_graphs: int = MAX_GRAPHS) -> None:
        self.model = model
        self.max_graphs = max_graphs
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[tuple, GraphedVelocity] = OrderedDict()
        self._table: tuple[Schedule, TimeConditioning] | None = None  # the last schedule's

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        prepared = self.model.prepare(rows.clip, rows.text, rows.sync, rows.audio_len,
                                      rows.text_mask)
        table = self._time_table(schedule, rows.clip.device)
        owner = object()  # which forward's conditions a shared graph holds
        key: tuple | None = None  # the forward's shapes: its latent's stay those of step 0

        def velocity(x: Tensor, step: int) -> Tensor:
            nonlocal key
            if key is None:
                key = shape_key(x, (prepared, table))
            graph = self._graph(key, x, prepared, table)
            if graph.owner is not owner:
                graph.load(prepared, table)
                graph.owner = owner
            return graph(x, step)

        return velocity

    def _time_table(self, schedule: Schedule, device: torch.device) -> TimeConditioning:
        """The schedule's time table, computed once for all the forwards of a denoising (and
        for every step's preparation when forwards are prepared per step)."""
        if self._table is None or self._table[0] is not schedule:
            self._table = schedule, self.model.time_conditioning(schedule.timesteps.to(device))
        return self._table[1]

    def _graph(self, key: tuple, x: Tensor, prepared: PreparedConditions,
               table: TimeConditioning) -> GraphedVelocity:
        """The captured graph of shapes `key` (captured now if there is none)."""
        graph = self.graphs.get(key)
        if graph is None:
            start = time.perf_counter()
            graph = GraphedVelocity(self.model, x, prepared, table, self.pool)
            log.info("captured a CUDA graph for shape %s in %.1f s (warm-up calls included)",
                     key[0], time.perf_counter() - start)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        return graph
