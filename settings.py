"""Sisyphus settings: a local engine sized from this machine (CPU-only machines run the demo too).

For a cluster, replace ``engine()`` with the SLURM engine, e.g.::

    def engine():
        from sisyphus.engine import EngineSelector
        from sisyphus.localengine import LocalEngine
        from sisyphus.simple_linux_utility_for_resource_management_engine import (
            SimpleLinuxUtilityForResourceManagementEngine,
        )

        return EngineSelector(
            engines={
                "short": LocalEngine(cpu=4),
                "long": SimpleLinuxUtilityForResourceManagementEngine(default_rqmt={"cpu": 1, "mem": 4, "time": 1}),
            },
            default_engine="long",
        )

Dataset files reach cluster nodes through the cache manager (``cf``) where one is installed; for local runs
nothing needs to be done (without ``cf`` the files are read where they are; ``use_cache_manager=False`` in a
dataset dict turns it off explicitly).
"""

import os
import shutil
import subprocess
import sys

# Recipes import `jobs` (and the jobs `i6_minireturnn`) from the repository root, so the root goes on the path.
# `__file__` cannot name it: Sisyphus exec()s this file inside its own `sisyphus.global_settings` module, where
# `__file__` is Sisyphus' file. Sisyphus reads `settings.py` from the working directory and every `sis` command
# (manager, console, and the workers it starts) runs from the setup's root, so the working directory is the root.
sys.path.insert(0, os.getcwd())

WAIT_PERIOD_JOB_FS_SYNC = 1  # local file system: no need to wait for other nodes to see files
WAIT_PERIOD_BETWEEN_CHECKS = 2
WAIT_PERIOD_CACHE = 1
WAIT_PERIOD_JOB_CLEANUP = 1
WAIT_PERIOD_MTIME_OF_INPUTS = 1
JOB_AUTO_CLEANUP = False
SHOW_JOB_TARGETS = False


def _num_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def engine():
    """A local engine with this machine's CPUs, memory and GPUs (none where there are none)."""
    from sisyphus.localengine import LocalEngine

    return LocalEngine(cpu=os.cpu_count() or 1, gpu=_num_gpus(), mem=int(_memory_gb()))
