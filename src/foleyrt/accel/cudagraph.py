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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from foleyrt.models.dit import FoleyDiT, PreparedConditions

log = logging.getLogger(__name__)

MAX_GRAPHS = 4  # distinct request shapes kept captured (each holds its activations)
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
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(
            obj, **{f.name: _clone(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    if isinstance(obj, list):
        return [_clone(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(item) for item in obj)
    return obj


def shape_key(x: Tensor, prepared: PreparedConditions) -> tuple:
    """Shapes only: the latent's dtype changes after step 0 (bf16 noise, then fp32), but the
    model casts it to its own dtype first thing, which the static buffer's `copy_` does too."""
    return (tuple(x.shape), *(tuple(t.shape) for t in _tensors(prepared)))


class GraphedVelocity:
    """`dit.velocity` captured for one shape; call with new `(x, t)` per step."""

    def __init__(self, dit: FoleyDiT, x: Tensor, t: Tensor, prepared: PreparedConditions,
                 pool: Any) -> None:
        self.static_x = x.to(dit.audio_embedder.proj.weight.dtype, copy=True)
        self.static_t = t.clone()
        self.static_prepared = _clone(prepared)
        self._static_tensors = _tensors(self.static_prepared)

        def run() -> Tensor:
            return dit.velocity(self.static_x, self.static_t, self.static_prepared)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_ITERS):  # compiles/autotunes outside the capture
                run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = run()

    def load(self, prepared: PreparedConditions) -> None:
        """Copy a request's conditions into the graph's static buffers."""
        for dst, src in zip(self._static_tensors, _tensors(prepared)):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.static_x.copy_(x)
        self.static_t.copy_(t)
        self.graph.replay()
        return self.static_out.clone()


class GraphCache:
    """Captured graphs of one model, least recently used evicted, one shared memory pool."""

    def __init__(self, dit: FoleyDiT, max_graphs: int = MAX_GRAPHS) -> None:
        self.dit = dit
        self.max_graphs = max_graphs
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[tuple, GraphedVelocity] = OrderedDict()

    def model_fn(self, prepared: PreparedConditions) -> Callable[[Tensor, Tensor], Tensor]:
        """A velocity function for this request: captures on first use of a shape."""
        graphs = self.graphs
        state: dict[str, GraphedVelocity] = {}

        def fn(x: Tensor, t: Tensor) -> Tensor:
            graph = state.get("graph")
            if graph is None:
                key = shape_key(x, prepared)
                graph = graphs.get(key)
                if graph is None:
                    log.info("capturing a CUDA graph for shape %s", key[0])
                    graph = GraphedVelocity(self.dit, x, t, prepared, self.pool)
                    graphs[key] = graph
                    while len(graphs) > self.max_graphs:
                        graphs.popitem(last=False)
                graphs.move_to_end(key)
                graph.load(prepared)
                state["graph"] = graph
            return graph(x, t)

        return fn
