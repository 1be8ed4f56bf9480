"""The small pieces: settings parsing, data-directory names, messages, the spectrogram."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foleyrt.errors import ConfigError
from foleyrt.server.files import DataDir, new_job_id
from foleyrt.server.service import _display_name
from foleyrt.server.settings import ServerSettings, format_duration, parse_duration
from foleyrt.server.spectrogram import F_MIN, spectrogram_image, spectrogram_levels


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1.5h", 5400),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "1 h 2"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


def test_settings_refuse_impossible_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max queue"):
        ServerSettings(data_dir=tmp_path, max_queue=0)
    with pytest.raises(ConfigError, match="job_timeout_s"):
        ServerSettings(data_dir=tmp_path, job_timeout_s=0)


@pytest.mark.parametrize("job_id", ["../etc", "x", "", new_job_id().upper(), "a/b"])
def test_only_server_made_ids_become_paths(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        DataDir(tmp_path).job_dir(job_id)


def test_messages_lose_server_paths(tmp_path: Path) -> None:
    files = DataDir(tmp_path)
    job_id = new_job_id()
    message = f"{files.input_path(job_id)}: video is 0.50 s long"
    assert (files.redact(message, job_id, "cat.mov")
            == "uploaded file 'cat.mov': video is 0.50 s long")
    assert files.redact(message, job_id) == "the uploaded video: video is 0.50 s long"


@pytest.mark.parametrize("name, shown", [
    ("clip.mp4", "clip.mp4"), ("C:\\Users\\me\\clip.mp4", "clip.mp4"), ("../../x.mp4", "x.mp4"),
    ("a\x00b\nc.mp4", "abc.mp4"), ("", "upload"), (None, "upload"),
])
def test_display_names_are_safe(name: str | None, shown: str) -> None:
    assert _display_name(name) == shown


def test_spectrogram_puts_a_tone_at_its_frequency() -> None:
    rate, rows = 48000, 240
    t = torch.arange(rate) / rate
    levels = spectrogram_levels(torch.sin(2 * torch.pi * 1000 * t)[None], rate, rows=rows)
    brightest = int(levels.astype(float).mean(axis=1).argmax())
    # Rows are log-spaced from F_MIN (bottom) to Nyquist (top).
    expected = rows - 1 - round((rows - 1) * torch.log(torch.tensor(1000 / F_MIN)).item()
                                / torch.log(torch.tensor(rate / 2 / F_MIN)).item())
    assert abs(brightest - expected) <= 2


def test_spectrogram_image_of_silence_and_of_a_short_track() -> None:
    image = spectrogram_image(torch.zeros(1, 100), 48000)
    assert (image.size, image.mode) == ((800, 240), "RGB")


@pytest.mark.parametrize("seconds, shown", [
    (86400, "24 h"), (300, "5 min"), (5, "5 s"), (5400, "1.5 h"), (7 * 86400, "7 d"),
    (0.3, "0.3 s"),
])
def test_durations_read_as_people_write_them(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_json_log_lines_carry_the_request_id() -> None:
    import json
    import logging

    from foleyrt.server.logs import JsonFormatter, RequestIdFilter, request_id

    record = logging.LogRecord("foleyrt.server", logging.INFO, __file__, 1, "job %s queued",
                               ("abc",), None)
    token = request_id.set("req-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job abc queued" and entry["request_id"] == "req-1"
    assert entry["level"] == "info" and entry["logger"] == "foleyrt.server"


def test_ray_serve_without_ray_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from foleyrt.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    monkeypatch.delitem(sys.modules, "foleyrt.server.ray_serve", raising=False)
    assert main(["-q", "ray-serve", "--model", "tiny-random", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == ("foleyrt: error: ray-serve needs the 'ray-serve' extra (ray is missing): "
                   "pip install 'foleyrt[ray-serve]'")
