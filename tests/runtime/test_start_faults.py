"""Faults a training meets at its start (a full disk, files it cannot replace, a folder under a file's name) and
files that become unreplaceable while it runs: one error line naming the file and the fix, before any training work,
no traceback, nothing half-written; once the cause is removed, the restart ends as the uninterrupted run."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest

from i6_minireturnn.__main__ import main
from i6_minireturnn.atomic_file import write_text_atomic
from i6_minireturnn.engine.output_checks import check_outputs
from i6_minireturnn.errors import OutputPathError

from .conftest import write_config
from .test_background_store import _assert_same_files
from .test_output_files import _mount_tmpfs

REPO = Path(__file__).resolve().parents[2]
SPACE = 1 << 20  # bytes of the tmpfs that is filled up


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The folder of the uninterrupted two-epoch training of conftest's config."""
    folder = tmp_path_factory.mktemp("reference")
    write_config(folder)
    old = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["returnn.config"]) == 0
    finally:
        os.chdir(old)
    return folder


def _run_in(folder: Path, run_cli, monkeypatch, *args: str) -> Tuple[int, str, str]:
    monkeypatch.chdir(folder)
    return run_cli("returnn.config", *args)


def _cli_process(folder: Path, *, file_size_limit: Optional[int] = None) -> subprocess.CompletedProcess:
    """The command line as a process of its own in `folder`; writes beyond `file_size_limit` bytes fail (EFBIG)."""

    def limit() -> None:
        if file_size_limit is not None:  # the kernel would kill the process (SIGXFSZ) instead of failing the write
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", "returnn.config"],
        cwd=folder, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error(out: str, err: str) -> str:
    """The run's only error line; fails on a traceback or several errors."""
    assert "Traceback" not in out + err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def _contents(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in sorted(folder.iterdir())}


# ---- a full disk at the start --------------------------------------------------------------------------------------


def _fill(folder: Path) -> None:
    """Writes a file into `folder` until its filesystem takes no byte more."""
    with open(folder / "filler", "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        while True:  # what is left of the last page
            try:
                f.write(b"\0")
            except OSError:
                break


@pytest.mark.parametrize("kind", ["tmpfs-full", "file-size-limit"])
def test_full_disk_at_the_start_is_one_error_before_training(tmp_path, run_cli, monkeypatch, reference, kind):
    """The run used to fail writing its lock file, with a traceback, and leave an empty ``model.lock``."""
    write_config(tmp_path)
    out = tmp_path / "out"
    if kind == "tmpfs-full":  # ENOSPC, as a real full disk
        unmount = _mount_tmpfs(out, f"size={SPACE}")
        _fill(out)
        done, reason, left = _cli_process(tmp_path), "the disk is full", ["filler"]
    else:  # EFBIG (ulimit -f); works for every user
        unmount, reason, left = None, "file size limit (ulimit -f)", []
        done = _cli_process(tmp_path, file_size_limit=0)
    try:
        assert done.returncode == 1, done.stderr[-3000:]
        message = _one_error(done.stdout, done.stderr)
        assert message.startswith("ERROR: Cannot write out/") and reason in message, message
        assert "no partial file is left" in message and "then start the run again" in message, message
        assert "start epoch" not in done.stdout  # stopped before any training work
        assert sorted(os.listdir(out)) == left  # no lock file, no temp file
        if kind == "tmpfs-full":
            (out / "filler").unlink()  # space again: the restart runs as if nothing had happened
        code, stdout, err = _run_in(tmp_path, run_cli, monkeypatch)
        assert code == 0, err
        _assert_same_files(tmp_path, reference)
    finally:
        if unmount is not None:
            unmount()


def test_run_lock_on_a_full_disk_names_its_file_and_leaves_none(tmp_path):
    """Where only the lock file's write fails (the disk filled after the start checks): one error, no empty lock."""
    code = (
        "from i6_minireturnn.engine.run_lock import ModelPrefixLock\n"
        "from i6_minireturnn.errors import DiskFullError\n"
        "try:\n"
        f"    ModelPrefixLock({str(tmp_path / 'model')!r}).acquire()\n"
        "except DiskFullError as exc:\n"
        "    print(exc)\n"
    )

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, preexec_fn=limit, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"Cannot write {tmp_path / 'model.lock'}: "), done.stdout
    assert "ulimit -f" in done.stdout and "no partial file is left" in done.stdout, done.stdout
    assert os.listdir(tmp_path) == []


# ---- files the run cannot replace ----------------------------------------------------------------------------------


def _chattr_fails(folder: Path) -> Optional[str]:
    """Why files in `folder` cannot be made immutable (``chattr +i``), or None where they can."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    probe = folder / "chattr-probe"
    probe.write_text("")
    done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    if done.returncode == 0:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    probe.unlink()
    return None if done.returncode == 0 else done.stderr.strip() or f"chattr exited with {done.returncode}"


@pytest.fixture
def immutable_capable_out(tmp_path) -> Iterator[Path]:
    """tmp_path, whose ``out`` folder takes immutable files: tmp_path's filesystem where it can, else a tmpfs (root;
    tmpfs keeps inode flags since Linux 6.0). Skips, with the reason, only where neither can."""
    why = _chattr_fails(tmp_path)
    unmount = None
    if why is not None:
        if os.geteuid() != 0:
            pytest.skip(f"cannot make files immutable here: {why} (chattr +i needs root)")
        unmount = _mount_tmpfs(tmp_path / "out", "size=16m")
        why_tmpfs = _chattr_fails(tmp_path / "out")
        if why_tmpfs is not None:
            unmount()
            pytest.skip(f"cannot make files immutable here: {why}; on a tmpfs: {why_tmpfs}")
    try:
        yield tmp_path
    finally:
        if unmount is not None:
            unmount()


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("name", ["learning_rates", "model.002.pt", "model.lock"])
def test_a_file_that_cannot_be_replaced_stops_the_start(immutable_capable_out, run_cli, monkeypatch, reference, name):
    """``learning_rates`` (replaced after every epoch), the file of an epoch stored without its learning_rates entry
    (trained again and replaced) and a lock file left by a killed run: immutable (as a file of another user in a
    shared sticky folder is to us). The run used to train a whole epoch and then fail with a traceback."""
    folder = immutable_capable_out
    write_config(folder)
    code, _, err = _run_in(folder, run_cli, monkeypatch, "++num_epochs", "1")
    assert code == 0, err
    out = folder / "out"
    if name == "model.002.pt":  # stored, but the run stopped before its learning_rates entry: epoch 2 is trained again
        shutil.copyfile(out / "model.001.pt", out / "model.002.pt")
    elif name == "model.lock":
        (out / "model.lock").write_text("host x, pid 1, since 2024-01-01T00:00:00\n")
    before = _contents(out)
    with _immutable(out / name):
        code, stdout, err = _run_in(folder, run_cli, monkeypatch)
        assert _contents(out) == before  # nothing written, no temp file left
    assert code == 1, err
    message = _one_error(stdout, err)
    assert message.startswith(f"ERROR: Cannot replace out/{name} (config key '"), message
    assert f"it is immutable (chattr +i); remove the flag (chattr -i out/{name}, as root)" in message, message
    assert "start epoch" not in stdout  # refused before any training work
    code, _, err = _run_in(folder, run_cli, monkeypatch)  # the flag removed: the run resumes after epoch 1
    assert code == 0, err
    _assert_same_files(folder, reference)


def test_learning_rates_that_is_a_folder_stops_the_start(tmp_path, run_cli, monkeypatch, reference):
    """A folder under the learning_rates file's name used to end in an IsADirectoryError traceback."""
    write_config(tmp_path)
    (tmp_path / "out" / "learning_rates").mkdir(parents=True)
    code, stdout, err = _run_in(tmp_path, run_cli, monkeypatch)
    assert code == 1, err
    message = _one_error(stdout, err)
    assert message.startswith("ERROR: Cannot read learning_rate_file out/learning_rates: it is a folder"), message
    assert "remove or rename the folder" in message, message
    assert os.listdir(tmp_path / "out") == ["learning_rates"]  # no lock, no temp file
    (tmp_path / "out" / "learning_rates").rmdir()
    code, _, err = _run_in(tmp_path, run_cli, monkeypatch)
    assert code == 0, err
    _assert_same_files(tmp_path, reference)


IMMUTABLE_IN_EPOCH_2 = """
import subprocess as _subprocess
import time as _time
_train_step = train_step


def train_step(*, model, data, run_ctx, **kwargs):
    if run_ctx.epoch == 2 and not _made_immutable:  # after the start checks: only the write itself can tell
        deadline = _time.time() + 30
        # the writer thread may not have created the file yet: epoch 1 is stored while epoch 2 trains
        while _subprocess.run(["chattr", "+i", "out/learning_rates"], capture_output=True).returncode != 0:
            assert _time.time() < deadline, "out/learning_rates was not created"
            _time.sleep(0.01)
        _made_immutable.append(True)
    _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)


_made_immutable = []
"""


def test_a_file_made_unreplaceable_during_the_run_stops_with_one_error(
    immutable_capable_out, run_cli, monkeypatch, reference
):
    """The background writer's failed replace used to end in a PermissionError traceback."""
    folder = immutable_capable_out
    write_config(folder, IMMUTABLE_IN_EPOCH_2)
    lr_file = folder / "out" / "learning_rates"
    try:
        code, stdout, err = _run_in(folder, run_cli, monkeypatch)
        assert code == 1, err
        assert not [name for name in os.listdir(folder / "out") if ".tmp-" in name]
        assert "2: EpochData" not in lr_file.read_text()
    finally:
        subprocess.run(["chattr", "-i", str(lr_file)], check=True)
    message = _one_error(stdout, err)
    assert message.startswith("ERROR: Cannot replace out/learning_rates: it is immutable (chattr +i)"), message
    assert "the previous out/learning_rates is unchanged" in message, message
    write_config(folder)  # the cause removed: epoch 2 (stored without its learning_rates entry) is trained again
    code, _, err = _run_in(folder, run_cli, monkeypatch)
    assert code == 0, err
    _assert_same_files(folder, reference)


def test_replace_refused_names_the_file_and_keeps_the_old_one(tmp_path):
    """commit_temp's refusals (EPERM, EISDIR) become OutputPathError naming the file, not OSError tracebacks."""
    (tmp_path / "a_folder").mkdir()
    with pytest.raises(OutputPathError, match="Cannot replace .*a_folder: it is a folder, a file name is expected"):
        write_text_atomic(str(tmp_path / "a_folder"), "new")
    why = _chattr_fails(tmp_path)
    if why is not None:
        pytest.skip(f"cannot make files immutable here: {why}")
    path = tmp_path / "learning_rates"
    path.write_text("old")
    with _immutable(path):
        with pytest.raises(OutputPathError, match=r"Cannot replace .*learning_rates: it is immutable \(chattr \+i\)"):
            write_text_atomic(str(path), "new")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a_folder", "learning_rates"]
    assert os.listdir(tmp_path / "a_folder") == []


def test_a_bind_mounted_file_stops_the_start_and_its_write(tmp_path):
    """A file mounted over the learning_rates file (read-only bind mounts pin files on some clusters): a rename
    cannot replace a mount point (EBUSY), also where the mount comes from the same filesystem (same device)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root and mount")
    path, source = tmp_path / "learning_rates", tmp_path / "pinned"
    path.write_text("old")
    source.write_text("pinned")
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount a file here: {done.stderr.strip()}")
    try:
        with pytest.raises(OutputPathError) as info:
            check_outputs({"learning_rate_file": str(path)})
        assert str(info.value).startswith(f"Cannot replace {path} (config key 'learning_rate_file'): it is a mount")
        assert f"umount {path}" in str(info.value)
        with pytest.raises(OutputPathError, match=f"Cannot replace {path}: it is a mount point"):
            write_text_atomic(str(path), "new")
        assert path.read_text() == "pinned" and sorted(os.listdir(tmp_path)) == ["learning_rates", "pinned"]
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _as_nobody(path: Path) -> Tuple[str, str]:
    """(the start check's answer, the system's answer to a replace) for `path`, in a child forked from this process
    that runs as the user nobody (forked, not executed: the interpreter may lie where nobody cannot read)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the two answers, then out without Python's clean-up
        answers = ["", ""]
        try:
            os.close(read)
            os.setgid(65534)
            os.setgroups([])
            os.setuid(65534)
            try:
                check_outputs({"learning_rate_file": str(path)})
                answers[0] = "check passed"
            except OutputPathError as exc:
                answers[0] = str(exc)
            tmp = str(path) + ".new"
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o666))
            try:
                os.replace(tmp, path)
                answers[1] = "replaced"
            except PermissionError:
                answers[1] = "refused"
                os.remove(tmp)
        except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which fails the test
            answers[1] = f"child failed: {exc!r}"
        finally:
            os.write(write, "\n".join(answers).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        check, replace = answer.read().split("\n", 1)
    os.waitpid(pid, 0)
    return check, replace


def test_another_users_file_in_a_sticky_folder_stops_the_start():
    """A learning_rates file of another user in a shared folder with the sticky bit (as /tmp): the system refuses
    to replace it, and the start check says so (as the user nobody; root may replace any file there)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to make a file of another user and to act as the user nobody")
    shared = Path(tempfile.mkdtemp(prefix="sticky-", dir="/tmp"))  # tmp_path's parents are closed to other users
    try:
        shared.chmod(0o1777)
        path = shared / "learning_rates"
        path.write_text("{\n}\n")
        path.chmod(0o666)  # writable for everyone: only the sticky bit protects the name
        check, replace = _as_nobody(path)
        assert replace == "refused"  # what the check stands for
        assert check.startswith(f"Cannot replace {path} (config key 'learning_rate_file'): it belongs to the user")
        assert f"its folder {shared} has the sticky bit" in check, check
        assert path.read_text() == "{\n}\n" and os.listdir(shared) == ["learning_rates"]
    finally:
        shutil.rmtree(shared)
