"""Brings input files to the node through the cluster's cache manager (the ``cf`` command), if there is one.

``cf PATH`` copies the file to node-local storage and prints the local copy's path. Dataset files (HDF, OggZip; a
dataset dict's ``use_cache_manager`` switches it) and the checkpoints a config names as input (``load``,
``import_model_train_epoch1``, ``preload_from_files`` entries; the top-level ``use_cache_manager`` and an entry's own
``use_cache_manager`` switch it) go through here; the run's own epoch files are written and read in place. Where
``cf`` is missing the original path is used and the log says so once; where it fails, the original path is used with
a warning (the run goes on, reading over the network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict

from .log import log

CACHE_COMMAND = "cf"
_resolved: Dict[str, str] = {}
_missing_reported = False  # the note that no `cf` is on PATH is logged once per process, not once per file


def cached_path(path: str, *, enabled: bool = True) -> str:
    """The node-local copy of `path` (or `path` itself where caching is off, unavailable or failing)."""
    if not enabled:
        return path
    if path in _resolved:
        return _resolved[path]
    command = shutil.which(CACHE_COMMAND)
    if command is None:
        _report_missing_command()
        return path
    try:
        result = subprocess.run([command, path], capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"WARNING: cache manager failed for {path} ({exc}); using the original path", file=log.v2)
        return path
    local = result.stdout.strip().splitlines()[-1].strip() if result.stdout.strip() else ""
    if result.returncode != 0 or not local or not os.path.exists(local):
        reason = result.stderr.strip() or f"exit status {result.returncode}, output {result.stdout.strip()!r}"
        print(f"WARNING: cache manager failed for {path} ({reason}); using the original path", file=log.v2)
        return path
    _resolved[path] = local
    print(f"Cache manager: {path} -> {local}", file=log.v4)
    return local


def _report_missing_command(max_folders: int = 12) -> None:
    """Logs once that caching was asked for but no ``cf`` is on PATH, with PATH's folders: on a cluster this is
    usually a PATH reset by the job scheduler (Sisyphus workers get ``DEFAULT_ENVIRONMENT_SET["PATH"]``)."""
    global _missing_reported
    if _missing_reported:
        return
    _missing_reported = True
    folders = [f for f in os.environ.get("PATH", "").split(os.pathsep) if f]
    shown = ", ".join(folders[:max_folders]) or "empty"
    if len(folders) > max_folders:
        shown += f", ... ({len(folders) - max_folders} more)"
    print(f"Cache manager: {CACHE_COMMAND!r} not found on PATH ({shown}); files are read where they are", file=log.v3)
