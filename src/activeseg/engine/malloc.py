"""Keep freed CPU memory in the process (glibc), so large tensors stop paying for fresh pages.

glibc serves an allocation above its mmap threshold with new pages from the kernel and hands them back on free; it
also trims the heap's top whenever more than the trim threshold lies free there. A U-Net step on a CPU allocates
and frees tens of megabytes per layer, so every step faults in and zeroes the same amount of fresh memory again.
:func:`keep_freed_memory` raises both thresholds through ``mallopt``: the next step reuses the pages the last one
freed. On the clinical plan's 120×128×48 patch (2 threads, AVX-512 EPYC) a training step took 0.55 and 0.50 s
before, 0.39 and 0.42 s after, and MONAI Label's K sliding-window passes ran about a sixth faster; activeseg's own
scoring did not change (``benchmarks/pipeline_benchmark.py --parts speed``, run with each setting; BENCHMARKS.md).
Neither threshold alone helps.

The cost: memory a process has freed stays in it until it exits, so its resident size stays at its high-water
mark (peak memory itself is unchanged: ``benchmarks/score_memory.py``). ``ACTIVESEG_MALLOC=system`` keeps glibc's
defaults. Elsewhere (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers (glibc's malloc.h)."""
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
"""Tried in order: 1 GiB, then the 32 MiB that older glibc versions accept at most."""
TRIM_THRESHOLD = (1 << 31) - 1
OPT_OUT = "ACTIVESEG_MALLOC"
_state = {"kept": False}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring); True if they were
    raised. Idempotent; a no-op off glibc or with ``ACTIVESEG_MALLOC=system``. Forked workers inherit it."""
    if os.environ.get(OPT_OUT, "").strip().lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not any(libc.mallopt(M_MMAP_THRESHOLD, value) for value in MMAP_THRESHOLDS):
        return False
    _state["kept"] = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _state["kept"]


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has raised the thresholds in this process (or the one it forked from)."""
    return _state["kept"]
