"""The README's quick start: its commands are the ones a new user copies, so they are run
here (the generate step, twice: a rerun must not fail on the existing output) and their
setup is checked for the CPU-only build a machine without a GPU wants."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from foleyrt.cli import main
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _quick_start() -> list[list[str]]:
    """The first command block of the quick start, as argument lists per `&&` step."""
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [shlex.split(step) for step in block.group(1).strip().split(" && ")]


def test_quick_start_generate_can_be_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: rerunning the quick start failed on the existing out.mp4."""
    (command, *args) = _quick_start()[-1]
    assert command == ".venv/bin/foleyrt"
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "clip.mp4").symlink_to(REPO / "examples" / "clip.mp4")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["-q", *args, "--steps", "2", "--device", "cpu"]) == 0
        assert capsys.readouterr().out.strip() == "out.mp4"


def test_quick_start_installs_pytorch_for_the_cpu() -> None:
    """Issue 19: PyPI's default PyTorch on Linux is the CUDA build (a 5.8 GB venv); the quick
    start, for machines without a GPU, first takes PyTorch's CPU-only build of the pinned
    version, then the rest with the pins."""
    torch_step, rest = [step for step in _quick_start() if step[1:2] == ["install"]]
    pinned = next(line for line in (REPO / "constraints.txt").read_text().splitlines()
                  if line.startswith("torch=="))
    assert pinned in torch_step and "--no-deps" in torch_step
    assert torch_step[torch_step.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert rest[rest.index("-c") + 1] == "constraints.txt"


def test_readme_says_where_the_parity_fixtures_are() -> None:
    assert "../shared/fixtures/reference" in README and "FOLEYRT_FIXTURES" in README
