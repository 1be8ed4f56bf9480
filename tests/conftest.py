"""Shared test paths: the golden fixtures live in ../shared beside the repository."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from foleyrt.accel.calibration import Calibration
from foleyrt.models.dit import FoleyDiT
from tests.tiny import recorded_calibration
from tests.tiny import tiny_dit as build_tiny_dit

REPO = Path(__file__).resolve().parents[1]
# The golden fixtures of the official implementation: ../shared beside the checkout, or
# wherever FOLEYRT_FIXTURES points.
FIXTURES = Path(
    os.environ.get("FOLEYRT_FIXTURES") or REPO / ".." / "shared" / "fixtures" / "reference"
).resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "manifest.json").is_file():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="module")
def tiny_dit() -> FoleyDiT:
    """The shared tiny transformer (tests that transform it work on a copy)."""
    return build_tiny_dit()


@pytest.fixture(scope="module")
def calibration(tiny_dit: FoleyDiT) -> Calibration:
    return recorded_calibration(tiny_dit)


_LOGGING_BASELINE = (logging.getLogger("foleyrt").level, logging.getLogger().level,
                     list(logging.getLogger().handlers))


@pytest.fixture(autouse=True)
def _restore_logging():
    """`foleyrt.cli.main` configures logging for a process; tests call it in-process (some
    from module-scoped fixtures), so every test starts from the logging state the session
    started with."""
    package, root = logging.getLogger("foleyrt"), logging.getLogger()
    package.setLevel(_LOGGING_BASELINE[0])
    root.setLevel(_LOGGING_BASELINE[1])
    root.handlers[:] = [h for h in root.handlers if h not in _LOGGING_BASELINE[2]
                        and type(h).__name__ == "LogCaptureHandler"] + _LOGGING_BASELINE[2]
    yield
