"""SIGTERM and SIGINT during training: stop at the next safe point with the stored epochs intact.

Clusters preempt jobs with SIGTERM (then SIGKILL); users press Ctrl-C. The handler raises :class:`StopRequested` in
the main thread, which ends the epoch in progress without storing it; inside a :meth:`StopSignals.deferred` block
(storing an epoch) the request waits until the block is done, so the epoch is stored as a whole. The command line
exits with 128 + the signal number (143, 130).

SIGUSR1 and SIGUSR2 do not stop a run: they print the threads' stacks (:mod:`.stack_dump`, for the whole command line).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Dict, Iterator, Optional

from ..errors import UserError

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequested(UserError):
    """A stop signal arrived; the message says what was kept."""

    def __init__(self, signum: int, message: Optional[str] = None):
        self.signum = signum
        super().__init__(message or f"{signal.Signals(signum).name} received: stopped")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While entered (in the main thread), SIGTERM / SIGINT raise :class:`StopRequested`, except while deferred."""

    def __init__(self) -> None:
        self._previous: Dict[int, Any] = {}
        self._deferring = 0
        self._pending: Optional[int] = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._deferring:
            self._pending = self._pending or signum
            return
        raise StopRequested(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop request arriving inside waits until the block has finished."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending is not None:
            signum, self._pending = self._pending, None
            raise StopRequested(signum)
