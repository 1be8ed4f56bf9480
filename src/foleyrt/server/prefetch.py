"""Queued video jobs' clips decoded in processes, ahead of their claim (`--decode-in
processes`, the default on a GPU).

A worker runs a batch on the GPU while the next jobs wait in the queue; decoding their clips
then (PyAV decode and resize: CPU work, a second or more per 10 s 720p clip) keeps it from
doing so later, with the GPU idle. Whenever a job is queued or a batch claimed, the oldest
queued video jobs (up to `AHEAD_CLIPS`) are decoded in a `DecodePool`, the batch mode's
decoding processes (no GIL shared with the GPU threads; a crash costs one job). The jobs stay
queued meanwhile: their place, `queue_position`, cancelling and which worker claims them are
unchanged. The worker that claims one takes its frames and only runs the encoders; a job
claimed before its decoding started is decoded then, in the same processes, so a job's sound
never depends on whether it was decoded ahead (on the CPU, the release's resizes: the same
frames `foleyrt batch` decodes). The frames of a job that ended while queued (cancelled,
expired) are dropped at the next look ahead. A batch takes as companions only jobs whose
clip is decoded (`waiting` tells the others), and each clip decoded wakes the workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from foleyrt.batch.decoders import DecodePool
from foleyrt.batch.stages import decode_source
from foleyrt.media.video import DecodedClip, VideoLimits
from foleyrt.server.files import DataDir
from foleyrt.server.schemas import JobParams
from foleyrt.server.store import JobRecord, JobStore

# Clips decoded or decoding ahead, at most: a full batch's (16 guided jobs fill the default
# 32 rows), about 100 MB of frames each for a 10 s clip.
AHEAD_CLIPS = 16


class ClipPrefetch:
    """The decoding processes and the clips decoded ahead, by job id; shared by every
    worker. Thread-safe."""

    def __init__(self, store: JobStore, files: DataDir, limits: VideoLimits,
                 workers: int, stopping: Callable[[], bool],
                 decoded: Callable[[], None]) -> None:
        self._store = store
        self._stopping = stopping  # the server drains: queued jobs wait for the next start
        self._decoded = decoded  # called as each clip decoded ahead is ready (or failed)
        self._files = files
        self._limits = limits
        self._decoders = DecodePool(workers)
        # One thread per process waits for its clip (`DecodePool.run` blocks its caller).
        self._waiters = ThreadPoolExecutor(workers, thread_name_prefix="foleyrt-decode")
        self._lock = threading.Lock()
        self._ahead: dict[str, Future[DecodedClip | Path]] = {}
        self.taken_ahead = 0  # claimed jobs whose decoding had started before their claim

    def look_ahead(self) -> None:
        """Start decoding the oldest queued video jobs not started yet, while fewer than
        `AHEAD_CLIPS` are held; drop those of jobs that ended while queued. Nothing while
        the server stops."""
        if self._stopping():
            return
        queued = self._store.queued()
        with self._lock:
            waiting = {record.id for record in queued}
            for job_id in [j for j in self._ahead if j not in waiting and self._ended(j)]:
                self._ahead.pop(job_id).cancel()
            for record in queued:
                if len(self._ahead) >= AHEAD_CLIPS:
                    break
                if record.id not in self._ahead and _has_video(record):
                    future = self._waiters.submit(self._decode, record)
                    future.add_done_callback(lambda _: self._decoded())
                    self._ahead[record.id] = future

    def take(self, record: JobRecord) -> DecodedClip | Path:
        """The claimed job's clip: decoded ahead, or now (same processes, same frames).
        Raises what its decoding raised (a `MediaError` for a bad clip)."""
        with self._lock:
            future = self._ahead.pop(record.id, None)
            if future is not None:
                self.taken_ahead += 1
        return self._decode(record) if future is None else future.result()

    def waiting(self, record: JobRecord) -> bool:
        """Whether the queued job has a clip not decoded yet (decoding, or not started)."""
        with self._lock:
            future = self._ahead.get(record.id)
        return _has_video(record) and (future is None or not future.done())

    def held(self) -> set[str]:
        """The ids of the jobs whose clips are decoded or decoding ahead."""
        with self._lock:
            return set(self._ahead)

    def close(self) -> None:
        self._waiters.shutdown(cancel_futures=True)
        self._decoders.shutdown()

    def _decode(self, record: JobRecord) -> DecodedClip | Path:
        request = JobParams.of(record).generation_request(
            self._limits.max_seconds)
        return self._decoders.run(decode_source, self._files.input_path(record.id), request,
                                  self._limits)

    def _ended(self, job_id: str) -> bool:
        record = self._store.get(job_id)
        return record is None or record.state.final


def _has_video(record: JobRecord) -> bool:
    return not JobParams.of(record).text_only
