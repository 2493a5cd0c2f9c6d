"""Loader threads that stay out of the training loop's way: while they are ahead of it, they take Python's lock only
while the loop runs without it (back-propagation, waiting for a batch).

A training loop whose steps take a few ms is limited by launching kernels: it needs Python's lock almost all the time,
releasing it only inside each torch call. A loader thread that wants the lock takes it there, and the loop then waits
until the loader hands it back: per batch, the loader's collation costs the loop a share of its step rate (measured on
an H100 with a 2-layer model: 8% with the default single worker thread). Back-propagation, in contrast, runs in C++
without the lock for a good part of a step. So while the training loop is paced (:meth:`LoaderPacing.training`),
a loader thread that works on a batch the loop does not need next waits between its pieces of work (sequences,
collation) until the loop opens a window (:meth:`LoaderPacing.window`: the updater's backward, the loop's wait for a
batch). The batch the loop needs next is always loaded at once, so a loader that falls behind runs as it would
unpaced, and a slow one never stalls the loop more than without pacing.

One training loop per process: the pacing is process-wide (:data:`PACING`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

# a paced loader waits at most this long for a window: a loop that opens none (a custom step without backward) then
# still gets its batches read ahead, only later
_LONGEST_WAIT = 0.05


class LoaderPacing:
    """The windows in which paced loader threads may run (see the module)."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._paced = False
        self.enabled = True  # False: training loops do not pace loaders (as before pacing existed)

    @property
    def paced(self) -> bool:
        """Whether a training loop paces the loader threads now."""
        return self._paced

    @property
    def window_open(self) -> bool:
        """Whether paced loader threads may run now (always where no loop is paced)."""
        return self._open.is_set()

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Paces loader threads (outside windows, those ahead of the loop wait) for the duration."""
        if self._paced or not self.enabled:  # nested: the outer one decides
            yield
            return
        self._paced = True
        self._open.clear()
        try:
            yield
        finally:
            self._paced = False
            self._open.set()

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """Around a part of the loop that runs without Python's lock (backward; waiting for a batch): paced loader
        threads may run. Costs two cheap calls; nothing where no loop is paced."""
        if not self._paced or self._open.is_set():
            yield
            return
        self._open.set()
        try:
            yield
        finally:
            if self._paced:
                self._open.clear()

    def wait_for_window(self) -> None:
        """Called by a loader thread between pieces of work on a batch the loop does not need next."""
        if not self._open.is_set():
            self._open.wait(_LONGEST_WAIT)


PACING = LoaderPacing()
