"""foleyrt: a fast, faithful runtime for HunyuanVideo-Foley.

The public API is imported lazily, so `foleyrt --help` and light tools do not pay for torch,
transformers and PyAV at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from foleyrt.version import __version__

_EXPORTS = {
    "FoleyPipeline": "foleyrt.pipeline.pipeline",
    "FoleyResult": "foleyrt.pipeline.pipeline",
    "Progress": "foleyrt.pipeline.pipeline",
    "GenerationRequest": "foleyrt.request",
    "RuntimeConfig": "foleyrt.accel.runtime",
    "configure_process": "foleyrt.accel.process",
    "FoleyError": "foleyrt.errors",
}

if TYPE_CHECKING:
    from foleyrt.accel.process import configure_process as configure_process
    from foleyrt.accel.runtime import RuntimeConfig as RuntimeConfig
    from foleyrt.errors import FoleyError as FoleyError
    from foleyrt.pipeline.pipeline import FoleyPipeline as FoleyPipeline
    from foleyrt.pipeline.pipeline import FoleyResult as FoleyResult
    from foleyrt.pipeline.pipeline import Progress as Progress
    from foleyrt.request import GenerationRequest as GenerationRequest

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'foleyrt' has no attribute {name!r}")
