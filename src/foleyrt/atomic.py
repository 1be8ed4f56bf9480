"""Files that appear whole or not at all: the one way foleyrt writes a result.

A temporary file beside the target (same directory, so the final `os.replace` is atomic),
created exclusively with the default permissions (the umask applies, unlike tempfile's private
0600), renamed onto the target when the writer succeeds and removed whatever else happens: a
crash, a full disk or a cancelled job never leaves half a file under the real name.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foleyrt.errors import OutputError


@contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `path` when the body returns. Without
    `overwrite`, a `path` that appeared meanwhile is kept and the write fails."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror})") from None
    try:
        yield tmp
        if not overwrite and path.exists():
            raise OutputError(f"{path}: exists; pass --overwrite to replace it")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_parent(path: Path, noun: str = "directory") -> None:
    """Refuse in one line, before any work, a `path` whose `noun` ("directory", "folder")
    cannot take a new file: missing, a file, or not writable."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{path}: {parent} is a file")
    if not parent.is_dir():
        raise OutputError(f"{path}: {noun} {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {noun} {parent} is not writable")


def write_atomic(path: Path, data: bytes | str, *, overwrite: bool = True) -> Path:
    """`data` (text as UTF-8) written to `path` through `atomic_path`."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path
