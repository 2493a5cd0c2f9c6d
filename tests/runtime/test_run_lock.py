"""One run per model prefix: a second run refuses at once naming the holder; a killed holder leaves the lock free, also
while the loader processes it forked still run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from i6_minireturnn.engine.run_lock import ModelPrefixLock
from tests.runtime.conftest import write_config

SLOW_STEP = """
num_epochs = 50
import time as _time
_train_step = train_step


def train_step(*, model, data, run_ctx, **kwargs):
    _time.sleep(0.05)  # a long training, so that it still runs when the second one starts
    _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
"""


def _start_holder(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "i6_minireturnn", "returnn.config"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )  # fmt: skip
    deadline = time.time() + 60
    while not (folder / "out" / "model.001.pt").exists():  # it trains: the lock is held
        assert process.poll() is None and time.time() < deadline, "the first run did not start training"
        time.sleep(0.05)
    return process


def test_second_run_on_the_same_prefix_refuses_naming_the_holder(tmp_path, run_cli):
    write_config(tmp_path, SLOW_STEP)
    holder = _start_holder(tmp_path)
    try:
        code, out, err = run_cli("returnn.config", "++num_epochs", "2")
        assert code == 1
        assert "Another run is training the model 'out/model'" in err and f"pid {holder.pid}" in err, err
        stored = sorted(os.listdir(tmp_path / "out"))
        assert holder.poll() is None  # the holder goes on, its files untouched by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert "model.lock" in stored
    # the kernel released the killed holder's lock: the next run resumes its training
    code, out, err = run_cli("returnn.config", "++num_epochs", "2")
    assert code == 0, err
    assert "Resuming training after stored epoch" in out
    assert "model.lock" not in os.listdir(tmp_path / "out")  # a finished run removes its lock file


WORKER_PROCESSES = SLOW_STEP + """
train["num_seqs"] = 32  # steps of 0.05 s or more: the loader processes of epoch 2 run when the holder is killed
num_workers_per_gpu = 2
data_worker_type = "process"
"""


def _children(pid: int) -> List[int]:
    """The pids of the processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            children.append(int(entry))
    return children


def test_restart_right_after_a_kill_is_not_refused_by_the_forked_loader_processes(tmp_path, run_cli):
    """The out-of-memory killer ends the main process (SIGKILL); its loader processes, forked from it, notice only
    seconds later. The lock must be free at once: it used to be held by them, and a restart was refused naming the
    dead pid."""
    write_config(tmp_path, WORKER_PROCESSES)
    holder = _start_holder(tmp_path)
    try:
        deadline = time.time() + 60
        while not _children(holder.pid):
            assert holder.poll() is None and time.time() < deadline, "the first run started no loader process"
            time.sleep(0.02)
        workers = _children(holder.pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock = ModelPrefixLock(str(tmp_path / "out" / "model"))
        lock.acquire()  # at once, with the loader processes still there
        assert [pid for pid in workers if os.path.exists(f"/proc/{pid}")], "the loader processes ended too soon"
        lock.release()
        code, out, err = run_cli("returnn.config", "++num_epochs", "1")  # the whole start, then nothing left to train
        assert code == 0, err
        assert "Resuming training after stored epoch 1" in out
    finally:
        with contextlib.suppress(ProcessLookupError):  # the loader processes left of the run this test started
            os.killpg(holder.pid, signal.SIGKILL)
