"""Measuring helpers: CUDA synchronisation, peak memory of a region, matmul FLOP ceiling.

Peak memory: on a CPU the process's resident-set high-water mark (``VmHWM``), reset at the
start of a region via ``/proc/self/clear_refs`` after ``malloc_trim``; on CUDA
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (see ``common``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import resource
import time
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device | None) -> None:
    """Wait for queued CUDA work (no-op on a CPU), so that wall times cover it."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that the RSS at the
    start of a region is live memory rather than what an earlier region freed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_method(device: torch.device) -> str:
    """What :class:`PeakMemory` measures on this device (for the results file)."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (tensors)"
    return ("process RSS high-water (VmHWM reset via /proc/self/clear_refs after malloc_trim)"
            if Path("/proc/self/clear_refs").exists() else "process RSS high-water (getrusage)")


class PeakMemory:
    """Peak memory of a region (see the module docstring): ``with PeakMemory(device) as m:``,
    then ``m.result()`` → ``{"peak_bytes", "start_bytes", "peak_above_start", "method"}``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (tensors)"
        else:
            gc.collect()
            _release_free_memory()
            self.reset = _reset_rss_peak()
            rss = _status_kib("VmRSS")
            self.start = rss * 1024 if rss is not None else 0
            self.method = ("process RSS high-water (VmHWM reset via /proc/self/clear_refs "
                           "after malloc_trim)"
                           if self.reset else "process RSS high-water since start (getrusage; no reset)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _status_kib("VmHWM") if self.reset else None
            self.peak = hwm * 1024 if hwm is not None else \
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def result(self) -> dict[str, Any]:
        return {"peak_bytes": int(self.peak), "start_bytes": int(self.start),
                "peak_above_start": int(max(0, self.peak - self.start)), "method": self.method}


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, size: int = 8192,
                  seconds: float = 3.0) -> float:
    """Measured dense matmul throughput in TFLOP/s: ``size``³ matmuls of ``dtype`` in a loop
    for about ``seconds``, 2·size³ FLOPs each. The MFU denominator (bf16 on a GPU)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
        if calls % 10 == 0:
            sync(device)
    sync(device)
    elapsed = time.perf_counter() - start
    return 2 * size ** 3 * calls / elapsed / 1e12
