"""Batch memory: freed batch buffers stay in the process, so that the next batches reuse them.

Every batch is collated into fresh buffers of several MB. glibc's malloc gives such a block back to the operating
system when it is freed (above its mmap threshold) and trims freed memory at the top of its heaps, so a loader
thread that allocates the buffers while the training loop frees them page-faults on every page of every batch
again. Measured on 2 CPUs: one loader thread reading HDF batches of 40k frames x 80 made about 30 000 minor page
faults an epoch and 6.4-6.7 M frames/s; with fixed thresholds a few hundred faults and 9.0-10.5 M frames/s
(benchmarks/RESULTS.md). So, once per process, before the first epoch's batches, the thresholds are fixed:
blocks up to 32 MB (glibc's largest threshold on 64-bit) come from the heaps, and up to 64 MB of freed memory stays
there. Linux with glibc only; a process whose environment sets ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` keeps its own choice.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 64 * 2**20
_done = False


def keep_freed_batch_memory() -> bool:
    """Fixes malloc's thresholds for this process (see the module), once; whether they are fixed."""
    global _done
    if _done:
        return True
    users_choice = "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
    if not sys.platform.startswith("linux") or users_choice:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # the trim threshold only after the mmap threshold: fixed alone, it stops glibc raising the mmap threshold itself
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
