"""Loader threads that stay out of the training loop's way: while they are ahead of it, they take Python's lock only
while the loop's own thread runs without it (back-propagation, waiting for a batch).

A training loop whose steps take a few ms is limited by launching kernels: it needs Python's lock almost all the time,
releasing it only inside each torch call. A loader thread that wants the lock takes it there, and the loop then waits
until the loader hands it back: per batch, the loader's collation costs the loop a share of its step rate (measured on
an H100 with a 2-layer model: 5-12% with the default single worker thread). Back-propagation runs in C++ on the
autograd engine's thread, which takes the lock only briefly, about once per layer (torch 2.11-2.13; a loader's Python
work there still delays it, but less than in the forward pass, where the loop's thread itself launches kernels:
measured 0.969 paced against 0.932 unpaced). So while the training loop is paced (:meth:`LoaderPacing.training`),
a loader thread that works on a batch the loop does not need next waits between its pieces of work (sequences,
collation) until the loop opens a window (:meth:`LoaderPacing.window`: the updater's backward, the loop's wait for a
batch). The batch the loop needs next is always loaded at once (a loader that waited while its batch was further
ahead goes on when the loop takes the batch before), so a loader that falls behind runs as it would unpaced. The
read-ahead also hands a loader thread the load of a batch that is not needed next only in a window
(:meth:`LoaderPacing.at_next_window`): the woken thread wants the lock at once.

One training loop per process: the pacing is process-wide (:data:`PACING`). The engine paces its training loop unless
the config says ``data_loader_pacing = False``; evaluation and forwarding are not paced.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, List

# a paced loader waits at most this long for a window: a loop that opens none (a custom step without backward) then
# still gets its batches read ahead, only later
_LONGEST_WAIT = 0.05


class LoaderPacing:
    """The windows in which paced loader threads may run (see the module)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()  # notified when a window opens or a loader's batch becomes needed
        self._open = True
        self._paced = False
        self._at_window: List[Callable[[], None]] = []  # run by the loop's thread when it next opens a window

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
                self._at_window.clear()  # work not needed by the loop that registered it
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
            at_window, self._at_window = self._at_window, []
        for func in at_window:
            func()
        try:
            yield
        finally:
            self._open = not self._paced

    def at_next_window(self, func: Callable[[], None]) -> bool:
        """Has the loop's thread call `func` when it next opens a window (e.g. to hand a loader thread its next
        batch: waking a thread that then wants Python's lock costs a loop that is launching kernels a hand-over,
        one that runs backward nothing). False where no loop is paced or a window is open: `func` is not kept."""
        with self._changed:
            if not self._paced or self._open:
                return False
            self._at_window.append(func)
            return True

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


PACING = LoaderPacing()
