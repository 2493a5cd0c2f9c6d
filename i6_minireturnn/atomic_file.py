"""Write files so that readers only ever see the old or the complete new content (temp file, fsync, rename).

Three promises for every output written through this module (checkpoints, learning_rates, HDF, stats, ...):

* The file gets the mode a plain ``open(path, "w")`` gives a new file (0666 minus the umask, or what a default ACL
  of the folder says), not ``mkstemp``'s 0600: on a shared cluster, group members must be able to read the results.
* A full disk or quota (ENOSPC, EDQUOT, EFBIG) raises :class:`~i6_minireturnn.errors.DiskFullError` naming the file;
  the temp file is removed and an older file under the same name stays as it was.
* An output folder that disappears while the run goes on is created again (the result is not lost), with a warning
  naming the folder, since someone or something deleted it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from typing import Any, BinaryIO, Iterator, Optional, Set

from .errors import DiskFullError, OutputPathError
from .log import log

TEMP_MARKER = ".tmp-"

# errno -> what the user reads; EDQUOT is missing on some platforms
DISK_FULL_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than the filesystem or this process' file size limit (ulimit -f) allows",
}
if hasattr(errno, "EDQUOT"):
    DISK_FULL_REASONS[errno.EDQUOT] = "the disk quota is exceeded"

# Folders this process has written to or checked: one of them missing later was deleted while the run went on.
_known_folders: Set[str] = set()


def format_bytes(num_bytes: float) -> str:
    """1536 -> '1.5 KiB' (for messages about sizes and free space)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def disk_full_error(exc: BaseException, path: str) -> Optional[DiskFullError]:
    """The DiskFullError for writing `path` when `exc` (or an exception it was raised from) is a full disk or quota."""
    seen = 0
    while exc is not None and seen < 10:  # libraries wrap the OSError (torch, zipfile): follow the chain a little way
        if isinstance(exc, DiskFullError):
            return None  # told already
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_REASONS:
            return _make_disk_full_error(path, exc.errno, exc.strerror or os.strerror(exc.errno))
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _make_disk_full_error(path: str, code: int, strerror: str) -> DiskFullError:
    folder = os.path.dirname(os.path.abspath(path))
    free = ""
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(folder)
        free = f", {format_bytes(usage.free)} of {format_bytes(usage.total)} free in {folder}"
    kept = f"the previous {path} is unchanged" if os.path.exists(path) else "no partial file is left"
    return DiskFullError(f"Cannot write {path}: {DISK_FULL_REASONS[code]} ({strerror}{free}); {kept}")


def make_output_folder(path: str) -> str:
    """Creates the folder of the file `path` if missing and returns it.

    A parent that is a file raises OutputPathError naming it. A folder this process wrote to before and that is gone
    now is created again with a warning: someone deleted it while the run went on, and the new result must not be lost.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        blocker = _file_in_the_way(folder)
        if blocker is not None:
            raise OutputPathError(f"Cannot write {path}: {blocker} is a file, not a folder")
        if folder in _known_folders:
            print(
                f"WARNING: output folder {folder} was deleted while the run went on; creating it again to write {path}",
                file=log.v1,
            )
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            disk_full = disk_full_error(exc, path)
            if disk_full is not None:
                raise disk_full from exc
            raise OutputPathError(f"Cannot create the folder {folder} to write {path}: {exc.strerror or exc}") from exc
    _known_folders.add(folder)
    return folder


def _file_in_the_way(folder: str) -> Optional[str]:
    """The nearest existing ancestor of `folder` (or itself) when it is not a folder, else None."""
    current = folder
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
    return None if os.path.isdir(current) else current


def temp_path_for(path: str) -> str:
    """Creates an empty temp file in the folder of `path` (same filesystem, so the rename is atomic); returns its name.

    Created with mode 0666 through ``os.open``, so the kernel applies the umask (or the folder's default ACL) just as
    for ``open(path, "w")``; reading the umask ourselves would race with other threads (``os.umask`` must set it).
    """
    folder = make_output_folder(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, os.path.basename(path) + TEMP_MARKER + secrets.token_hex(4))
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # no inode left is a full disk too
            disk_full = disk_full_error(exc, path)
            if disk_full is not None:
                raise disk_full from exc
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"No free temp file name beside {path}")


def commit_temp(tmp: str, path: str) -> None:
    """fsync `tmp` and move it to `path` in one step; the caller removes `tmp` when this raises."""
    try:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # network filesystems may report a full disk only here
        os.replace(tmp, path)
    except OSError as exc:
        disk_full = disk_full_error(exc, path)
        if disk_full is not None:
            raise disk_full from exc
        raise
    with contextlib.suppress(OSError):  # not every filesystem lets us fsync a folder
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temp path to write to; on success it replaces `path`, on error it is removed.

    A full disk or quota while writing becomes DiskFullError naming `path`.
    """
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        disk_full = disk_full_error(exc, path)
        if disk_full is not None:
            raise disk_full from exc
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


class WriteErrorRecorder:
    """A write-only file object that keeps the first OSError of its writes.

    torch.save hides the OSError of a failed write behind a RuntimeError without errno ("[enforce fail at
    inline_container.cc] ... unexpected pos"); the kept error says what really happened (a full disk, ...).
    """

    def __init__(self, file: BinaryIO):
        self._file = file
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def save_torch_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, rename; a full disk raises DiskFullError naming `path`.

    Saves through a Python file object, not torch's own file writer, to learn the errno of a failed write (torch's
    writer reports none); as fast as torch's own writer.
    """
    import torch  # imported on use: writing text files must not need torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            recorder = WriteErrorRecorder(f)
            try:
                torch.save(obj, recorder)
            except Exception as exc:
                if recorder.error is not None and recorder.error is not exc:
                    raise recorder.error from None  # torch's message tells nothing more
                raise


def is_temp_file(filename: str) -> bool:
    """Whether `filename` is a leftover temp file of :func:`atomic_path` (to be ignored and cleaned)."""
    return TEMP_MARKER in os.path.basename(filename)
