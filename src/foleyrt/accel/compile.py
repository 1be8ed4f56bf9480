"""Regional `torch.compile` of the transformer blocks, with on-disk caches.

Why regional: the 18 triple and 36 single blocks are two code objects. Compiling each block
class once (parameters are graph inputs, `inline_inbuilt_nn_modules`) gives two Inductor graphs
reused by all 54 blocks: a fraction of the compile time of the unrolled model, and the same
fused kernels (norm + modulation + RoPE + gating chains fused by Inductor). Sequence lengths
are dynamic, so one compile serves every clip duration; CUDA graphs are captured per exact
shape on top (see `cudagraph.py`), so no padding and no masking changes the numbers.

Caches: Inductor's FX-graph/AOT caches and Triton's kernel cache live under one directory
(`FOLEYRT_CACHE`, default `~/.cache/foleyrt/compile`), keyed by Inductor itself on the graph,
shapes' symbolic form, PyTorch/Triton versions and the GPU. A second process re-traces the
two block graphs (seconds) and loads compiled kernels from disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from foleyrt.models.dit import FoleyDiT, SingleBlock, TripleBlock

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "foleyrt" / "compile"
COMPILED_BLOCKS = (TripleBlock, SingleBlock)


def cache_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("FOLEYRT_CACHE") or DEFAULT_CACHE).expanduser()


def configure_caches(path: str | Path | None = None) -> Path:
    """Point Inductor and Triton at a persistent directory (env vars are read lazily by
    both, so this must run before the first compile)."""
    root = cache_dir(path)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    return root


def compile_blocks(dit: FoleyDiT, mode: str | None = None) -> FoleyDiT:
    """Compile every transformer block in place (idempotent)."""
    if getattr(dit, "_foleyrt_compiled", False):
        return dit
    configure_caches()
    import torch._dynamo.config as dynamo_config

    # 54 blocks share 2 code objects (parameters are graph inputs, so one graph serves all);
    # recompiles for new shapes must not hit the default limit.
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    for module in dit.modules():
        if isinstance(module, COMPILED_BLOCKS):
            module.compile(dynamic=True, mode=mode, fullgraph=True)
    dit._foleyrt_compiled = True  # type: ignore[attr-defined]
    return dit


def compile_supported(device: torch.device) -> bool:
    """Inductor + CUDA graphs are the GPU path; elsewhere `compile` falls back to eager."""
    return device.type == "cuda"
