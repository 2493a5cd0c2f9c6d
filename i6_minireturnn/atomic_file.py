"""Write files so that readers only ever see the old or the complete new content (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

TEMP_MARKER = ".tmp-"


def temp_path_for(path: str) -> str:
    """A fresh temp file name in the same folder as `path` (same filesystem, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + TEMP_MARKER, dir=folder)
    os.close(fd)
    return tmp


def commit_temp(tmp: str, path: str) -> None:
    """fsync `tmp` and move it to `path` in one step."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every filesystem lets us fsync a folder
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temp path to write to; on success it replaces `path`, on error it is removed."""
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit_temp(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def is_temp_file(filename: str) -> bool:
    """Whether `filename` is a leftover temp file of :func:`atomic_path` (to be ignored and cleaned)."""
    return TEMP_MARKER in os.path.basename(filename)
