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
