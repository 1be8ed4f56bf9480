"""Shared test paths: the golden fixtures live in ../shared beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO / ".." / "shared" / "fixtures" / "reference").resolve()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES / "manifest.json").is_file():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(autouse=True)
def _restore_logging():
    """`foleyrt.cli.main` configures logging for a process; tests call it in-process, so put
    the package logger's level and the root handlers back after each test."""
    import logging

    package, root = logging.getLogger("foleyrt"), logging.getLogger()
    saved = package.level, root.level, list(root.handlers)
    yield
    package.setLevel(saved[0])
    root.setLevel(saved[1])
    root.handlers[:] = saved[2]
