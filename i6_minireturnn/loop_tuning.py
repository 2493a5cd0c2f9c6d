"""Loop tuning: what keeps a GPU training loop limited by kernel launches fed and undisturbed, with one owner.

The data pipeline and the engine see one object, :data:`LOOP_TUNING`:

- the engine enters :meth:`LoopTuning.training_loop` around its training loop (the config keys
  ``data_loader_pacing`` and ``pin_training_loop``), opens :meth:`LoopTuning.window` where the loop's thread runs
  without Python's lock (backward, waiting for a batch), and calls :meth:`LoopTuning.after_first_step`;
- a loader thread does each batch's work inside :meth:`LoopTuning.loading` and calls
  :meth:`LoopTuning.between_sequences` between the sequences it loads; the checkpoint writer calls
  :meth:`LoopTuning.helper_thread` before each file;
- a process forked while a loop is pinned (a DataLoader worker) leaves the loop's CPU (an ``os.register_at_fork``
  hook here; the other fork rules sit with the state they protect: the run lock, the stack dump, the HDF writer,
  and the checkpoint writer, which finishes its files before a fork).

Two mechanisms, each with its measured price in benchmarks/RESULTS.md:

Pacing. A training loop whose steps take a few ms needs Python's lock almost all the time, releasing it only inside
each torch call. A loader thread that wants the lock takes it there, and the loop then waits until the loader hands
it back. While the training loop is paced, a loader thread that works on a batch the loop does not need next waits
between sequences until the loop opens a window (backward runs in C++ on the autograd engine's thread, which takes
the lock only briefly, about once per layer; the loop's wait for a batch needs no lock). The batch the loop needs
next is always loaded at once (a loader that waited while its batch was further ahead goes on when the loop takes
the batch before), so a loader that falls behind runs as it would unpaced. Only a dataset read by one loader thread
is paced: several loaders are there because loading is the limit (decoding audio), and eight Vorbis-decoding threads
paced took 6.9 s an epoch against 5.9 s unpaced (benchmarks/RESULTS.md). Evaluation, forwarding and training on the
CPU are not paced: there the loop computes itself, its backward opens hardly any window, and a paced loader started
each batch only when the loop took the one before (loading and the loop in turn: on 2 CPUs a config-level 4.6 M
frames/s where loading in the loop's own thread gave 8.8 M).

Pinning. Every step hands over to torch's autograd thread for the device (backward) and back. Where the two threads
run on different CPUs, each hand-over wakes an idle CPU; on a virtual machine (as cloud GPUs are) that wake-up is a
VM exit and a trip through the host's scheduler. So on a GPU the loop's thread and the autograd thread run on one
CPU while the loop runs, and helper threads (loaders, the checkpoint writer), processes forked meanwhile and threads
the loop's thread starts before its second step run on the other CPUs. Before pinning, torch's CPU thread pool is
started (its threads keep the affinity they are created with). Linux only (``os.sched_setaffinity``); nothing
elsewhere, and nothing where the process may use fewer than 2 CPUs. Every mask is restored when the loop ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Callable, ContextManager, Iterator, List, Optional, Set

import torch

# ---- pacing --------------------------------------------------------------------------------------------------------

# a paced loader waits at most this long for a window: a loop that opens none (a custom step without backward) then
# still gets its batches read ahead, only later
_LONGEST_WAIT = 0.05


class LoaderPacing:
    """The windows in which paced loader threads may run (see the module)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()  # notified when a window opens or a loader's batch becomes needed
        self._open = True
        self._paced = False

    @property
    def paced(self) -> bool:
        """Whether a training loop paces the loader threads now."""
        return self._paced

    @property
    def window_open(self) -> bool:
        """Whether paced loader threads may run now (always where no loop is paced)."""
        return self._open

    @contextlib.contextmanager
    def training(self, paced: bool = True) -> Iterator[None]:
        """Paces loader threads (outside windows, those ahead of the loop wait) for the duration; nothing where not
        `paced` (the config's ``data_loader_pacing = False``)."""
        if self._paced or not paced:  # nested: the outer one decides
            yield
            return
        self._paced = True
        self._open = False
        try:
            yield
        finally:
            with self._changed:
                self._paced = False
                self._open = True
                self._changed.notify_all()

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """Around a part of the loop that runs without Python's lock (backward; waiting for a batch): paced loader
        threads may run. Costs two cheap calls; nothing where no loop is paced."""
        if not self._paced or self._open:
            yield
            return
        with self._changed:
            self._open = True
            self._changed.notify_all()
        try:
            yield
        finally:
            self._open = not self._paced

    def next_batch_pending(self) -> None:
        """Called by the loop's thread when it has taken a batch and the next one is not ready: its loader may have
        waited for a window while that batch was further ahead; it goes on now."""
        if self._paced:
            with self._changed:
                self._changed.notify_all()

    def wait_for_window(self, ahead: Callable[[], bool]) -> None:
        """Called by a loader thread between pieces of work on a batch: while `ahead()` (the loop does not need this
        batch next) and the loop is paced, waits for a window."""
        if self._open or not ahead():
            return
        with self._changed:
            while not self._open and ahead():
                if not self._changed.wait(_LONGEST_WAIT):
                    return  # no window came: go on


# ---- pinning ------------------------------------------------------------------------------------------------------


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
    return LOOP_TUNING.pinning.pinned(index, local_rank=local_rank, local_world_size=local_world_size)


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


# ---- the one object ----------------------------------------------------------------------------------------------


class LoopTuning:
    """Pacing and pinning for the process's one training loop (see the module)."""

    def __init__(self) -> None:
        self.pacing = LoaderPacing()
        self.pinning = LoopPinning()
        self._loading = threading.local()  # a loader thread's `ahead` predicate while it loads a batch

    def training_loop(
        self, device: str, *, paced: bool, pinned: bool, local_rank: int = 0, distributed: bool = False
    ) -> ContextManager[None]:
        """Around a training loop on `device`: on a GPU, paces loader threads where `paced` and pins the loop where
        `pinned` (with `distributed`, the ranks on the node take distinct CPUs). On the CPU neither: the loop computes
        there itself, and a paced loader would wait for windows its short backward hardly opens."""
        on_gpu = torch.device(device).type == "cuda"
        stack = contextlib.ExitStack()
        stack.enter_context(self.pacing.training(paced and on_gpu))
        stack.enter_context(
            pinned_training_loop(device, enabled=pinned, local_rank=local_rank, distributed=distributed)
        )
        return stack

    def window(self) -> ContextManager[None]:
        """Around a part of the loop that runs without Python's lock: paced loader threads may run."""
        return self.pacing.window()

    def after_first_step(self) -> None:
        """Threads the pinned loop's thread started during its first step leave its CPU."""
        self.pinning.move_new_threads_off()

    def helper_thread(self) -> None:
        """Called by a helper thread before each piece of work: off a pinned loop's CPU."""
        self.pinning.keep_off_loop_cpu()

    @contextlib.contextmanager
    def loading(self, ahead: Callable[[], bool], *, loaders: int) -> Iterator[None]:
        """Around a loader thread's work on one batch; `ahead()`: the loop does not need this batch next; `loaders`:
        the threads loading this dataset. Only a single loader is paced (several are there because loading is the
        limit, see the module)."""
        self.pinning.keep_off_loop_cpu()
        previous = getattr(self._loading, "ahead", None)
        self._loading.ahead = ahead if loaders == 1 else None
        try:
            yield
        finally:
            self._loading.ahead = previous

    def between_sequences(self) -> None:
        """Called by the loading code between sequences: inside :meth:`loading` of a batch the loop does not need
        next, while the loop is paced, waits for a window. Nothing on other threads."""
        ahead = getattr(self._loading, "ahead", None)
        if ahead is not None:
            self.pacing.wait_for_window(ahead)

    def next_batch_pending(self) -> None:
        """The loop took a batch and the next is not ready: its loader stops waiting for a window."""
        self.pacing.next_batch_pending()


LOOP_TUNING = LoopTuning()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=LOOP_TUNING.pinning._after_fork_in_child)
