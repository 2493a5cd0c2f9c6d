"""One training run per model prefix: an OS lock on ``<model>.lock`` next to the checkpoints.

Two runs on the same prefix (a second manager starting the same job, a copied config) would overwrite each other's
checkpoints. ``flock`` is released by the kernel when the holding process ends however it ends, so a lock left by a
killed run is free again; the file records the holder (host, pid) for the error message of the second run, and a
run that ends normally removes it. Processes forked from the holder (data loader workers) do not keep the lock: a
restart right after the holder was killed (the out-of-memory killer) is not refused while its workers wind down.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import weakref
from typing import Optional

from ..atomic_file import disk_full_error, make_output_folder, replace_blocker
from ..errors import OutputPathError, UserError


class RunLockedError(UserError):
    """Another process trains the same model prefix."""


class ModelPrefixLock:
    """Holds the lock while the object lives (or until :meth:`release`)."""

    def __init__(self, model_prefix: str):
        self.path = model_prefix + ".lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError` naming the holder; a lock file that cannot be created or
        written (a full disk, an immutable file) raises a UserError naming it, and no lock file is left."""
        make_output_folder(self.path)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
                os.close(fd)
                raise RunLockedError(
                    f"Another run is training the model {self.path[: -len('.lock')]!r}: {holder} holds {self.path}. "
                    "Only one run may write a model's checkpoints; wait for it to end or stop it."
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder released and removed the file after we opened it: take the new one
        started = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}\n".encode(), 0)
        except OSError as exc:  # a full disk (an empty file could still be created): no empty lock file stays
            with contextlib.suppress(OSError):
                os.remove(self.path)  # while still locked, as in release
            os.close(fd)
            raise _lock_file_error(exc, self.path) from exc
        self._fd = fd
        _HELD.add(self)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # O_CLOEXEC: Python's default
        except OSError as exc:
            raise _lock_file_error(exc, self.path) from exc

    def release(self) -> None:
        """Removes the lock file (a finished run leaves nothing behind) and releases the lock."""
        if self._fd is not None:
            _HELD.discard(self)
            with contextlib.suppress(OSError):
                os.remove(self.path)  # while still locked: a waiting opener sees the file gone and retries
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _lock_file_error(exc: OSError, path: str) -> UserError:
    disk_full = disk_full_error(exc, path)
    if disk_full is not None:
        return disk_full
    why = replace_blocker(path) or f"{exc.strerror or exc}; the folder and the file must be writable for this user"
    return OutputPathError(f"Cannot take the run lock {path}: {why}; the run stopped before any work")


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


# The locks this process holds: a forked child closes its copies of their descriptors at once.
_HELD: weakref.WeakSet[ModelPrefixLock] = weakref.WeakSet()


def _drop_locks_in_forked_child() -> None:
    """Closes, in a process just forked (a loader worker of ``data_worker_type = "process"``), the lock descriptors it
    inherited. A flock belongs to the open file description, which fork shares with the child: were the child to keep
    its copy, the lock would outlive a killed main process until every worker noticed and ended (seconds), and a
    restart meanwhile would be refused naming a dead pid. Closing the child's copy leaves the parent's lock as it is
    (the description stays open there). Chosen over POSIX record locks (``fcntl.lockf``), which fork does not pass
    on: those are dropped when the process closes any descriptor of the file, and do not exclude a second lock taken
    in the same process. The child forgets the descriptor too, so that it never removes the parent's lock file."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_forked_child)
