"""Epochs stored by a writer thread (``store_checkpoints_in_background``, default True) and the first epoch's batches
read while the model is built: the same files and batches as without, failures and stop signals as before."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from i6_minireturnn.engine import checkpoints
from i6_minireturnn.engine.background_store import BackgroundStore
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.errors import DiskFullError

from .conftest import assert_equal_nested, write_config

REPO = Path(__file__).resolve().parents[2]

# dropout, gradient accumulation and a shuffled epoch: every random number drawn shows in the stored files
TRAINING = """
num_epochs = 3
train["seq_ordering"] = "random"
train["num_seqs"] = 24
num_workers_per_gpu = 2
accum_grad_multiple_step = 2
learning_rate_control = "newbob_rel"
newbob_relative_error_threshold = -0.5


class DropoutModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 16)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(16, 3)
        self.register_buffer("padding", torch.zeros(2000))  # a model file larger than file_size_limit below

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.hidden(x.float())))).permute(0, 2, 1)


def get_model(epoch, step, **kwargs):
    return DropoutModel()
"""


def _run_in(folder: Path, run_cli, monkeypatch, *args: str):
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    return run_cli(*args)


def _stored(folder: Path):
    """{file name: loaded content} of the stored checkpoints, and the learning_rates text."""
    out = folder / "out"
    files = {p.name: torch.load(p, weights_only=False) for p in sorted(out.glob("*.pt"))}
    return files, (out / "learning_rates").read_text()


def _assert_same_files(folder: Path, reference: Path) -> None:
    files, lr_text = _stored(folder)
    ref_files, ref_lr_text = _stored(reference)
    assert lr_text == ref_lr_text
    assert sorted(files) == sorted(ref_files)
    for name, content in files.items():
        assert_equal_nested(content, ref_files[name], name)


# ---- the queue itself ----------------------------------------------------------------------------------------------


def test_jobs_run_in_order_and_a_failure_stops_the_queue():
    store = BackgroundStore()
    done = []
    release = threading.Event()
    store.submit("first", lambda: (release.wait(10), done.append(1)))
    store.submit("second", lambda: done.append(2))
    assert done == []  # the caller goes on while the jobs wait
    release.set()
    store.flush()
    assert done == [1, 2]

    queued = threading.Event()

    def fail():
        queued.wait(10)  # fails once the next job is queued behind it (else that submit would raise already)
        raise DiskFullError("Cannot write out/model.002.pt: the disk is full")

    store.submit("out/model.002.pt", fail)
    store.submit("out/learning_rates", lambda: done.append("learning_rates"))
    queued.set()
    with pytest.raises(DiskFullError, match="model.002.pt") as caught:
        store.flush()
    assert "out/model.002.pt" in "".join(caught.value.__notes__)
    assert done == [1, 2]  # nothing after the failed write
    store.flush()  # raised once; on the way out of that error a flush must not raise it again
    with pytest.raises(DiskFullError):  # new work never runs after a failure
        store.submit("out/learning_rates", lambda: done.append("late"))
    assert done == [1, 2]
    assert not _writer_threads()  # ends with its queue


def _writer_threads():
    return [t for t in threading.enumerate() if t.name == "background-store"]


# names of this process's threads each time it forked, seen right after the fork (hooks run before the fork in
# reverse order of registration: this module's before the store's own; a hook cannot be removed again)
_THREADS_AT_FORK = []
os.register_at_fork(after_in_parent=lambda: _THREADS_AT_FORK.append([t.name for t in threading.enumerate()]))


def test_no_writer_thread_when_worker_processes_are_forked(tmp_path, run_cli, monkeypatch):
    """Worker processes start by fork: a writer thread in the middle of a write would leave its locks held in the
    child, so the writer finishes its files before any fork (train and eval batches from forked workers)."""
    extra = TRAINING.replace("num_workers_per_gpu = 2", 'num_workers_per_gpu = 1\ndata_worker_type = "process"')
    config = write_config(tmp_path, extra)
    _THREADS_AT_FORK.clear()
    code, out, err = _run_in(tmp_path, run_cli, monkeypatch, config)
    assert code == 0, err
    assert len(_THREADS_AT_FORK) >= 6  # train and dev of 3 epochs
    assert not [names for names in _THREADS_AT_FORK if "background-store" in names]


def test_snapshot_is_a_copy_also_on_cpu():
    model = torch.nn.Linear(2, 2)
    snapshot = checkpoints.snapshot_model(model, 1, 0)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(snapshot["model"]["weight"], model.weight)
    assert snapshot["model"]["weight"].data_ptr() != model.weight.data_ptr()
    shared = torch.zeros(3)
    copied = checkpoints.cpu_snapshot({"a": shared, "b": shared, "c": [shared]})
    assert copied["a"] is copied["b"] is copied["c"][0] and copied["a"].data_ptr() != shared.data_ptr()


# ---- end to end ----------------------------------------------------------------------------------------------------


def test_background_files_equal_synchronous_ones(tmp_path, run_cli, monkeypatch):
    for name, background in (("background", True), ("synchronous", False)):
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, TRAINING + f"store_checkpoints_in_background = {background}\n")
        code, out, err = _run_in(folder, run_cli, monkeypatch, config)
        assert code == 0, err
        assert "Finished training at epoch 3" in out + err
    _assert_same_files(tmp_path / "background", tmp_path / "synchronous")
    files, lr_text = _stored(tmp_path / "background")
    assert {"model.001.pt", "model.002.pt", "model.003.pt", "model.002.opt.pt", "model.003.opt.pt"} == set(files)
    assert all(t.device.type == "cpu" for t in files["model.003.pt"]["model"].values())
    assert "3: EpochData" in lr_text and "dev_loss_CE" in lr_text


def test_full_disk_in_the_background_stops_naming_the_file(tmp_path):
    """A checkpoint write fails in the writer thread (RLIMIT_FSIZE, as a full disk): the run exits 1 with the error
    naming the file, and the learning_rates file has no entry of that epoch."""
    write_config(tmp_path, TRAINING)

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))  # room for learning_rates only

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", "returnn.config"],
        cwd=tmp_path,
        env=env,
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Cannot write out/model.001" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert not [p.name for p in out.iterdir() if p.name.endswith(".pt") or ".tmp-" in p.name], os.listdir(out)
    assert "EpochData" not in (out / "learning_rates").read_text()


def test_sigterm_while_a_checkpoint_is_written_keeps_the_epoch_and_resumes(tmp_path, run_cli, monkeypatch):
    """SIGTERM arrives while epoch 1's model file is being written in the background: the write finishes, the run
    stops with the epochs stored so far complete (no partial file), and the restart ends as the uninterrupted run."""
    reference = tmp_path / "reference"
    reference.mkdir()
    code, _, err = _run_in(reference, run_cli, monkeypatch, write_config(reference, TRAINING))
    assert code == 0, err

    folder = tmp_path / "stopped"
    folder.mkdir()
    config = write_config(folder, TRAINING)
    write = checkpoints.write_snapshot

    def slow_write(state, path, **kwargs):
        if path.endswith("model.001.pt") and threading.current_thread() is not threading.main_thread():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the main thread handles the signal while the file is still being written
        write(state, path, **kwargs)

    monkeypatch.setattr(checkpoints, "write_snapshot", slow_write)
    code, _, err = _run_in(folder, run_cli, monkeypatch, config)
    assert code == 128 + signal.SIGTERM, err
    # The main thread handles the signal at its next instruction: in epoch 2's training, or, where epoch 2 trained
    # before the writer reached the file (a slow machine), while epoch 2 is being stored, which then completes.
    kept = re.search(r"kept the stored epochs up to (\d+); a restart continues with epoch (\d+)", err)
    assert kept and int(kept[1]) in (1, 2) and int(kept[2]) == int(kept[1]) + 1, err
    stored = int(kept[1])
    out = folder / "out"
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    assert f"{stored}: EpochData" in (out / "learning_rates").read_text()
    assert f"{stored + 1}: EpochData" not in (out / "learning_rates").read_text()
    assert torch.load(out / "model.001.pt", weights_only=False)["epoch"] == 1
    assert torch.load(out / f"model.{stored:03d}.pt", weights_only=False)["epoch"] == stored
    monkeypatch.setattr(checkpoints, "write_snapshot", write)

    code, out_text, err = _run_in(folder, run_cli, monkeypatch, config)
    assert code == 0, err
    assert f"Resuming training after stored epoch {stored}" in out_text + err
    _assert_same_files(folder, reference)


# ---- the first epoch's batches -------------------------------------------------------------------------------------

RECORD_BATCHES = """
def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
    if model.training:
        with open("batches.txt", "a") as f:
            f.write(f"{run_ctx.epoch} {list(data['seq_tag'])} {float(data['data'].double().sum())!r}\\n")
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_first_epoch_batches_are_the_same_with_the_early_start(tmp_path, run_cli, monkeypatch, workers):
    started = []
    start = Engine._start_first_batches

    def spy(self):
        start(self)
        started.append(self._first_batches is not None)

    extra = TRAINING + RECORD_BATCHES + f"num_workers_per_gpu = {workers}\nnum_epochs = 2\n"
    for name in ("early", "late"):
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, extra)
        monkeypatch.setattr(Engine, "_start_first_batches", spy if name == "early" else lambda self: None)
        code, _, err = _run_in(folder, run_cli, monkeypatch, config)
        assert code == 0, err
        # resumed: the first epoch of this run is epoch 3
        code, _, err = _run_in(folder, run_cli, monkeypatch, config, "++num_epochs", "3")
        assert code == 0, err
    assert started == [True, True]
    early = (tmp_path / "early/batches.txt").read_text()
    assert early == (tmp_path / "late/batches.txt").read_text()
    assert [line.split()[0] for line in early.splitlines()].count("1") > 1
    _assert_same_files(tmp_path / "early", tmp_path / "late")
