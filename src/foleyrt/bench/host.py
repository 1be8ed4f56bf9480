"""The benches' host memory: this process's resident set, sampled on a thread while the
measured work runs (its peak, not its end, is what a machine must have)."""

from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path

HOST_SAMPLE_S = 0.02


def resident_bytes() -> int:
    """The resident set of this process now (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * resource.getpagesize()


def peak_gb(sampled: int) -> float:
    """The sampled peak in GiB; without /proc (nothing sampled), the process's lifetime peak
    (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    if sampled:
        return sampled / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class HostPeak:
    """The largest resident set while the block runs."""

    def __init__(self, interval_s: float = HOST_SAMPLE_S) -> None:
        self.peak = 0
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> HostPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return peak_gb(self.peak)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, resident_bytes())
            if self._stop.wait(self.interval_s):
                return
