"""Job records in SQLite: the one source of truth for states, progress and the queue order.

The queue is the table itself (oldest `queued` row first), so a restart loses nothing that
was accepted. One connection serves every thread behind a lock; WAL journalling keeps
readers from blocking the worker's progress writes, and `synchronous=NORMAL` makes each
commit survive a crash of the process (not a power cut, which is an acceptable trade for a
progress counter written every denoising step).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from foleyrt.errors import ConfigError

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order
    id          TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL,
    params      TEXT NOT NULL,
    stage       TEXT,
    step        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    outputs     TEXT NOT NULL DEFAULT '[]',
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""
# Version 2: a client's Idempotency-Key and a digest of what it sent with it.
_IDEMPOTENCY = """
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN request_digest TEXT;
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (idempotency_key);
"""
_CLAIM = ("UPDATE jobs SET state = 'running', started_at = ?, stage = NULL, step = 0, "
          "total = 0 WHERE id = ? AND state = 'queued'")
RESTART_MESSAGE = (
    "the server stopped while this job was running (crash or kill); it was not retried in "
    "case it caused the stop: submit it again"
)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class OutputFiles:
    """Names (inside the job folder, made by the server) of one sample's files."""

    wav: str
    spectrogram: str
    mp4: str | None = None  # text-only jobs have no picture to mux


@dataclass(frozen=True)
class Idempotency:
    """A client's retry key and the digest of the request it came with."""

    key: str
    digest: str


class KeyReused(Exception):
    """The Idempotency-Key belongs to a job submitted with another request."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass(frozen=True)
class JobRecord:
    id: str
    state: JobState
    params: dict[str, Any]
    stage: str | None
    step: int
    total: int
    error: str | None
    outputs: tuple[OutputFiles, ...]
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None  # 1 = next to run; derived from the order, never stored


_COLUMNS = ("id, state, params, stage, step, total, error, outputs, created_at, started_at, "
            "finished_at")
# A queued row's position: queued rows up to and including it, in queue order.
_SELECT = f"""
SELECT {_COLUMNS},
       CASE WHEN state = 'queued' THEN
            (SELECT COUNT(*) FROM jobs AS q WHERE q.state = 'queued' AND q.seq <= jobs.seq)
       END,
       seq
FROM jobs
"""


def _record(row: tuple[Any, ...]) -> JobRecord:
    (id_, state, params, stage, step, total, error, outputs, created, started, finished,
     position, _seq) = row
    return JobRecord(id_, JobState(state), json.loads(params), stage, step, total, error,
                     tuple(OutputFiles(**o) for o in json.loads(outputs)), created, started,
                     finished, position)


class JobStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: job database version {version} is not supported "
                f"(this foleyrt reads version {SCHEMA_VERSION}); use another --data-dir"
            )
        # Each step brings a database from the version before up (0: a new file); each
        # script runs in its own transaction.
        with self._lock:
            if version < 1:
                self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = 1; COMMIT;")
            if version < 2:
                self._db.executescript(f"BEGIN; {_IDEMPOTENCY} PRAGMA user_version = 2; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Serialise access and make multi-statement changes atomic (`BEGIN IMMEDIATE` takes
        the write lock up front, so a check-then-insert cannot interleave)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, where: str, *args: Any) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} WHERE {where}", args).fetchone()
        return _record(row) if row else None

    # ---- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self._one("id = ?", job_id)

    def count(self, state: JobState) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (state.value,)
            ).fetchone()[0]

    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state, zeros included)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {state: rows.get(state.value, 0) for state in JobState}

    def queued(self) -> list[JobRecord]:
        """The queued jobs in queue order (at most the queue's limit: a short list)."""
        with self._lock:
            rows = self._db.execute(f"{_SELECT} WHERE state = 'queued' ORDER BY seq").fetchall()
        return [_record(r) for r in rows]

    def page(self, limit: int, before: int | None = None) -> tuple[list[JobRecord], int | None]:
        """Up to `limit` jobs, newest first, older than the cursor `before` if given; and the
        cursor of the next page (None: this was the last)."""
        where = "seq < ?" if before is not None else "1"
        args = (before,) if before is not None else ()
        with self._lock:
            rows = self._db.execute(
                f"{_SELECT} WHERE {where} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_record(r) for r in rows], rows[-1][-1] if more else None

    def mean_run_seconds(self, last: int = 20) -> float | None:
        """Mean run time of the last `last` successful jobs: what a client told to retry
        should wait for a slot."""
        with self._lock:
            row = self._db.execute(
                "SELECT AVG(finished_at - started_at) FROM (SELECT finished_at, started_at "
                "FROM jobs WHERE state = 'succeeded' ORDER BY seq DESC LIMIT ?)", (last,)
            ).fetchone()
        return row[0]

    # ---- writes ------------------------------------------------------------------------------

    def add(self, job_id: str, params: dict[str, Any], *, max_queued: int,
            idempotency: Idempotency | None = None) -> str | None:
        """Queue a job unless `max_queued` jobs already wait (None when full); the id of the
        job that now stands for the request: `job_id`, or the one an earlier request with the
        same idempotency key and digest made (`KeyReused` if the digest differs)."""
        with self._transaction() as db:
            if idempotency is not None:
                row = db.execute("SELECT id, request_digest FROM jobs WHERE idempotency_key = ?",
                                 (idempotency.key,)).fetchone()
                if row is not None:
                    if row[1] != idempotency.digest:
                        raise KeyReused(row[0])
                    return str(row[0])
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if queued >= max_queued:
                return None
            db.execute(
                "INSERT INTO jobs (id, state, params, created_at, idempotency_key, "
                "request_digest) VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, json.dumps(params), time.time(),
                 idempotency.key if idempotency else None,
                 idempotency.digest if idempotency else None),
            )
        return job_id

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now marked running."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(_CLAIM, (time.time(), row[0]))
        return self.get(row[0])

    def claim(self, job_id: str) -> JobRecord | None:
        """`job_id`, now marked running, if it was still queued (no other worker took it and
        no client cancelled it meanwhile); else None."""
        with self._transaction() as db:
            claimed = db.execute(_CLAIM, (time.time(), job_id)).rowcount == 1
        return self.get(job_id) if claimed else None

    def set_progress(self, job_id: str, stage: str, step: int, total: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET stage = ?, step = ?, total = ? WHERE id = ?",
                       (stage, step, total, job_id))

    def finish(
        self, job_id: str, state: JobState, *, error: str | None = None,
        outputs: tuple[OutputFiles, ...] = (),
    ) -> None:
        assert state.final, state
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, outputs = ?, finished_at = ? WHERE id = ?",
                (state.value, error, json.dumps([asdict(o) for o in outputs]), time.time(),
                 job_id),
            )

    def requeue(self, job_id: str) -> None:
        """Back to the queue in its old place, if still running (a graceful shutdown
        interrupted it)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL, stage = NULL, step = 0, "
                "total = 0 WHERE id = ? AND state = 'running'", (job_id,),
            )

    def cancel_if_queued(self, job_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? "
                "WHERE id = ? AND state = 'queued'", (time.time(), job_id),
            )
        return cursor.rowcount == 1

    def fail_interrupted(self) -> list[str]:
        """At start-up: jobs left `running` by a process that died. Marked failed rather
        than re-queued, because the job itself may have killed the process (host memory,
        a driver fault) and would do it again on every restart."""
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'running'")]
            db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? "
                "WHERE state = 'running'", (RESTART_MESSAGE, time.time()),
            )
        return ids

    def expire(self, finished_before: float) -> list[str]:
        """Mark finished jobs older than the cut-off expired; their ids (files to delete).
        The rows stay, so a late client learns "expired" rather than "never existed"."""
        with self._transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                "AND finished_at < ?", (finished_before,),
            )]
            db.executemany("UPDATE jobs SET state = 'expired', outputs = '[]' WHERE id = ?",
                           [(i,) for i in ids])
        return ids

    def purge(self, finished_before: float) -> list[str]:
        """Delete the rows of expired jobs that finished before the cut-off; their ids."""
        with self._transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE state = 'expired' AND finished_at < ?",
                (finished_before,),
            )]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        return ids
