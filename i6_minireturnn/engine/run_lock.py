"""One training run per model prefix: an OS lock on ``<model>.lock`` next to the checkpoints.

Two runs on the same prefix (a second manager starting the same job, a copied config) would overwrite each other's
checkpoints. ``flock`` is released by the kernel when the holding process ends however it ends, so a lock left by a
killed run is free again; the file records the holder (host, pid) for the error message of the second run, and a
run that ends normally removes it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
from typing import Optional

from ..atomic_file import make_output_folder
from ..errors import UserError


class RunLockedError(UserError):
    """Another process trains the same model prefix."""


class ModelPrefixLock:
    """Holds the lock while the object lives (or until :meth:`release`)."""

    def __init__(self, model_prefix: str):
        self.path = model_prefix + ".lock"
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`RunLockedError` naming the holder."""
        make_output_folder(self.path)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file (a finished run leaves nothing behind) and releases the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)  # while still locked: a waiting opener sees the file gone and retries
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
