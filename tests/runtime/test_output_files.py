"""Output files on a shared cluster: modes that follow the umask, a full disk that names the file and leaves the old
file as it was, output folders checked before the first step, and a folder deleted during the run."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import numpy as np
import pytest
import torch

from i6_minireturnn.atomic_file import atomic_path, save_torch_atomic, write_text_atomic
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter
from i6_minireturnn.engine import output_checks
from i6_minireturnn.engine.output_checks import check_outputs, estimate_checkpoint_bytes
from i6_minireturnn.errors import DiskFullError, OutputPathError, UserError
from i6_minireturnn.log import log

REPO_ROOT = Path(__file__).resolve().parents[2]
SPACE = 1 << 20  # bytes a "full" filesystem takes: each write below needs more


@pytest.fixture
def log_text(monkeypatch) -> io.StringIO:
    """What the run prints to its log (level 4, as by default)."""
    buffer = io.StringIO()
    monkeypatch.setattr(log, "outputs", [buffer])
    monkeypatch.setattr(log, "verbosity", 4)
    return buffer


def _mount_tmpfs(target: Path, options: str) -> Callable[[], None]:
    """Mounts a tmpfs at `target` (root only); returns the unmount. Skips where mounting is not possible."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    return lambda: subprocess.run(["umount", "-l", str(target)], check=True)


# ---- file modes ------------------------------------------------------------------------------------------------


def _write_every_way(folder: Path) -> Dict[str, Path]:
    """One file through each way the runtime writes outputs."""
    files = {name: folder / name for name in ("text", "checkpoint", "savetxt", "hdf")}
    write_text_atomic(str(files["text"]), "{\n}\n")
    save_torch_atomic({"model": {"w": torch.zeros(3)}, "epoch": 1, "step": 0}, str(files["checkpoint"]))
    with atomic_path(str(files["savetxt"])) as tmp:
        np.savetxt(tmp, np.zeros(3))
    writer = SimpleHDFWriter(str(files["hdf"]), dim=2)
    writer.insert_batch(np.zeros((1, 3, 2), dtype="float32"), [3], ["seq-0"])
    writer.close()
    return files


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_modes_follow_the_umask_as_open_does(tmp_path, umask):
    old = os.umask(umask)
    try:
        files = _write_every_way(tmp_path)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    plain = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert plain == 0o666 & ~umask
    for name, path in files.items():
        assert stat.S_IMODE(os.stat(path).st_mode) == plain, name
    assert sorted(os.listdir(tmp_path)) == sorted(list(files) + ["plain"])  # no temp file left


def test_a_file_written_with_0600_before_gets_the_umask_mode_on_its_next_write(tmp_path):
    path = tmp_path / "learning_rates"
    path.write_text("old")
    os.chmod(path, 0o600)  # as older versions (mkstemp) left it
    old = os.umask(0o022)
    try:
        write_text_atomic(str(path), "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644 and path.read_text() == "new"


# ---- full disk -------------------------------------------------------------------------------------------------

OLD_CONTENT = {"learning_rates": b"{\n1: old,\n}\n", "model.001.pt": b"old checkpoint", "out.hdf": b"old hdf"}


def _big_writes() -> Dict[str, Callable[[str], None]]:
    """file name -> a write of more than SPACE bytes to that file, one per kind of output."""

    def hdf(path: str) -> None:
        writer = SimpleHDFWriter(path, dim=64)
        for i in range(16):
            writer.insert_batch(np.ones((1, 512, 64), dtype="float32"), [512], [f"seq-{i}"])  # 128 KiB each
        writer.close()

    return {
        "learning_rates": lambda path: write_text_atomic(path, "x" * 2 * SPACE),
        "model.001.pt": lambda path: save_torch_atomic({"model": {"w": torch.ones(SPACE // 2)}}, path),
        "out.hdf": hdf,
    }


def attempt_big_writes(folder: str) -> Dict[str, Any]:
    """Runs each big write into `folder`; {file name: [exception type, message]} (the subprocess prints it)."""
    outcome = {}
    for name, write in _big_writes().items():
        try:
            write(os.path.join(folder, name))
            outcome[name] = [None, ""]
        except Exception as exc:
            outcome[name] = [type(exc).__name__, str(exc)]
    return outcome


def _attempt_under_file_size_limit(folder: Path) -> Dict[str, Any]:
    """attempt_big_writes in a process whose files may not grow beyond SPACE bytes (EFBIG, as ``ulimit -f``)."""
    code = (
        "import json, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing write\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({SPACE}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from tests.runtime.test_output_files import attempt_big_writes\n"
        f"print(json.dumps(attempt_big_writes({str(folder)!r})))\n"
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # .pyc files are files too
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["tmpfs-full", "file-size-limit"])
def full_disk(request, tmp_path) -> Iterator[Dict[str, Any]]:
    """A folder where each big write fails; yields the folder, how to attempt, and the reason the message gives."""
    folder = tmp_path / "out"
    if request.param == "tmpfs-full":  # ENOSPC, as on a real full disk
        unmount = _mount_tmpfs(folder, f"size={SPACE}")
        attempt, reason = lambda: attempt_big_writes(str(folder)), "the disk is full"
    else:  # EFBIG; works for every user
        folder.mkdir()
        unmount, attempt, reason = None, lambda: _attempt_under_file_size_limit(folder), "file size limit"
    try:
        yield {"folder": folder, "attempt": attempt, "reason": reason}
    finally:
        if unmount is not None:
            unmount()


def test_full_disk_names_the_file_and_leaves_the_old_one(full_disk):
    folder = full_disk["folder"]
    for name, content in OLD_CONTENT.items():
        (folder / name).write_bytes(content)
    outcome = full_disk["attempt"]()
    for name in OLD_CONTENT:
        error, message = outcome[name]
        assert error == "DiskFullError", (name, error, message)
        assert str(folder / name) in message and full_disk["reason"] in message, message
        assert "is unchanged" in message, message
    assert sorted(os.listdir(folder)) == sorted(OLD_CONTENT)  # no temp file left behind
    for name, content in OLD_CONTENT.items():
        assert (folder / name).read_bytes() == content, name


def test_full_disk_without_an_old_file_leaves_nothing(full_disk):
    outcome = full_disk["attempt"]()
    assert os.listdir(full_disk["folder"]) == []
    for name, (error, message) in outcome.items():
        assert error == "DiskFullError" and "no partial file is left" in message, (name, message)


def test_disk_full_error_is_a_user_error():
    assert issubclass(DiskFullError, UserError) and issubclass(OutputPathError, UserError)


# ---- output checks before the first step --------------------------------------------------------------------------


def test_missing_folders_are_created(tmp_path):
    model = tmp_path / "a" / "b" / "model.001.pt"
    check_outputs({"model": str(model), "learning_rate_file": str(tmp_path / "c" / "learning_rates")})
    assert model.parent.is_dir() and (tmp_path / "c").is_dir()
    assert os.listdir(model.parent) == [] and os.listdir(tmp_path / "c") == []  # the write test left nothing


@pytest.mark.parametrize("below", ["file.txt/epoch", "file.txt/deeper/epoch"])
def test_a_parent_that_is_a_file_is_named(tmp_path, below):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("")
    path = tmp_path / "x" / below
    with pytest.raises(OutputPathError) as info:
        check_outputs({"model": str(path)})
    message = str(info.value)
    assert str(path) in message and f"{tmp_path / 'x' / 'file.txt'} is a file" in message
    assert "'model'" in message


def test_a_path_that_is_a_folder_is_named(tmp_path):
    (tmp_path / "learning_rates").mkdir()
    with pytest.raises(OutputPathError, match="learning_rates.*is a folder"):
        check_outputs([str(tmp_path / "learning_rates")])


def test_a_folder_that_takes_no_file_is_named(tmp_path):
    folder = tmp_path / "readonly"
    if os.geteuid() == 0:  # root ignores permissions: a read-only mount refuses root too
        unmount = _mount_tmpfs(folder, "ro,size=64k")
    else:
        folder.mkdir()
        folder.chmod(0o555)
        unmount = lambda: folder.chmod(0o755)  # noqa: E731
    try:
        with pytest.raises(OutputPathError) as info:
            check_outputs({"model": str(folder / "model.001.pt")})
    finally:
        unmount()
    message = str(info.value)
    assert str(folder / "model.001.pt") in message and "not writable" in message


def _fake_disk_usage(free: int) -> Callable[[str], Any]:
    return lambda path: shutil._ntuple_diskusage(100 * free, 99 * free, free)


def test_low_space_warns(tmp_path, monkeypatch, log_text):
    monkeypatch.setattr(output_checks.shutil, "disk_usage", _fake_disk_usage(3 << 20))
    check_outputs([str(tmp_path / "model.001.pt"), str(tmp_path / "learning_rates")], 2 << 20)
    lines = [line for line in log_text.getvalue().splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, lines  # one filesystem: one warning
    assert str(tmp_path) in lines[0] and "3.0 MiB free" in lines[0] and "4.0 MiB" in lines[0]


def test_enough_space_is_quiet(tmp_path, monkeypatch, log_text):
    monkeypatch.setattr(output_checks.shutil, "disk_usage", _fake_disk_usage(5 << 20))
    check_outputs([str(tmp_path / "model.001.pt")], 2 << 20)
    assert log_text.getvalue() == ""


def test_checkpoint_estimate_counts_model_and_optimizer():
    model = torch.nn.Linear(10, 10)  # 110 float32 parameters
    optimizer = torch.optim.Adam(model.parameters())
    assert estimate_checkpoint_bytes(model) == 440
    assert estimate_checkpoint_bytes(model, optimizer) == 440 * 3  # before a step: Adam's two values per parameter
    model(torch.ones(1, 10)).sum().backward()
    optimizer.step()
    assert estimate_checkpoint_bytes(model, optimizer) >= 440 * 3


# ---- a folder deleted while the run goes on ----------------------------------------------------------------------


def test_deleted_output_folder_is_recreated_with_a_warning(tmp_path, log_text):
    folder = tmp_path / "models"
    save_torch_atomic({"epoch": 1}, str(folder / "model.001.pt"))
    assert log_text.getvalue() == ""  # a new folder on the first write is no surprise
    shutil.rmtree(folder)
    save_torch_atomic({"epoch": 2}, str(folder / "model.002.pt"))
    assert os.listdir(folder) == ["model.002.pt"]  # the epoch's result is not lost
    warning = log_text.getvalue()
    assert warning.startswith("WARNING") and f"{folder} was deleted" in warning and "model.002.pt" in warning


def test_folder_checked_before_the_run_and_deleted_later_warns(tmp_path, log_text):
    folder = tmp_path / "out"
    check_outputs({"learning_rate_file": str(folder / "learning_rates")})
    shutil.rmtree(folder)
    write_text_atomic(str(folder / "learning_rates"), "{\n}\n")
    assert f"{folder} was deleted" in log_text.getvalue()
