"""Fixtures of the server tests: one tiny-random pipeline for the whole session (loaded once,
as the server does), small clips made with PyAV, and apps on temporary data directories."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
pytest.importorskip("httpx", reason="the API tests need httpx (the 'test' extra)")

from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.config import TINY_RANDOM
from foleyrt.media.synthetic import ClipSpec, encode_clip
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.server.app import create_app
from foleyrt.server.settings import MIB, ServerSettings
from tests.server.support import STEPS


@pytest.fixture(scope="session")
def tiny_pipeline() -> FoleyPipeline:
    return FoleyPipeline.from_pretrained(TINY_RANDOM, runtime=RuntimeConfig.build("cpu"))


@dataclass(frozen=True)
class Clips:
    video: Path  # 1.5 s and tiny: the cheapest clip the model accepts
    short: Path  # 0.5 s: below the 1 s minimum
    text: Path  # a text file named like a video
    image: Path  # a PNG named like a video


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    root = tmp_path_factory.mktemp("clips")
    text = root / "notes.mp4"
    text.write_text("not a video\n" * 50)
    image = root / "picture.mp4"
    png = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(png, format="PNG")
    image.write_bytes(png.getvalue())
    return Clips(
        video=encode_clip(root / "clip.mp4", ClipSpec("libx264", ".mp4", Fraction(24), 1.5)),
        short=encode_clip(root / "short.mp4", ClipSpec("libx264", ".mp4", Fraction(24), 0.5)),
        text=text,
        image=image,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


MakeSettings = Callable[..., ServerSettings]
MakeApp = Callable[..., FastAPI]


@pytest.fixture
def make_settings(data_dir: Path) -> MakeSettings:
    """Test settings (tiny model, 2 steps, `data_dir`) with overrides."""

    def make(**overrides: Any) -> ServerSettings:
        return ServerSettings(**{"data_dir": data_dir, "model": TINY_RANDOM,
                                 "default_steps": STEPS, "allowed_hosts": ("testserver",),
                                 "min_free_bytes": 16 * MIB, **overrides})

    return make


@pytest.fixture
def make_app(make_settings: MakeSettings, tiny_pipeline: FoleyPipeline) -> MakeApp:
    """`make_app(pipeline=None, **settings)`: an app sharing the session's pipeline; start it
    with `with TestClient(app) as client:` (the lifespan runs then)."""

    def make(pipeline: Any = None, **overrides: Any) -> FastAPI:
        return create_app(make_settings(**overrides), [pipeline or tiny_pipeline])

    return make


@pytest.fixture
def client(make_app: MakeApp) -> Iterator[TestClient]:
    with TestClient(make_app()) as started:
        yield started
