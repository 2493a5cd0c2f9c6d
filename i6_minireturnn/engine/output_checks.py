"""Checks before the first step that the run's output files can be written where the config puts them.

A cluster job that trains for hours and then fails on its first checkpoint (the folder is a file, read-only, the disk
full or nearly full, the learning_rates file immutable or another user's) wastes the whole slot; these checks make it
fail, or warn, at once, each with one message naming the file and the fix, and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
from typing import Iterable, List, Mapping, Optional, Tuple, Union

import torch

from ..atomic_file import (
    disk_full_error,
    format_bytes,
    is_temp_file,
    make_output_folder,
    replace_blocker,
    temp_path_for,
)
from ..errors import OutputPathError
from ..file_formats import MODEL_SUFFIX, OPTIMIZER_SUFFIX
from ..log import log

# How many checkpoints the disk should still hold: the next one is written beside the last before the old is cleaned.
CHECKPOINTS_OF_HEADROOM = 2


Paths = Union[Mapping[str, str], Iterable[str]]  # the files, or {config key: file} so that errors name the key too


def check_outputs(paths: Paths, estimated_checkpoint_bytes: int = 0) -> None:
    """Creates the folders of the files the run will write and checks that each takes a new file and that each file
    it will replace can be replaced.

    Raises OutputPathError naming the file when a parent is a file, the path is a folder, the folder does not take
    a new file (permissions, read-only filesystem), or an existing file cannot be replaced (:func:`replace_blocker`);
    DiskFullError when the disk or quota takes no byte more. For the config key ``model`` (its epoch 1 file) every
    existing file of the model prefix counts: a run replaces an epoch it trains again, removes optimizer states
    and, with ``cleanup_old_models``, old epochs, and creates and removes ``<model>.lock``. With
    `estimated_checkpoint_bytes`, then :func:`warn_on_low_space`.
    """
    named = _named(paths)  # once: `paths` may be a generator
    for key, path in named:
        where = f"{path} (config key {key!r})" if key else path
        if os.path.isdir(path):
            raise OutputPathError(
                f"Cannot write {where}: it is a folder, a file name is expected; remove or rename the folder"
                + (f", or set {key} to another file name" if key else "")
            )
        try:
            folder = make_output_folder(path)
        except OutputPathError as exc:
            raise OutputPathError(f"{exc}" + (f" (config key {key!r})" if key else "")) from None
        _check_writable(folder, path, where)
        for existing in [path] + (_model_prefix_files(path) if key == "model" else []):
            why = replace_blocker(existing)
            if why is not None:
                raise OutputPathError(
                    f"Cannot replace {existing}" + (f" (config key {key!r})" if key else "") + f": {why}; "
                    "the run stopped before any work"
                )
    if estimated_checkpoint_bytes > 0:
        warn_on_low_space([path for _, path in named], estimated_checkpoint_bytes)


def warn_on_low_space(paths: Paths, estimated_checkpoint_bytes: int) -> None:
    """Warns on ``log.v1`` for each filesystem the files go to with room for less than two checkpoints.

    `estimated_checkpoint_bytes`: see :func:`estimate_checkpoint_bytes`. Folders that do not exist are skipped.
    """
    devices = set()
    for _, path in _named(paths):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            device = os.stat(folder).st_dev
        except OSError:
            continue
        if device not in devices:  # one warning per filesystem
            devices.add(device)
            _warn_on_low_space(folder, estimated_checkpoint_bytes)


def _named(paths: Paths) -> List[Tuple[Optional[str], str]]:
    return list(paths.items()) if isinstance(paths, Mapping) else [(None, path) for path in paths]


def _model_prefix_files(model_file: str) -> List[str]:
    """The existing files of the model prefix that `model_file` (``<model>.001.pt``) belongs to which a training may
    replace or remove: epoch and optimizer files, the lock, temp files of a killed run."""
    match = re.fullmatch(r"(.+)\.\d+" + re.escape(MODEL_SUFFIX), model_file)
    if match is None:
        return []
    prefix = match.group(1)
    name = re.compile(
        re.escape(os.path.basename(prefix))
        + rf"(\.\d+({re.escape(MODEL_SUFFIX)}|{re.escape(OPTIMIZER_SUFFIX)})|\.lock)"
    )
    return sorted(
        path
        for path in glob.glob(glob.escape(prefix) + ".*")
        if path != model_file and (name.fullmatch(os.path.basename(path)) or is_temp_file(path))
    )


def _check_writable(folder: str, path: str, where: str) -> None:
    """Creates, writes, syncs and removes a temp file beside `path`: the only test that answers for ACLs, read-only
    mounts, and a disk or quota that is full already (an empty file may still be created there; a byte may not)."""
    try:
        probe = temp_path_for(path)  # named like atomic_file's temp files: a killed run's leftover gets cleaned
    except OSError as exc:
        why = "is not writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "takes no new file"
        raise OutputPathError(
            f"Cannot write {where}: the folder {folder} {why} ({exc.strerror or exc}); "
            "make it writable for this user or choose another folder"
        ) from None
    failure: Optional[OSError] = None
    try:
        fd = os.open(probe, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.write(fd, b"\n")
            os.fsync(fd)  # network filesystems may report a full disk or quota only here
        finally:
            os.close(fd)
    except OSError as exc:
        failure = exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    disk_full = disk_full_error(failure, path) if failure is not None else None
    if disk_full is not None:
        raise disk_full from None
    # another failure of the probe's byte (a filesystem without fsync) is left to the run's own writes to report


def _warn_on_low_space(folder: str, checkpoint_bytes: int) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # some network filesystems do not tell; the write itself will
    needed = CHECKPOINTS_OF_HEADROOM * checkpoint_bytes
    if free < needed:
        print(
            f"WARNING: only {format_bytes(free)} free in {folder}, less than {CHECKPOINTS_OF_HEADROOM} checkpoints "
            f"({format_bytes(needed)}); the run will stop when the disk is full",
            file=log.v1,
        )


def estimate_checkpoint_bytes(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Bytes of one epoch's checkpoint files (``model.NNN.pt`` plus ``model.NNN.opt.pt``), roughly.

    An optimizer without state yet (before its first step) is counted as two values per parameter, as Adam(W) keeps.
    """
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    if optimizer is None:
        return total
    state = sum(
        t.numel() * t.element_size()
        for slots in optimizer.state.values()
        for t in slots.values()
        if isinstance(t, torch.Tensor)
    )
    if state == 0:
        params = sum(p.numel() * p.element_size() for group in optimizer.param_groups for p in group["params"])
        state = 2 * params
    return total + state
