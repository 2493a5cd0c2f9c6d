"""Keeps a GPU training loop's thread and torch's backward thread for its GPU on one CPU, and helper threads off it.

A loop whose steps take a few ms is limited by launching kernels, and every step hands over to torch's autograd thread
for the device (backward) and back. Where the two threads run on different CPUs, each hand-over wakes an idle CPU; on
a virtual machine (as cloud GPUs are) that wake-up is a VM exit and a trip through the host's scheduler. Measured on
an H100 VM (torch 2.11, a hand-written loop, 2-layer Transformer, 8000-frame batches): 6.0 ms a step with the threads
free to move, 4.8 ms with both on one CPU, 6.0 ms with each pinned to a CPU of its own. On one CPU the hand-over is a
switch between two threads that never run at the same time (the loop waits while backward runs).

Loader threads and the checkpoint writer stay off that CPU (:meth:`LoopPinning.keep_off_loop_cpu`), so that they
neither take turns with the loop nor wait for it; so do processes forked while the loop is pinned (DataLoader
workers) and threads the loop's thread starts before its second step (a DataLoader's pinning thread, a custom
engine's loader; :meth:`LoopPinning.move_new_threads_off`). Threads it starts later share its CPU. Before pinning,
torch's CPU thread pool is started (its threads keep the affinity they are created with). Linux only
(``os.sched_setaffinity``); nothing elsewhere, and nothing where the process may use fewer than 2 CPUs. The masks
(the loop's, the autograd thread's, those of the threads moved off) are restored when the loop ends. The engine pins
its training loop on a GPU unless the config says ``pin_training_loop = False``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import ContextManager, Iterator, List, Optional, Set

import torch


def pinning_supported() -> bool:
    """Whether threads can be given CPU masks here (Linux)."""
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


def chosen_cpu(allowed: Set[int], *, local_rank: int = 0, local_world_size: int = 1) -> int:
    """The CPU for the loop of this process: with several processes on the node (``local_world_size`` > 1) they are
    spread over the CPUs they may use (distinct CPUs where they share one set); alone, the CPU the thread runs on
    now (the scheduler's choice, away from other busy processes)."""
    cpus = sorted(allowed)
    if local_world_size > 1:
        return cpus[(local_rank % local_world_size) * len(cpus) // local_world_size]
    current = _current_cpu()
    return current if current in allowed else cpus[0]


def pinned_training_loop(
    device: str, *, enabled: bool, local_rank: int = 0, distributed: bool = False
) -> ContextManager[None]:
    """:meth:`LoopPinning.pinned` for a training loop on `device`: on a CUDA device where `enabled` (the config's
    ``pin_training_loop``), else nothing. With `distributed`, the ranks on the node (``LOCAL_WORLD_SIZE``) take
    distinct CPUs."""
    torch_device = torch.device(device)
    if torch_device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if distributed else 1
    index = torch_device.index if torch_device.index is not None else torch.cuda.current_device()
    return LOOP_PINNING.pinned(index, local_rank=local_rank, local_world_size=local_world_size)


def _current_cpu() -> Optional[int]:
    try:
        return int(ctypes.CDLL(None).sched_getcpu())
    except (OSError, AttributeError):
        return None


def autograd_threads(device_index: int) -> List[int]:
    """Native ids of torch's autograd thread for CUDA device `device_index` (torch names it ``pt_autograd_<index>``;
    it exists once a backward ran on the device)."""
    name = f"pt_autograd_{device_index}"
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(tid))
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _start_intra_op_threads() -> None:
    # torch's CPU thread pool starts at the first parallel operation and its threads inherit the mask of the thread
    # that starts it: started inside the pinned loop, all of them would share the loop's CPU for good
    if torch.get_num_threads() > 1:
        torch.zeros(1 << 17).add_(1)


class LoopPinning:
    """Process-wide state: which CPU a pinned loop runs on, and the mask helper threads take meanwhile."""

    def __init__(self) -> None:
        self.loop_cpu: Optional[int] = None
        self._helper_mask: Optional[Set[int]] = None  # None: never pinned, helpers keep theirs
        self._generation = 0  # changes at every pin and unpin: helpers compare it to know when to update
        self._seen = threading.local()
        self._loop_thread: Optional[int] = None
        self._device_index: Optional[int] = None
        self._threads_before: Set[str] = set()  # the process's threads when the loop was pinned
        self._moved: List[int] = []  # threads moved off the loop's CPU, given every CPU back at the end

    @contextlib.contextmanager
    def pinned(self, device_index: Optional[int], *, local_rank: int = 0, local_world_size: int = 1) -> Iterator[None]:
        """Runs the calling thread (the training loop's) and torch's autograd thread for CUDA device `device_index`
        on one CPU for the duration; restores their masks (and those of threads moved off) after. Nothing where
        pinning is not supported, the process may use fewer than 2 CPUs, or a loop is pinned already."""
        if self.loop_cpu is not None or not pinning_supported():
            yield
            return
        allowed = os.sched_getaffinity(0)
        if len(allowed) < 2:
            yield
            return
        cpu = chosen_cpu(allowed, local_rank=local_rank, local_world_size=local_world_size)
        _start_intra_op_threads()
        self._set_state(cpu, allowed - {cpu})
        self._loop_thread, self._device_index = threading.get_native_id(), device_index
        self._threads_before = set(os.listdir("/proc/self/task"))
        self._moved = []
        try:
            os.sched_setaffinity(0, {cpu})
            self._set_autograd_masks(device_index, {cpu})  # one created later inherits the loop's mask
            yield
        finally:
            os.sched_setaffinity(0, allowed)
            self._set_autograd_masks(device_index, allowed)
            for tid in self._moved:
                with contextlib.suppress(OSError):  # the thread ended meanwhile
                    os.sched_setaffinity(tid, allowed)
            self._set_state(None, allowed)

    def keep_off_loop_cpu(self) -> None:
        """Called by a helper thread (a loader, the checkpoint writer) before each piece of work: while a loop is
        pinned, it runs on the other CPUs; after, on all of them again. A few attribute reads where nothing changed."""
        generation = self._generation
        if getattr(self._seen, "generation", 0) == generation:
            return
        self._seen.generation = generation
        mask = self._helper_mask
        if mask:
            with contextlib.suppress(OSError):  # a CPU taken away meanwhile (cgroup change): keep the thread's mask
                os.sched_setaffinity(0, mask)

    def move_new_threads_off(self) -> None:
        """Called by the pinned loop's thread after its first step: the threads started since it was pinned (which
        inherited its single CPU), other than torch's autograd thread for the device, move to the other CPUs."""
        if self.loop_cpu is None:
            return
        autograd = autograd_threads(self._device_index) if self._device_index is not None else []
        keep = {str(self._loop_thread)} | {str(tid) for tid in autograd}
        for tid in set(os.listdir("/proc/self/task")) - self._threads_before - keep:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                if os.sched_getaffinity(int(tid)) == {self.loop_cpu}:
                    os.sched_setaffinity(int(tid), self._helper_mask)
                    self._moved.append(int(tid))

    def _after_fork_in_child(self) -> None:
        # a process forked while a loop is pinned (a DataLoader worker) is no part of the loop
        if self.loop_cpu is not None and self._helper_mask:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._helper_mask)
            self._set_state(None, set())

    def _set_state(self, cpu: Optional[int], helper_mask: Set[int]) -> None:
        self.loop_cpu = cpu
        self._helper_mask = helper_mask
        self._generation += 1

    @staticmethod
    def _set_autograd_masks(device_index: Optional[int], mask: Set[int]) -> None:
        if device_index is None:
            return
        for tid in autograd_threads(device_index):
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, mask)


LOOP_PINNING = LoopPinning()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=LOOP_PINNING._after_fork_in_child)
