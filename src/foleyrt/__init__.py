"""foleyrt: a fast, faithful runtime for HunyuanVideo-Foley.

The public API is imported lazily, so `foleyrt --help` and light tools do not pay for torch,
transformers and PyAV at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FoleyPipeline": "foleyrt.pipeline.pipeline",
    "FoleyResult": "foleyrt.pipeline.pipeline",
    "Progress": "foleyrt.pipeline.pipeline",
    "RuntimeConfig": "foleyrt.config",
    "FoleyError": "foleyrt.errors",
}

if TYPE_CHECKING:
    from foleyrt.config import RuntimeConfig as RuntimeConfig
    from foleyrt.errors import FoleyError as FoleyError
    from foleyrt.pipeline.pipeline import FoleyPipeline as FoleyPipeline
    from foleyrt.pipeline.pipeline import FoleyResult as FoleyResult
    from foleyrt.pipeline.pipeline import Progress as Progress

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'foleyrt' has no attribute {name!r}")
