"""How many loader threads a dataset gets on a GPU where the config does not say (``num_workers_per_gpu`` unset).

A dataset whose loading decodes audio (OggZip with features) keeps one loader busy for much longer than a training
step: with one loader the GPU waits. Measured on one H100 with 16 CPUs, an i6 Conformer on Vorbis audio: epoch
11.2 s with one loader thread (computing 34% of the time), 5.1 s with four. Such a dataset gets one loader per CPU
this process may use, keeping two for the training loop's thread and torch's backward thread, at most
:data:`MOST_LOADERS`. Reading arrays (HDF) is cheap: one loader keeps up, and more would only take Python's lock
from a loop limited by kernel launches (see benchmarks/RESULTS.md); those keep one. On the CPU the loop's own
threads use the cores: one loader, as before.

The CPUs this process may use are the fewest of: its affinity mask, the cgroup's CPU quota (a container, a Slurm job
with cgroup limits), ``SLURM_CPUS_PER_TASK``; several ranks on a node (``LOCAL_WORLD_SIZE``) share them.
"""

from __future__ import annotations

import math
import os
from typing import List, Mapping, Optional, Tuple

MOST_LOADERS = 8
KEPT_FOR_THE_LOOP = 2
# what the jobs ask for per GPU process by default (``cpu_rqmt``): enough that a dataset decoding audio gets the most
# loaders this rule gives
GPU_PROCESS_CPUS = MOST_LOADERS + KEPT_FOR_THE_LOOP
CPU_PROCESS_CPUS = 2


def usable_cpus(environ: Mapping[str, str] = os.environ, cgroup_root: str = "/sys/fs/cgroup") -> Tuple[int, str]:
    """(number of CPUs this process may use, which limits were found), e.g. ``(14, "affinity 16, cgroup quota
    14")``."""
    limits: List[Tuple[int, str]] = []
    if hasattr(os, "sched_getaffinity"):
        limits.append((len(os.sched_getaffinity(0)), "affinity"))
    else:
        limits.append((os.cpu_count() or 1, "CPU count"))
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        limits.append((quota, "cgroup quota"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    count = max(1, min(n for n, _ in limits))
    return count, ", ".join(f"{what} {n}" for n, what in limits)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """The CPUs the cgroup's quota allows (rounded up), None without a quota: cgroup v2 ``cpu.max`` ("max 100000"
    or "QUOTA PERIOD"), else v1 ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota -1: none)."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period or 100000)))
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read().strip())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else max(1, math.ceil(quota_us / period_us))


def decoding_loaders(environ: Mapping[str, str] = os.environ, cgroup_root: str = "/sys/fs/cgroup") -> Tuple[int, str]:
    """(loader threads for a dataset that decodes audio, why) for one rank of ``LOCAL_WORLD_SIZE`` on the node."""
    cpus, limits = usable_cpus(environ, cgroup_root)
    ranks = environ.get("LOCAL_WORLD_SIZE", "1")
    ranks_on_node = int(ranks) if ranks.isdigit() and int(ranks) > 0 else 1
    per_rank = max(1, cpus // ranks_on_node)
    count = max(1, min(MOST_LOADERS, per_rank - KEPT_FOR_THE_LOOP))
    why = f"{cpus} CPUs usable ({limits})"
    if ranks_on_node > 1:
        why += f", {per_rank} for each of {ranks_on_node} ranks on this node"
    why += f"; {KEPT_FOR_THE_LOOP} kept for the training loop, at most {MOST_LOADERS}"
    return count, why
