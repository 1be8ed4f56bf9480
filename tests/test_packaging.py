"""What the package declares: its licence and the Python versions it installs on."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_code_is_apache_2() -> None:
    """Issue 19: the code had no licence (the weights keep Tencent's, see the README)."""
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Apache License 2.0" in (REPO / "README.md").read_text(encoding="utf-8")


def _lowest_python() -> Version:
    (spec,) = SpecifierSet(PYPROJECT["requires-python"])
    assert spec.operator == ">=", "requires-python must be a floor: CI runs the floor"
    return Version(spec.version)


def test_declared_pythons_install_the_pins() -> None:
    """Issue 19: `>=3.10` was declared while the pins (Pillow 13, numpy, transformers, ...)
    need 3.11. Every pin installed here must admit the lowest declared Python (CI installs
    them all and runs on that Python: see .ci/run)."""
    lowest = _lowest_python()
    refusing = []
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, pinned = line.split("==")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (an extra left out)
        if Version(dist.version).public != Version(pinned).public:
            continue  # installed without the constraints: its metadata says nothing of the pin
        needs = SpecifierSet(dist.metadata.get("Requires-Python") or "")
        if lowest not in needs:
            refusing.append(f"{name}=={pinned} ({needs})")
    assert not refusing, f"Python {lowest} cannot install {', '.join(refusing)}"
