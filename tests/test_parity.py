"""Every case of the reference fixtures, through the same code as `foleyrt verify`."""

from __future__ import annotations

import json

import pytest

from foleyrt.verify import run_manifest
from tests.conftest import FIXTURES


def _case_ids() -> list[str]:
    manifest = FIXTURES / "manifest.json"
    if not manifest.is_file():
        return []
    return [c["id"] for c in json.loads(manifest.read_text())["cases"]]


@pytest.mark.parametrize("case_id", _case_ids())
def test_reference_case(case_id: str, fixtures_dir) -> None:
    (result,) = [r for r in run_manifest(fixtures_dir, only=[case_id]) if r.case_id == case_id]
    assert result.passed, result.line()


@pytest.mark.parametrize(("manifest", "message"), [
    (b"[1, 2]", "'cases' must be a list of objects, each with a string 'id'"),
    (b'{"cases": "abc"}', "'cases' must be a list of objects, each with a string 'id'"),
    (b'{"cases": [{"component": "dit"}]}', "'cases' must be a list of objects, each with"),
    (b'{"cases": [], "note": "caf\xe9"}', "not UTF-8 text"),
])
def test_a_malformed_manifest_is_one_line(tmp_path, capsys, manifest: bytes,
                                           message: str) -> None:
    from foleyrt.cli import main

    (tmp_path / "manifest.json").write_bytes(manifest)
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foleyrt: error: ") and message in err and err.count("\n") == 1
