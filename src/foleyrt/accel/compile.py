"""Regional `torch.compile` of the transformer blocks, with compiled graphs kept on disk.

Why regional: the 18 triple and 36 single blocks are two code objects. Compiling each block
class once (parameters are graph inputs) gives three Inductor graphs (single blocks, triple
blocks, the last triple block that skips the visual update) reused by all 54 blocks: a
fraction of the compile time of the unrolled model, and the same fused kernels (norm +
modulation + RoPE + gating chains fused by Inductor). Sequence lengths and batch rows are
dynamic, so one compile serves every clip duration; CUDA graphs are captured per exact shape
on top (see `cudagraph.py`), so no padding and no masking changes the numbers.

Caches, all under one directory (`FOLEYRT_CACHE`, default `~/.cache/foleyrt/compile`; see
`accel.process`):
- `graphs/<key>/`: each block graph compiled ahead of time (`torch.compile(...).aot_compile`)
  and saved whole: Dynamo's bytecode and guards with Inductor's code. A later process loads
  them and runs without tracing or compiling anything. `<key>` hashes what the graphs depend
  on beyond what their guards check (block classes, parameter dtypes and types, shapes' symbolic
  form, grad mode): PyTorch, CUDA and Triton versions, the GPU model, the compile mode, and the
  source of `foleyrt.models` and `foleyrt.accel` (a code change never runs a stale graph).
- `inductor/`, `triton/`: Inductor's FX-graph/AOT caches and Triton's kernels, keyed by
  Inductor itself; they make a new key's first compile faster.
Where this PyTorch cannot save compiled graphs, blocks are compiled in process as before
(`nn.Module.compile`, the on-disk Inductor caches still apply).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import foleyrt
from foleyrt.accel.fused import FusedSingleBlock, FusedTripleBlock
from foleyrt.accel.process import compile_cache_dir, compile_settings
from foleyrt.accel.tracing import TRACING
from foleyrt.models.dit import FoleyDiT, SingleBlock, TripleBlock

log = logging.getLogger(__name__)

COMPILED_BLOCKS = (TripleBlock, SingleBlock, FusedTripleBlock, FusedSingleBlock)
GRAPH_FORMAT = "1"  # bump when the saved-graph layout of this module changes
TRACED_PACKAGES = ("models", "accel")  # the code inside the compiled graphs
# Dynamo settings for saved graphs: the API switch where it still is one (PyTorch <= 2.12), and
# float constants (norm epsilons) specialised: a saved trace cannot restart to tensorify them.
_AOT_DYNAMO_CONFIG = {"enable_aot_compile": True, "specialize_float": True}


def compile_encoders(*encoders: nn.Module) -> None:
    """Compile the encoders in place (`nn.Module.compile`, in process): Inductor fuses their
    norms, activations and residual sums into fewer kernels, which shortens both their GPU
    time and the host time of queueing them (docs/benchmarks.md §6, runs AW-AX). They are called
    per batch of frames or windows: the first batch size compiles a static graph, a second
    (a clip's last, partial batch) one with the batch dimension dynamic (Dynamo's automatic
    dynamic shapes), which then serves every size."""
    compile_settings(compile_cache_dir())
    for encoder in encoders:
        encoder.compile()


def compile_blocks(dit: FoleyDiT, store: BlockGraphs | None) -> FoleyDiT:
    """Compile every transformer block of `dit` in place: through `store`'s saved graphs
    (`block_graphs`), or with `nn.Module.compile` where this PyTorch cannot save them (None)."""
    if store is None:
        compile_settings(compile_cache_dir())
    for module in dit.modules():
        if isinstance(module, COMPILED_BLOCKS):
            if store is not None:
                store.attach(module)
            else:
                module.compile(dynamic=True, fullgraph=True)
    return dit


def saved_graphs_supported() -> bool:
    return hasattr(torch.compiler, "load_compiled_function")


def block_graphs(device: torch.device, mode: str | None = None,
                 cache: str | Path | None = None) -> BlockGraphs | None:
    """The saved block graphs for `device` under the compile cache (None where this PyTorch
    cannot save compiled graphs)."""
    if not saved_graphs_supported():
        return None
    root = compile_cache_dir(cache)
    compile_settings(root)
    return BlockGraphs(root / "graphs" / graph_key(device, mode), mode)


@functools.cache
def graph_key(device: torch.device, mode: str | None) -> str:
    """The saved graphs' directory name: everything they depend on that guards do not check
    (computed once per process: it reads the traced source files)."""
    parts = [GRAPH_FORMAT, torch.__version__, str(torch.version.cuda), str(mode), device.type]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
        parts.append(str(torch.cuda.get_device_capability(device)))
    try:
        import triton

        parts.append(triton.__version__)
    except ImportError:
        parts.append("no-triton")
    digest = hashlib.sha256("\0".join(parts).encode())
    package = Path(foleyrt.__file__).parent
    for sub in TRACED_PACKAGES:
        for source in sorted((package / sub).rglob("*.py")):
            digest.update(source.relative_to(package).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()[:24]


class BlockGraphs:
    """Compiled block graphs in one directory, shared by every block of a class.

    A block's call runs the first graph whose guards accept it (the block's class and parameter
    types, input shapes' symbolic constraints, flags such as `update_visual`); when none does,
    the call is compiled ahead of time with its inputs as the example, saved (atomically; names
    are unique, so concurrent processes never clash) and kept. Graphs saved by other processes
    are loaded at the first call, or ahead of it by `load_in_background` (the pipeline starts that
    while the weights load, and hands the same store to the compile recipe). If a PyTorch build
    cannot trace or save a block this way, that block class falls back to an in-process
    `torch.compile`, with a warning."""

    def __init__(self, directory: Path, mode: str | None) -> None:
        self.directory = directory
        self.mode = mode
        self._graphs: dict[type, list[Callable[..., Any]]] = {}
        self._fallback: dict[type, Callable[..., Any]] = {}
        self.loaded = 0
        self._scanned = False
        self._loader: threading.Thread | None = None

    def attach(self, block: nn.Module) -> None:
        """Route `block`'s calls through the store (what `nn.Module.compile` does)."""
        block._compiled_call_impl = functools.partial(self.call, block)

    def load_in_background(self) -> None:
        """Load the saved graphs on a thread, in inference mode (see `_load_saved`)."""
        if self._scanned or self._loader is not None:
            return

        def load() -> None:
            with torch.inference_mode():
                self._load_saved()

        self._loader = threading.Thread(target=load, name="foleyrt-graph-load", daemon=True)
        self._loader.start()

    def call(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self._loader is not None:
            self._loader.join()
            self._loader = None
        if not self._scanned:
            self._load_saved()
        cls = type(block)
        if cls in self._fallback:
            return self._fallback[cls](block, *args, **kwargs)
        graphs = self._graphs.setdefault(cls, [])
        for graph in graphs:
            # torch types a loaded graph as a plain callable; it is an AOTCompiledFunction
            if graph.guard_check(block, *args, **kwargs):  # type: ignore[attr-defined]
                return graph(block, *args, **kwargs)
        graph = self._compile(cls, block, args, kwargs)
        if graph is None:
            return self._fallback[cls](block, *args, **kwargs)
        graphs.append(graph)
        return graph(block, *args, **kwargs)

    def _torch_compile(self, cls: type[nn.Module]) -> Callable[..., Any]:
        return torch.compile(cls.forward, fullgraph=True, dynamic=True, mode=self.mode)

    def _compile(self, cls: type[nn.Module], block: nn.Module, args: tuple, kwargs: dict
                 ) -> Any:
        import torch._dynamo.config as dynamo_config

        settings = {k: v for k, v in _AOT_DYNAMO_CONFIG.items() if hasattr(dynamo_config, k)}
        try:
            with dynamo_config.patch(settings), TRACING.tracing():
                # torch.compile's wrapper gains `aot_compile` at run time (under
                # enable_aot_compile, which `_AOT_DYNAMO_CONFIG` sets); its type does not say so
                compiled = self._torch_compile(cls)
                graph = compiled.aot_compile(((block, *args), kwargs))  # type: ignore[attr-defined]
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{cls.__name__}-{uuid.uuid4().hex[:12]}.graph"
            graph.save_compiled_function(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure here has the same remedy
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("%s: compiled graphs cannot be saved with this PyTorch (%s); compiling "
                        "in process", cls.__name__, reason)
            self._fallback[cls] = self._torch_compile(cls)
            return None
        log.info("compiled %s, saved to %s", cls.__name__, path)
        return graph

    def _load_saved(self) -> None:
        """Load the directory's graphs, at the first call: a loaded graph's guards take the
        autograd state (e.g. inference mode) of the moment they are loaded, and must see the
        callers'."""
        self._scanned = True
        start = time.perf_counter()
        for path in sorted(self.directory.glob("*.graph")):
            self._load(path)
        if self.loaded:
            log.info("loaded %d compiled block graph(s) in %.1f s from %s", self.loaded,
                     time.perf_counter() - start, self.directory)

    def _load(self, path: Path) -> None:
        cls = next((c for c in COMPILED_BLOCKS if path.name.startswith(f"{c.__name__}-")), None)
        if cls is None:
            return
        try:
            with path.open("rb") as f:
                graph = torch.compiler.load_compiled_function(f)
        except Exception as exc:  # noqa: BLE001 - an unreadable graph is recompiled, not fatal
            log.warning("ignoring compiled graph %s (%s)", path, type(exc).__name__)
            return
        self._graphs.setdefault(cls, []).append(graph)
        self.loaded += 1
