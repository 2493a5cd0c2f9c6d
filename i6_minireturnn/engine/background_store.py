"""Writes the files of stored epochs in one background thread, so that training goes on while they reach the disk.

The engine snapshots what an epoch stores on the main thread (tensors copied to CPU, the learning_rates text built)
and submits one job per file. Jobs run one after another in the order submitted, so the order epoch_store.py relies on
holds on disk. A failed job stops the queue: no later job runs (a learning_rates entry is never written without its
checkpoint), and the failure is raised on the main thread at the next :meth:`BackgroundStore.submit` or
:meth:`BackgroundStore.flush`, with its own type and message. Without a thread (``in_background=False``) every job
runs at once on the caller's thread, as a synchronous store does.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import weakref
from typing import Any, Callable, ContextManager, Deque, Dict, Optional, Tuple

import torch

from ..log import log
from ..loop_tuning import LOOP_TUNING
from . import checkpoints
from .stop_signals import StopRequested
from .updater import Updater

Job = Callable[[], None]


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; before Python 3.11 (no notes in tracebacks) the note is kept in ``__notes__`` too and
    printed to the log, so that it is not lost."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
        return
    exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
    print(note, file=log.v1)


class BackgroundStore:
    """A FIFO of write jobs run by one daemon thread (started by a submit, ending when the queue is empty).

    A fork (DataLoader worker processes) waits until the writer is idle: a child must not inherit locks the writer
    thread holds mid-write (the log's stream, the allocator's)."""

    def __init__(self, *, in_background: bool = True):
        self.in_background = in_background
        self._cond = threading.Condition()
        self._jobs: Deque[Tuple[str, Job]] = collections.deque()
        self._busy = False  # a job popped from the queue is running
        self._thread: Optional[threading.Thread] = None  # runs while there are jobs, then ends
        self._last_writer: Optional[threading.Thread] = None  # the latest started, also once it cleared _thread
        self._failure: Optional[BaseException] = None
        self._failure_reported = False
        _STORES.add(self)

    def submit(self, description: str, job: Job) -> None:
        """Runs `job` after all jobs submitted before; `description` (naming the file) goes into a failure's notes.
        Raises the failure of an earlier job instead of queueing this one."""
        self._raise_failure(again=True)
        if not self.in_background:
            job()
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="background-store", daemon=True)
                self._last_writer = self._thread
                self._thread.start()
            self._jobs.append((description, job))
            self._cond.notify_all()

    def flush(self) -> None:
        """Waits until every submitted job has run; raises the first failure (once)."""
        self.wait_idle()
        self._raise_failure(again=False)

    def submit_model(
        self, model_prefix: str, epoch: int, model: torch.nn.Module, step: int, extra: Optional[Dict[str, Any]]
    ) -> None:
        """The model file of `epoch` (:func:`checkpoints.save_model`); its parameters are copied to CPU now."""
        if not self.in_background:
            checkpoints.save_model(model_prefix, epoch, model, step, extra=extra)
            return
        path = checkpoints.model_path(model_prefix, epoch)
        state = checkpoints.snapshot_model(model, epoch, step, extra=extra)
        self.submit(path, functools.partial(checkpoints.write_snapshot, state, path, what="model"))

    def submit_optimizer(self, updater: Updater, path: str) -> None:
        """The optimizer state of `updater`, copied to CPU now; an updater class with its own ``save_optimizer``
        writes at once (after the queued files where the caller flushed before)."""
        if not self.in_background or type(updater).save_optimizer is not Updater.save_optimizer:
            updater.save_optimizer(path)
            return
        state = updater.optimizer_state_snapshot()
        self.submit(path, functools.partial(checkpoints.write_snapshot, state, path))

    def flush_after(self, error: BaseException, deferring: Callable[[], ContextManager[None]]) -> None:
        """Finishes the files submitted before `error` ended the work (a stop signal included: the epoch being
        written is stored whole), so that a restart finds what the stop message says; `deferring` holds back a
        second stop request meanwhile. A write failure is raised from a stop request (the stored epochs are not
        what the stop would report); any other `error` stays the one raised and gets the failure as a note (and in
        the log)."""
        try:
            with deferring():
                self.flush()
        except StopRequested:
            return  # the second request: stopping already
        except BaseException as write_error:
            if isinstance(error, StopRequested):
                raise write_error from error
            print(f"ERROR: {type(write_error).__name__}: {write_error}", file=log.v1)
            add_note(error, f"Storing files failed as well: {type(write_error).__name__}: {write_error}")

    def wait_idle(self) -> None:
        """Waits until the writer has run every submitted job and ended (no failure raised: see :meth:`flush`)."""
        with self._cond:
            # also wakes a writer whose notify a signal interrupted (a submit that raised StopRequested midway)
            self._cond.notify_all()
            while self._jobs or self._busy:
                self._cond.wait()
            # the latest writer, also where it already cleared _thread (it may still be ending)
            writer = self._last_writer
        # it ends now that the queue is empty: no thread of ours is left for a fork to copy
        if writer is not None and writer is not threading.current_thread():
            writer.join()

    def _raise_failure(self, *, again: bool) -> None:
        """Raises the failure of a job: always where new work would depend on it (`again`), else only the first time
        (so that a flush on the way out of an error does not raise the same error twice)."""
        with self._cond:
            failure = self._failure
            if failure is None or (self._failure_reported and not again):
                return
            self._failure_reported = True
        raise failure

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._thread = None  # the next submit starts a new writer
                    self._cond.notify_all()
                    return
                description, job = self._jobs.popleft()
                if self._failure is not None:  # submitted while the failing job ran: never written
                    continue
                self._busy = True
            try:
                LOOP_TUNING.helper_thread()  # written while the next epoch trains: not on its loop's CPU
                job()
            except BaseException as exc:  # everything reaches the main thread; this thread only writes
                add_note(exc, f"(while writing {description} in the background)")
                with self._cond:
                    self._failure = exc
                    self._jobs.clear()  # nothing written after a failed write: see the module docstring
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


_STORES: weakref.WeakSet[BackgroundStore] = weakref.WeakSet()


def _wait_for_writers_before_fork() -> None:
    for store in list(_STORES):
        if store._last_writer is not threading.current_thread():
            store.wait_idle()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_wait_for_writers_before_fork)
