"""What a start finds in the data directory, and what it does about it.

The job database is trusted only when it is intact. A folder under `jobs/` without a row is
removed only when it holds nothing but an upload (a crash between receiving a video and
recording its job leaves that); one holding results is never deleted. If the database is
missing, empty or unreadable while such folders exist, or rows are missing for them, the
server refuses to start with one line that says what it found and how to recover: rebuilding
the index from the folders cannot bring back what the rows held (parameters, seeds, states),
and a start that silently dropped those jobs would hide the damage.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from foleyrt.errors import ConfigError
from foleyrt.server.cleanup import tidy
from foleyrt.server.files import DataDir
from foleyrt.server.settings import ServerSettings
from foleyrt.server.store import JobState, JobStore

log = logging.getLogger(__name__)


def open_data(settings: ServerSettings) -> tuple[DataDir, JobStore]:
    """Lock the data directory, check the database against the folders, open it and account
    for what the last run left (cut-off jobs, half-received uploads, expired results)."""
    files = DataDir(settings.data_dir)
    files.open()
    try:
        known, found = _recorded_ids(files.database), files.folders()
        unrecorded = [name for name in found if name not in (known or set())]
        stranded = [name for name in unrecorded if files.holds_results(name)]
        if stranded:
            raise ConfigError(_refusal(files, known, len(stranded)))
        for name in unrecorded:
            log.info("removing the half-received upload in job folder %s", name)
            files.remove_folder(name)
        store = JobStore(files.database)
    except BaseException:
        files.close()
        raise
    _account_for_last_run(store, files, settings)
    return files, store


def _recorded_ids(database: Path) -> set[str] | None:
    """The job ids in the database; None when there is none yet (no file, or an empty one).
    Read-only, so that a damaged file is left exactly as it was found."""
    if not database.exists() or database.stat().st_size == 0:
        return None
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            return {row[0] for row in db.execute("SELECT id FROM jobs")}
    except sqlite3.Error as exc:
        raise ConfigError(
            f"job database {database} cannot be read ({exc}); restore it from a backup "
            "(the results under jobs/ were not touched)"
        ) from None


def _refusal(files: DataDir, known: set[str] | None, stranded: int) -> str:
    found = ("is missing" if not files.database.exists() else "is empty" if known is None
             else "has no row for them")
    return (f"{stranded} job folder(s) under {files.jobs} hold results but the job database "
            f"{files.database.name} {found}; nothing was deleted: restore the database from a "
            f"backup, or move {files.jobs} aside to start with no jobs")


def _account_for_last_run(store: JobStore, files: DataDir, settings: ServerSettings) -> None:
    interrupted = store.fail_interrupted()
    for job_id in interrupted:
        files.remove_job(job_id)  # partial outputs and the upload of a failed job
    if interrupted:
        log.warning("%d job(s) were cut off by the last stop and are marked failed",
                    len(interrupted))
    tidy(store, files, settings.result_ttl_s, settings.record_ttl_s)
    queued = store.count(JobState.QUEUED)
    if queued:
        log.info("resuming %d queued job(s)", queued)
