"""Process-wide settings foleyrt relies on, in one place.

PyTorch, cuBLASLt, Inductor and Triton read some settings once per process, from the
environment or from module-level configuration. foleyrt sets them here and nowhere else:

- `configure_process()`: cuBLASLt without a workspace (its kernels then need no zeroed
  workspace, so each large GEMM of a captured forward is one graph node instead of a memset and
  a GEMM; docs/benchmarks.md has the figures) and the compile caches' directories. cuBLASLt reads
  its variable at the first GPU matmul of a process, so this runs first: the CLI's entry point
  and the GPU scripts call it; Python API users call `foleyrt.configure_process()` before their
  first GPU work (values already in the environment win). Also NCCL and PyTorch without NVLink
  multicast (NVLS): CFG-parallel's one small all-gather per step gains nothing from it, and it
  takes GPU memory for its buffers; `accel.parallel` applies these before its process group.
- `compile_settings(root)`: Inductor's on-disk FX-graph cache and Dynamo's recompile limit,
  applied by the compile recipe just before it compiles.
- `encoder_matmul_precision(fast)`: TF32 for the fp32 encoders while they run, in the
  accelerated modes only (restored afterwards: the VAE and the eager mode keep full fp32);
  on CUDA SigLIP2 runs under fp16 autocast instead (`pipeline.features.siglip_autocast`).
  Where encoders run beside the denoising on other threads (batch mode's run, the server's
  workers) it is held for as long as they run: a compiled block's guards check this
  setting, and a switch by one thread while another captures a graph fails that forward.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

CUDA_LIBRARY_ENV = {
    "CUBLASLT_WORKSPACE_SIZE": "0",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
}
DEFAULT_COMPILE_CACHE = Path.home() / ".cache" / "foleyrt" / "compile"
RECOMPILE_LIMIT = 64  # block classes share code objects: new shapes must not hit Dynamo's limit


def compile_cache_dir(path: str | Path | None = None) -> Path:
    """Where compiled graphs live: `path`, `$FOLEYRT_CACHE`, or `~/.cache/foleyrt/compile`."""
    return Path(path or os.environ.get("FOLEYRT_CACHE") or DEFAULT_COMPILE_CACHE).expanduser()


def configure_process(compile_cache: str | Path | None = None) -> Path:
    """Set the process-wide environment (see the module docstring); returns the compile cache
    directory. Idempotent; variables the user set are kept."""
    for name, value in CUDA_LIBRARY_ENV.items():
        os.environ.setdefault(name, value)
    root = compile_cache_dir(compile_cache)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    return root


def compile_settings(root: Path) -> None:
    """Inductor and Dynamo settings of a compile whose caches live under `root`."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    configure_process(root)
    root.mkdir(parents=True, exist_ok=True)
    inductor_config.fx_graph_cache = True
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, RECOMPILE_LIMIT)


@contextmanager
def encoder_matmul_precision(fast: bool) -> Iterator[None]:
    """TF32 matmuls while the fp32 encoders run when `fast`, then the previous setting."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if fast else saved)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)
