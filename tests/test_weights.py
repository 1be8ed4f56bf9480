"""Where checkpoints come from: a weights folder or the hub cache, and the one error that says
what is missing and how to fetch it."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from foleyrt.config import HUB_REPO
from foleyrt.errors import WeightsError
from foleyrt.models.encoders import SigLIP2Encoder
from foleyrt.weights import resolve_files

FILES = ["hunyuanvideo_foley.pth", "vae_128d_48k.pth", "synchformer_state_dict.pth"]


def test_folder_files_and_safetensors_twins(tmp_path: Path) -> None:
    (tmp_path / FILES[0]).write_bytes(b"x")
    (tmp_path / "vae_128d_48k.safetensors").write_bytes(b"x")
    (tmp_path / FILES[2]).write_bytes(b"x")
    assert resolve_files(str(tmp_path), FILES) == {
        FILES[0]: tmp_path / FILES[0],
        FILES[1]: tmp_path / "vae_128d_48k.safetensors",
        FILES[2]: tmp_path / FILES[2],
    }


def test_folder_missing_files_are_named_with_the_command_that_fetches_them(
    tmp_path: Path,
) -> None:
    """Issue 19: the message named one file of several, a literal `<repo>`, and
    `huggingface-cli`, which the pinned huggingface_hub no longer installs."""
    (tmp_path / FILES[1]).write_bytes(b"x")
    with pytest.raises(WeightsError) as info:
        resolve_files(str(tmp_path), FILES)
    message = str(info.value)
    assert "<repo>" not in message and "huggingface-cli" not in message
    assert (f"`hf download {HUB_REPO} {FILES[0]} {FILES[2]} --local-dir {tmp_path}`"
            in message)


def test_hub_offline_names_every_uncached_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        resolve_files("someone/weights", FILES)
    message = str(info.value)
    assert str(tmp_path) in message and "\n" not in message
    assert f"`hf download someone/weights {' '.join(FILES)}`" in message


def test_encoder_offline_names_the_hf_command(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The SigLIP2 / CLAP repos: the same command, `hf download`, not `huggingface-cli`."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        SigLIP2Encoder.from_pretrained("someone/siglip")
    assert "`hf download someone/siglip` once" in str(info.value)
