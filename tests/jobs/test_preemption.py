"""Killed workers through the real `sis manager`: the training and the forward job are resubmitted with the same
requirements (they were far from their limits) and finish; the forward output equals an uninterrupted run's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .sis_setup import (
    add_recipes,
    failed_jobs,
    job_file,
    job_folders,
    kill_worker,
    start_sis_manager,
    submissions,
    user_setup,
)


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _one(folder: Path, job_class: str) -> Path:
    _wait_for(lambda: job_folders(folder, job_class), f"a {job_class} folder")
    return job_folders(folder, job_class)[0]


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _epoch_stored(training: Path, epoch: int) -> bool:
    from i6_minireturnn.file_formats import read_learning_rate_file

    try:
        return epoch in read_learning_rate_file(str(training / "work" / "learning_rates"))
    except OSError:  # not written yet (replaced atomically: never seen half-written)
        return False


def _hdf_content(path: Path) -> dict:
    import h5py

    with h5py.File(path, "r") as f:
        content = {}
        f.visititems(lambda name, item: content.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
        return content


def test_killed_training_and_forward_are_resubmitted_unchanged_and_finish(tmp_path):
    import numpy as np

    folder = user_setup(tmp_path)
    add_recipes(folder, "preempted.py", "slow_model.py")
    log = tmp_path / "manager.log"
    manager = start_sis_manager(folder, "recipe/preempted.py", log)
    try:
        training = _one(folder, "MiniReturnnTrainingJob")
        _wait_for(lambda: _epoch_stored(training, 1), "epoch 1 of the training")
        assert kill_worker(training) >= 2  # the worker and the runtime it started, in epoch 2 (2.4 s an epoch)
        assert not (training / "output" / "models" / "epoch.003.pt").exists()
        forward = _one(folder, "MiniReturnnForwardJob")
        _wait_for(lambda: "Loading checkpoint" in _text(forward / "work" / "returnn.log"), "the forward run")
        time.sleep(1.0)  # in the middle of forwarding (1.5 s a batch, 3 batches)
        assert kill_worker(forward) >= 2
        assert not (forward / "output" / "log_probs.hdf").exists()
        manager.wait(timeout=600)
    finally:
        if manager.poll() is None:
            manager.kill()
    output = log.read_text()
    assert not failed_jobs(folder) and "All output calculated" in output, output[-4000:]

    for job in (training, forward):
        runs = submissions(job, "run")
        assert len(runs) == 2, (job, runs)  # interrupted, resumed once
        assert [(r["time"], r["mem"]) for r in runs] == [(runs[0]["time"], runs[0]["mem"])] * 2, runs
    assert "Resuming training after stored epoch 1" in job_file(training, "log.run.1")

    # the forward output equals an uninterrupted forward of the same config and checkpoint
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", str(forward / "output" / "returnn.config")],
        cwd=rerun, check=True, capture_output=True, env=_base_env(),
    )  # fmt: skip
    expected, got = _hdf_content(rerun / "log_probs.hdf"), _hdf_content(folder / "output/preempted/dev_log_probs.hdf")
    assert sorted(expected) == sorted(got)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
