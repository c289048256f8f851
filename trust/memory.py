"""Peak memory of one job, measured the same way for every method.

    with PeakMemory(device) as memory:
        ...
    memory.peak_mb  # the most memory the block held above what was in use when it began

On a GPU this is torch's own count of allocated bytes (its peak statistics are reset
on entry). On a CPU it is the process's resident set, sampled every few milliseconds
by a thread, above the resident set at entry: `ru_maxrss` is a peak over the whole
process and would charge each method for the ones that ran before it. On entry, memory that
earlier work freed is handed back to the system (glibc's `malloc_trim`), or a job that reuses
it would look as if it needed none.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
import threading

import torch

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4 / 1024


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except OSError:  # no /proc (macOS): fall back to the process-wide peak
        return None


def _release_freed_memory() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: RSS then over-reports reuse as nothing
        pass


class PeakMemory:
    """A context manager; `peak_mb` is valid after exit (and, on a CPU, updated while inside)."""

    def __init__(self, device: torch.device | str, interval_s: float = 0.005):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._start_mb = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        _release_freed_memory()
        rss = _rss_mb()
        if rss is None:
            self._start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return self
        self._start_mb = rss
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self._note(_rss_mb() or 0.0)

    def _note(self, mb: float) -> None:
        self.peak_mb = max(self.peak_mb, mb - self._start_mb)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._note(torch.cuda.max_memory_allocated(self.device) / 2**20)
        elif self._thread is None:
            self._note(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        else:
            self._done.set()
            self._thread.join()
            self._note(_rss_mb() or 0.0)
