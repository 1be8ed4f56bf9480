"""Result expiry: finished jobs older than the time-to-live lose their files, on a timer, and
their rows go once `record_ttl_s` more has passed.

Disk is the resource a busy server runs out of first (every sample is a WAV, a PNG and an
MP4); the rows stay a while, marked expired, so clients are told what happened to their
results, and then go too, so the database does not grow forever.
"""

from __future__ import annotations

import logging
import threading
import time

from foleyrt.server.files import DataDir
from foleyrt.server.store import JobStore

log = logging.getLogger(__name__)


def expire_results(store: JobStore, files: DataDir, ttl_s: float) -> list[str]:
    """Expire every job finished more than `ttl_s` ago; the ids expired."""
    ids = store.expire(finished_before=time.time() - ttl_s)
    for job_id in ids:
        files.remove_job(job_id)
    if ids:
        log.info("expired the results of %d job(s)", len(ids))
    return ids


def purge_records(store: JobStore, files: DataDir, finished_before: float) -> list[str]:
    """Delete the rows of jobs expired and finished before the cut-off (and any file left of
    them, so no folder outlives its row)."""
    ids = store.purge(finished_before)
    for job_id in ids:
        files.remove_job(job_id)
    if ids:
        log.info("purged the records of %d expired job(s)", len(ids))
    return ids


def tidy(store: JobStore, files: DataDir, ttl_s: float, record_ttl_s: float) -> None:
    """One round: expire what is older than `ttl_s`, purge rows `record_ttl_s` past that."""
    expire_results(store, files, ttl_s)
    purge_records(store, files, time.time() - ttl_s - record_ttl_s)


class Janitor:
    """Expires results and purges old records every `interval_s` on a daemon thread."""

    def __init__(self, store: JobStore, files: DataDir, *, ttl_s: float, record_ttl_s: float,
                 interval_s: float) -> None:
        self.store = store
        self.files = files
        self.ttl_s = ttl_s
        self.record_ttl_s = record_ttl_s
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="foleyrt-janitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                tidy(self.store, self.files, self.ttl_s, self.record_ttl_s)
            except Exception:  # a full disk today must not end expiry for good
                log.exception("result expiry failed; retrying next round")
