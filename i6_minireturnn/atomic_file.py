"""Write files so that readers only ever see the old or the complete new content (temp file, fsync, rename).

Three promises for every output written through this module (checkpoints, learning_rates, HDF, stats, ...):

* The file gets the mode a plain ``open(path, "w")`` gives a new file (0666 minus the umask, or what a default ACL
  of the folder says), not ``mkstemp``'s 0600: on a shared cluster, group members must be able to read the results.
* A full disk or quota (ENOSPC, EDQUOT, EFBIG) raises :class:`~i6_minireturnn.errors.DiskFullError` naming the file
  and the fix; a file that the system does not let us replace (immutable, another user's in a sticky folder, a folder
  under the name) raises :class:`~i6_minireturnn.errors.OutputPathError` saying why. Either way the temp file is
  removed and an older file under the same name stays as it was.
* An output folder that disappears while the run goes on is created again (the result is not lost), with a warning
  naming the folder, since someone or something deleted it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import platform
import pwd
import re
import secrets
import shutil
import stat
import struct
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

# errno of a refused rename onto an existing name -> what the user reads where the file itself tells nothing more
REPLACE_REFUSALS = {
    errno.EPERM: "the system does not let this user replace it",
    errno.EACCES: "the folder is not writable for this user",
    errno.EISDIR: "it is a folder, a file name is expected",
    errno.EROFS: "the filesystem is read-only",
    errno.EBUSY: "it is a mount point (a bind mount) or in use by the system",
}

# Inode flags (linux/fs.h) that make the kernel refuse to replace or remove a file, also for root; read with the
# FS_IOC_GETFLAGS ioctl, whose number is _IOR('f', 1, long) in the generic ioctl layout of these machines.
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20
_FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
_GENERIC_IOCTL_MACHINES = {"x86_64", "amd64", "aarch64", "arm64", "i386", "i686", "riscv64", "s390x"}
_CAP_FOWNER = 3  # linux/capability.h: may remove other users' files in a sticky folder

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
    if code == errno.EFBIG:
        fix = "raise the file size limit (ulimit -f) or write to a filesystem that takes larger files"
    elif code == getattr(errno, "EDQUOT", None):
        fix = f"free space in {folder} or ask for a larger quota"
    else:
        fix = f"free space in {folder} or write to another disk"
    return DiskFullError(
        f"Cannot write {path}: {DISK_FULL_REASONS[code]} ({strerror}{free}); {kept}; {fix}, then start the run again"
    )


def replace_blocker(path: str) -> Optional[str]:
    """Why the system would refuse to replace or remove the existing `path` (with the fix), or None.

    Renaming a new file onto `path` needs, besides a writable folder (which creating a temp file there tests), what
    removing `path` needs; this reads those conditions without changing anything: a folder under the name, a mount
    point, the file or its folder immutable or append-only (``chattr +i`` / ``+a``, which bind root too), and a
    folder with the sticky bit (a shared folder such as /tmp) where the file belongs to another user. Conditions the
    system keeps to itself (a network filesystem's server, security modules) are not seen: the write then fails
    with :class:`OutputPathError` from :func:`commit_temp`.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return None  # not there (nothing to replace), or not even its folder is readable: creating files will tell
    folder = os.path.dirname(os.path.abspath(path))
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder, a file name is expected; remove or rename the folder, or choose another file name"
    try:
        folder_info = os.stat(folder)
    except OSError:
        return None
    if info.st_dev != folder_info.st_dev or _is_mount_point(path):
        return f"it is a mount point (a bind mount), which cannot be replaced; unmount it (umount {path})"
    file_flags, folder_flags = _inode_flags(path), _inode_flags(folder)
    for flag, word, option in ((_FS_IMMUTABLE_FL, "immutable", "i"), (_FS_APPEND_FL, "append-only", "a")):
        if file_flags & flag:
            return f"it is {word} (chattr +{option}); remove the flag (chattr -{option} {path}, as root)"
        if folder_flags & flag:
            return f"its folder {folder} is {word} (chattr +{option}); remove the flag (chattr -{option} {folder})"
    euid = os.geteuid()
    if (
        folder_info.st_mode & stat.S_ISVTX
        and info.st_uid != euid
        and folder_info.st_uid != euid
        and not _has_capability(_CAP_FOWNER)
    ):
        owner = _user_name(info.st_uid)
        return (
            f"it belongs to the user {owner} and its folder {folder} has the sticky bit (a shared folder: only a "
            f"file's owner may replace it); ask {owner} to remove it, or choose another file name"
        )
    return None


def _is_mount_point(path: str) -> bool:
    """Whether a file is mounted at `path` (Linux /proc/self/mountinfo; a bind mount from the same filesystem shows
    the same device as its folder, so the device does not tell)."""
    target = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
    name = os.fsencode(os.path.basename(path))
    for char in b"\\ \t\n":  # the file writes these as octal escapes (backslash first: the escapes hold one)
        name = name.replace(bytes([char]), b"\\%03o" % char)
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = [line for line in f if name in line]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 4:  # the fifth field is the mount point
            mount_point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            if os.fsdecode(mount_point) == target:
                return True
    return False


_flags_unsupported: Set[int] = set()  # devices whose filesystem answers no FS_IOC_GETFLAGS (asked once each)


def _inode_flags(path: str) -> int:
    """The inode flags of `path` (FS_IOC_GETFLAGS); 0 where the system or the filesystem does not tell."""
    if not hasattr(os, "O_NOFOLLOW") or platform.machine().lower() not in _GENERIC_IOCTL_MACHINES:
        return 0
    try:
        # O_NONBLOCK: a FIFO under the name must not block the open; O_NOFOLLOW: a symlink has no flags of its own
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0
    try:
        device = os.fstat(fd).st_dev
        if device in _flags_unsupported:
            return 0
        try:
            answer = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))
        except OSError:
            _flags_unsupported.add(device)
            return 0
        return struct.unpack_from("=i", answer)[0]  # the kernel stores an int, despite the ioctl's declared long
    finally:
        os.close(fd)


def _has_capability(number: int) -> bool:
    """Whether this process has the Linux capability `number` in effect (elsewhere: whether it runs as root)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> number & 1)
    return os.geteuid() == 0


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"with uid {uid}"


def replace_error(exc: BaseException, path: str) -> Optional[OutputPathError]:
    """The OutputPathError for a refused replace of `path` (EPERM, EACCES, EISDIR, EROFS, EBUSY), else None."""
    if not isinstance(exc, OSError) or exc.errno not in REPLACE_REFUSALS:
        return None
    kept = f"the previous {path} is unchanged" if os.path.isfile(path) else "nothing was written"
    why = replace_blocker(path)
    if why is None:
        folder = os.path.dirname(os.path.abspath(path))
        why = f"{REPLACE_REFUSALS[exc.errno]} ({exc.strerror or exc}); check {folder} and {path}"
    return OutputPathError(f"Cannot replace {path}: {why}; {kept}; then start the run again")


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
        refused = replace_error(exc, path)  # also checked at the start; a file can change meanwhile
        if refused is not None:
            raise refused from exc
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
