"""SIGUSR1 / SIGUSR2 (Slurm ``--signal``, SGE ``-notify``) during a run: every thread's stack goes to stderr and the run
ends as an undisturbed one (same files, equal checkpoints), also when the main thread is stuck in a C call and when
the signal reaches the loader processes too.

The training's step function blocks, at its third training step, inside a C call that keeps Python's lock and retries
interrupted waits (``system`` through ``ctypes.PyDLL``) until the test writes to a FIFO: the dump must come while it is
still blocked there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

import pytest
import torch

from i6_minireturnn.__main__ import main

from .conftest import assert_equal_nested, write_config

REPO = Path(__file__).resolve().parents[2]

TRAINING = """
import ctypes

train["num_seqs"] = 24
data_worker_type = "process"
num_workers_per_gpu = 2
training_steps = [0]


def wait_in_c_for_the_test():
    open("waiting", "w").close()
    # PyDLL keeps Python's lock during the call, as a stuck C extension does, and system() waits for its shell again
    # where a signal interrupts the wait: no Python code runs until the test writes to the FIFO. The shell and head
    # ignore the signals, as they would a cluster's signal to the process group.
    ctypes.PyDLL(None).system(b"trap '' USR1 USR2; head -c1 go.fifo >/dev/null")


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
    if model.training:
        training_steps[0] += 1
        if training_steps[0] == 3:
            wait_in_c_for_the_test()
"""


def _wait_for(condition, what: str, proc: subprocess.Popen, err_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended with {proc.returncode} before {what}:\n{err_file.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout} s:\n{err_file.read_text()[-3000:]}")
        time.sleep(0.02)


def _train(folder: Path, signum: Optional[int] = None, to_group: bool = False) -> Tuple[int, str, str]:
    """Runs the training in `folder` (a process of its own, leader of its process group); where `signum` is given,
    sends it while the step blocks (to the whole group with `to_group`) and releases the step once the dump is out.
    Returns (exit status, stdout, stderr)."""
    folder.mkdir()
    write_config(folder, TRAINING)
    os.mkfifo(folder / "go.fifo")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out_file, err_file = folder / "stdout.txt", folder / "stderr.txt"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "i6_minireturnn", "returnn.config"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        _wait_for((folder / "waiting").exists, "the blocked step", proc, err_file)
        if signum is not None:
            if to_group:
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)
            # still blocked in the C call: only a dump that needs no Python code in the main thread can come now
            _wait_for(lambda: "in wait_in_c_for_the_test" in err_file.read_text(), "stack dump", proc, err_file, 30)
        _release(folder / "go.fifo", proc, err_file)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return code, out_file.read_text(), err_file.read_text()


def _release(fifo: Path, proc: subprocess.Popen, err_file: Path) -> None:
    """Writes a byte to `fifo` once its reader (the step's ``head``) has opened it."""
    fd = None

    def opened() -> bool:
        nonlocal fd
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            return False
        return True

    _wait_for(opened, "reader of the FIFO", proc, err_file)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def _assert_same_files(folder: Path, reference: Path) -> None:
    names = sorted(p.name for p in (reference / "out").glob("*.pt"))
    assert names and sorted(p.name for p in (folder / "out").glob("*.pt")) == names
    for name in names:
        stored = torch.load(folder / "out" / name, weights_only=False)
        assert_equal_nested(stored, torch.load(reference / "out" / name, weights_only=False), name)
    assert (folder / "out" / "learning_rates").read_text() == (reference / "out" / "learning_rates").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The undisturbed run (the same step, released at once)."""
    folder = tmp_path_factory.mktemp("stack_dump") / "reference"
    code, out, err = _train(folder)
    assert code == 0, err[-3000:]
    return folder


def _assert_dump_and_finished(out: str, err: str) -> None:
    # the main thread's stack, innermost call first: the C call's caller, the step, ..., the command line's entry
    where = [line for line in err.splitlines() if line.endswith(" in wait_in_c_for_the_test")]
    assert where and 'File "returnn.config", line' in where[0], err
    main_stack = err[err.index(where[0]) :]
    assert main_stack.index("in train_step") < main_stack.index("in _run_module_as_main"), err
    assert "(most recent call first)" in err
    assert "Finished training at epoch 2." in out + err, err[-3000:]
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2], ids=["SIGUSR1", "SIGUSR2"])
def test_signal_dumps_the_stacks_and_the_training_goes_on(tmp_path, reference, signum):
    code, out, err = _train(tmp_path / "signalled", signum)
    assert code == 0, err[-3000:]
    _assert_dump_and_finished(out, err)
    assert err.count("in _run_module_as_main") == 1, err  # one dump
    _assert_same_files(tmp_path / "signalled", reference)


def test_signal_to_the_process_group_leaves_the_loader_processes_running_and_silent(tmp_path, reference):
    """Sent to the whole group (as a cluster does), the loader processes get it too: they neither end (which would
    end the epoch) nor print dumps of their own (each forked process's stack also starts in _run_module_as_main)."""
    code, out, err = _train(tmp_path / "signalled", signal.SIGUSR1, to_group=True)
    assert code == 0, err[-3000:]
    _assert_dump_and_finished(out, err)
    time.sleep(0.2)  # a loader's dump, were there one, would be written by now; the run has ended anyway
    assert err.count("in _run_module_as_main") == 1, err
    _assert_same_files(tmp_path / "signalled", reference)


IN_PROCESS = """
import signal

num_epochs = 1


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
    if model.training and run_ctx.step == 0:
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR2)
"""


def test_in_process_run_takes_sigusr1_only_while_it_runs_and_leaves_a_used_sigusr2(tmp_path, monkeypatch, capfd):
    """A run inside another program (``main([...])``): SIGUSR1 dumps during the run, and the program's own handler is
    back afterwards; SIGUSR2, which the program handles, stays the program's."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, IN_PROCESS)
    calls = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: calls.append(signum))
        for signum in (signal.SIGUSR1, signal.SIGUSR2)
    }
    try:
        code = main([str(config)])
        _, err = capfd.readouterr()
        assert code == 0, err
        assert "in train_step" in err and str(config) in err, err
        assert calls == [signal.SIGUSR2]
        signal.raise_signal(signal.SIGUSR1)
        assert calls == [signal.SIGUSR2, signal.SIGUSR1]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
