"""Brings dataset files to the node through the cluster's cache manager (the ``cf`` command), if there is one.

``cf PATH`` copies the file to node-local storage and prints the local copy's path. Where ``cf`` is missing
the original path is used; where it fails, the original path is used with a warning (training goes on,
reading over the network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict

from .log import log

CACHE_COMMAND = "cf"
_resolved: Dict[str, str] = {}


def cached_path(path: str, *, enabled: bool = True) -> str:
    """The node-local copy of `path` (or `path` itself where caching is off, unavailable or failing)."""
    if not enabled:
        return path
    if path in _resolved:
        return _resolved[path]
    command = shutil.which(CACHE_COMMAND)
    if command is None:
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
