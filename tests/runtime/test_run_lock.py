"""One run per model prefix: a second run refuses at once naming the holder; a killed holder leaves the lock free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
