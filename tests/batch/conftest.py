"""What the batch tests share: a small library of clips (good, too short, not a video) and
the tiny-random pipeline on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.media.synthetic import write_test_clip
from foleyrt.pipeline.pipeline import FoleyPipeline


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clips/{a,b}.mp4 (good, tiny), clips/long.mp4 (good, another length), clips/short.mp4
    (0.5 s: too short), clips/text.mp4 (not a video), other/b.mp4 (good; shares its stem
    with clips/b.mp4)."""
    root = tmp_path_factory.mktemp("library")
    (root / "clips").mkdir()
    (root / "other").mkdir()
    for name in ("clips/a.mp4", "clips/b.mp4", "other/b.mp4"):
        write_test_clip(root / name, 1.2, width=64, height=48, fps=10)
    write_test_clip(root / "clips/long.mp4", 1.6, width=64, height=48, fps=10)
    write_test_clip(root / "clips/short.mp4", 0.5, width=64, height=48, fps=10)
    (root / "clips/text.mp4").write_text("not a video\n" * 20)
    return root


@pytest.fixture(scope="module")
def pipe() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cpu"))
