"""The data directory: the job database, one folder per job, and the lock that keeps a
second server off it.

Every path below the root is built here from a server-made job id (a UUID, checked again on
use) and fixed names; nothing a client sends (file names included) ever becomes a path.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from foleyrt.errors import ConfigError

INPUT_NAME = "input"  # no suffix: uploads are sniffed by content, never by their name


def new_job_id() -> str:
    return str(uuid.uuid4())


def _checked(job_id: str) -> str:
    """Refuse anything but a canonical UUID before it is joined to a path."""
    try:
        if str(uuid.UUID(job_id)) == job_id:
            return job_id
    except ValueError:
        pass
    raise ValueError(f"not a job id: {job_id!r}")


class DataDir:
    """Layout: `jobs.sqlite3`, `.lock`, `jobs/<id>/input` and `jobs/<id>/<outputs>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs = root / "jobs"
        self._lock_fd: int | None = None

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite3"

    def open(self) -> None:
        """Create the layout and take the lock: two servers on one directory would each mark
        the other's running job as cut off by a restart."""
        try:
            self.jobs.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"data directory {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"data directory {self.root} is in use by another foleyrt server; "
                "stop it or pass another --data-dir"
            ) from None
        self._lock_fd = fd

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def job_dir(self, job_id: str) -> Path:
        return self.jobs / _checked(job_id)

    def input_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / INPUT_NAME

    def create_job_dir(self, job_id: str) -> Path:
        path = self.job_dir(job_id)
        path.mkdir()
        return path

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def remove_input(self, job_id: str) -> None:
        """A finished job no longer needs its upload (the MP4s already hold the picture)."""
        self.input_path(job_id).unlink(missing_ok=True)

    def folders(self) -> list[str]:
        """Names of the job folders present (whatever made them)."""
        return sorted(path.name for path in self.jobs.iterdir())

    def holds_results(self, name: str) -> bool:
        """Whether a job folder holds anything but an upload: a crash mid-submission leaves
        only `input` (or nothing), a finished job its outputs."""
        return any(path.name != INPUT_NAME for path in (self.jobs / name).iterdir())

    def remove_folder(self, name: str) -> None:
        """Remove a folder found under `jobs/` (its name need not be a job id)."""
        shutil.rmtree(self.jobs / name, ignore_errors=True)

    def redact(self, message: str, job_id: str, upload_name: str | None = None) -> str:
        """A pipeline message with this job's server paths replaced by what the user knows
        them as: the client must neither learn the layout nor see a meaningless path."""
        upload = f"uploaded file {upload_name!r}" if upload_name else "the uploaded video"
        job_dir = str(self.job_dir(job_id))
        return message.replace(str(self.input_path(job_id)), upload).replace(job_dir + "/", "")
