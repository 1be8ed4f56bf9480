"""What the package declares: its licence and the Python versions it installs on."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_code_is_apache_2() -> None:
    """Issue 19: the code had no licence (the weights keep Tencent's, see the README)."""
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Apache License 2.0" in (REPO / "README.md").read_text(encoding="utf-8")
