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

Dataset files and input checkpoints reach cluster nodes through the cache manager (``cf``) where one is installed;
for local runs nothing needs to be done (without ``cf`` the files are read where they are; ``use_cache_manager=False``
in a dataset dict, a ``preload_from_files`` entry or at the config's top level turns it off explicitly). The ``cf`` that
the manager finds on its PATH is made visible to the jobs, whose PATH Sisyphus resets (see below).
"""

import os
import shutil
import subprocess
import sys

from sisyphus.global_settings import DEFAULT_ENVIRONMENT_SET

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
# Sisyphus' job cleanup stays on (its default): a finished job's work folder is deleted and its logs are packed into
# finished.tar.gz. Every output of the jobs here is a real file in output/, so downstream jobs are not affected.
SHOW_JOB_TARGETS = False
# A task counts as running while its worker's usage file is fresh: Sisyphus' default of 60 s between writes lets a
# killed worker (lost node, preemption, kill -9) look alive for a minute before it is resubmitted; 5 s (the worker's
# own logging interval) notices it at once. Raise it on a cluster whose shared file system should see fewer writes.
PLOGGING_UPDATE_FILE_PERIOD = 5


def _path_with_cache_manager(path: str) -> str:
    """`path` (a PATH value) with the folder of the ``cf`` on the manager's PATH appended, unless it is in it already.
    Sisyphus passes the value through ``string.Template``, so a ``$`` in the folder name is escaped."""
    command = shutil.which("cf")
    folder = os.path.dirname(os.path.abspath(command)) if command else None
    if folder is None or folder in path.split(os.pathsep):
        return path
    return f"{path}{os.pathsep}{folder.replace('$', '$$')}" if path else folder.replace("$", "$$")


# Sisyphus starts every job task with a cleaned environment (CLEANUP_ENVIRONMENT) whose PATH is
# DEFAULT_ENVIRONMENT_SET["PATH"], a fixed list of system folders, so a `cf` installed elsewhere would silently never
# be called and every file would be read over the network. The folder of the `cf` this manager finds is added to the
# jobs' PATH (after the system folders, which keep their precedence). A job carries this environment from the manager
# to its worker, so the manager's PATH is the one that counts. This file runs inside `sisyphus.global_settings`, which
# defines DEFAULT_ENVIRONMENT_SET (the import above names where it comes from; it is the same dict).
if "PATH" in DEFAULT_ENVIRONMENT_SET:
    DEFAULT_ENVIRONMENT_SET["PATH"] = _path_with_cache_manager(str(DEFAULT_ENVIRONMENT_SET["PATH"]))


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
