"""Result expiry: finished jobs older than the time-to-live lose their files, on a timer.

Disk is the resource a busy server runs out of first (every sample is a WAV, a PNG and an
MP4); the rows stay, marked expired, so clients are told what happened to their results.
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


class Janitor:
    """Runs `expire_results` every `interval_s` on a daemon thread until stopped."""

    def __init__(self, store: JobStore, files: DataDir, *, ttl_s: float,
                 interval_s: float) -> None:
        self.store = store
        self.files = files
        self.ttl_s = ttl_s
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
                expire_results(self.store, self.files, self.ttl_s)
            except Exception:  # a full disk today must not end expiry for good
                log.exception("result expiry failed; retrying next round")
