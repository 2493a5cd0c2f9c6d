"""Freed batch buffers stay in the process: a loader thread that allocates batches the loop frees does not page-fault
on every page of every batch (i6_minireturnn/data/batch_memory.py). Run in fresh processes: the thresholds are
process-wide."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest

EPOCH = """
import queue, resource, sys, threading
import numpy as np
from i6_minireturnn.data.batch_memory import keep_freed_batch_memory
if sys.argv[1] == "kept":
    assert keep_freed_batch_memory()

def epoch():  # a loader thread collates 40 batches of about 7 MB, two in flight; this thread frees them
    batches = queue.Queue(maxsize=2)
    def load():
        for i in range(40):
            batch = np.empty((20000 + 500 * (i % 7), 80), np.float32)
            batch[...] = 1.0
            batches.put(batch)
        batches.put(None)
    loader = threading.Thread(target=load)
    loader.start()
    while batches.get() is not None:
        pass
    loader.join()

epoch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    epoch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, env=None) -> int:
    out = subprocess.run([sys.executable, "-c", EPOCH, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_thresholds_spare_the_page_faults_of_fresh_batches():
    # 120 batches of about 1700 pages each: without the fixed thresholds most of their pages fault anew (glibc's own
    # raising of the mmap threshold helps in some runs, depending on how the threads meet: 1 100-33 000 faults on a
    # busy 2-CPU machine, median 17 000). With them only the heap's growth to a new high-water mark faults, which
    # depends on how many batches are in flight at once: 7-2 600 there, median under 1 000. So the median of five
    # runs is compared.
    assert statistics.median(_faults("kept") for _ in range(5)) < 4000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_users_malloc_environment_is_kept():
    import os

    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "1000000"}
    code = "from i6_minireturnn.data.batch_memory import keep_freed_batch_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
