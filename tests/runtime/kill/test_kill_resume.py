"""A training stopped at any moment (SIGKILL, SIGTERM, SIGINT; at every file event of an epoch and at random times)
and restarted until it is done ends bit-identical to the uninterrupted run: model, optimizer state, learning_rates.

The training is deterministic on the CPU: newbob on the dev score (its decisions need the evaluation of the stored
epoch), gradient accumulation 2, norm clipping and dropout. Every run is a process of its own (forked from a process
that imported torch once, to keep the test fast) with one thread, as a restarted cluster job is.

Every test runs with epochs stored in the background (the default: a writer thread writes the files while the main
thread trains on) and synchronously (``store_checkpoints_in_background = False``). After start-up only the writer
makes file events, one job after another, so the events have the same indices in both modes (a test checks that):
a kill point means the same disk state in both. In the background mode a SIGTERM / SIGINT sent at a file event comes
from the writer thread and meets the main thread wherever it is (training the next epoch, evaluating, waiting for
the writes), which is what a stop during a background write looks like.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from ..conftest import assert_equal_nested

HARNESS = Path(__file__).with_name("stop_at_file_event.py")
REPO = Path(__file__).resolve().parents[3]
NUM_EPOCHS = 4
CONFIG = f"""
#!rnn.py
import torch
from torch import nn

torch.set_num_threads(1)
device = "cpu"
log_verbosity = 4
train = {{"class": "DummyDataset", "input_dim": 8, "output_dim": 5, "num_seqs": 60, "seq_len": 12}}
dev = {{"class": "DummyDataset", "input_dim": 8, "output_dim": 5, "num_seqs": 20, "seq_len": 12}}
batch_size = 120
max_seqs = 10
num_epochs = {NUM_EPOCHS}
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adam"}}
learning_rate = 0.01
learning_rate_control = "newbob_rel"
newbob_relative_error_threshold = -0.5  # decays after every epoch with a dev score
accum_grad_multiple_step = 2
gradient_clip_norm = 1.0
cleanup_old_models = {{"keep_last_n": 2, "keep_best_n": 1}}
store_checkpoints_in_background = {{background}}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 32)
        self.dropout = nn.Dropout(0.3)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        return self.out(self.dropout(torch.relu(self.hidden(x.float())))).permute(0, 2, 1)


def get_model(epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    loss = nn.functional.cross_entropy(model(data["data"]), data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="ce", loss=loss, inv_norm_factor=data["classes:size1"].sum())
"""


class ForkServer:
    """One stop_at_file_event.py process per worker thread: runs are forked from it (see its docstring)."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
        self.process = subprocess.Popen(
            [sys.executable, str(HARNESS)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, folder: Path, **request) -> Tuple[int, float]:
        """(exit status, seconds) of one run of returnn.config in `folder`."""
        self.process.stdin.write(json.dumps({"cwd": str(folder), "args": ["returnn.config"], **request}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return answer["status"], answer["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


_local = threading.local()
_servers: List[ForkServer] = []


def _server() -> ForkServer:
    if not hasattr(_local, "server"):
        _local.server = ForkServer()
        _servers.append(_local.server)
    return _local.server


@pytest.fixture(scope="module", autouse=True)
def _close_servers():
    yield
    for server in _servers:
        server.close()
    _servers.clear()


MODES = {"background": True, "synchronous": False}


def _setup(folder: Path, mode: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "returnn.config").write_text(textwrap.dedent(CONFIG).lstrip().replace("{background}", str(MODES[mode])))
    return folder


def _run_to_the_end(folder: Path) -> None:
    status, _ = _server().run(folder)
    assert status == 0, (folder / "stdout.txt").read_text()[-2000:] + (folder / "stderr.txt").read_text()[-2000:]


def _result(folder: Path) -> Tuple[Dict[str, bytes], str]:
    """(stored files of the final state, learning_rates text): checkpoints compared tensor by tensor."""
    out = folder / "out"
    files = sorted(p.name for p in out.iterdir() if p.name.endswith(".pt"))
    states = {name: torch.load(out / name, weights_only=False) for name in files}
    return states, (out / "learning_rates").read_text()


def _assert_same(result, reference, what: str) -> None:
    states, lr_text = result
    ref_states, ref_lr_text = reference
    assert lr_text == ref_lr_text, f"{what}: learning_rates differ"
    assert sorted(states) == sorted(ref_states), f"{what}: stored files {sorted(states)} != {sorted(ref_states)}"
    for name, state in states.items():
        assert_equal_nested(state, ref_states[name], f"{what}: {name}")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted run of each mode: its folder and how long it ran."""
    runs = {}
    for mode in MODES:
        folder = _setup(tmp_path_factory.mktemp("kill") / f"reference-{mode}", mode)
        status, seconds = _server().run(folder, record=str(folder / "events.json"))
        assert status == 0, (folder / "stderr.txt").read_text()[-2000:]
        runs[mode] = folder, seconds
    return runs


@pytest.fixture(scope="module", params=list(MODES))
def reference(request, references):
    """The mode, the uninterrupted run's result, its file events, the kill points, and how long it ran.

    Kill points: every state that storing, evaluating and cleaning up epochs 2 and 3 passes through on disk, i.e.
    after each temp file is created, after it is synced (complete but not renamed), after each rename and after
    each removal.
    """
    mode = request.param
    folder, seconds = references[mode]
    events: List[str] = json.loads((folder / "events.json").read_text())
    first = next(i for i, e in enumerate(events) if "model.002.opt.pt" in e)
    end = next(i for i, e in enumerate(events) if "model.004.opt.pt" in e)
    points = [
        i
        for i in range(first, end)
        if events[i].startswith("after ")
        and (".tmp-" in events[i] or events[i].startswith(("after replace", "after remove")))
    ]
    return mode, _result(folder), events, points, seconds


def test_file_events_are_the_same_in_both_modes(references):
    """The kill points index the same file events whether the writer thread or the main thread writes."""
    events = {}
    for mode, (folder, _) in references.items():  # temp file names differ by their random part only
        events[mode] = [re.sub(r"\.tmp-\w+", ".tmp-*", e) for e in json.loads((folder / "events.json").read_text())]
    assert events["background"] == events["synchronous"]
    _assert_same(_result(references["background"][0]), _result(references["synchronous"][0]), "background")


def _trial(base: Path, name: str, signame: str, index: int, mode: str) -> Tuple[int, str, Tuple]:
    """Stops a run at file event `index` with `signame`, runs it again until done: (status, stderr, result)."""
    folder = _setup(base / name, mode)
    status, _ = _server().run(folder, signal=signame, index=index)
    stderr = (folder / "stderr.txt").read_text()
    _run_to_the_end(folder)
    return status, stderr, _result(folder)


def test_sigkill_at_every_file_event_of_two_epochs(reference, tmp_path):
    mode, result, events, points, _ = reference
    # per epoch: optimizer, model, learning_rates (train scores), learning_rates (dev scores); and removals
    assert len(points) >= 24 and any("remove" in events[i] for i in points), [events[i] for i in points]
    with ThreadPoolExecutor(2) as pool:
        trials = {i: pool.submit(_trial, tmp_path, f"kill{i}", "SIGKILL", i, mode) for i in points}
    for i, trial in trials.items():
        status, stderr, finished = trial.result()
        assert status == -signal.SIGKILL, (events[i], stderr[-2000:])
        _assert_same(finished, result, f"SIGKILL {events[i]}")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_at_file_events_stop_cleanly_and_resume(reference, tmp_path, signame):
    mode, result, events, points, _ = reference
    with ThreadPoolExecutor(2) as pool:
        trials = {i: pool.submit(_trial, tmp_path, f"{signame}{i}", signame, i, mode) for i in points}
    for i, trial in trials.items():
        status, stderr, finished = trial.result()
        assert status == 128 + getattr(signal, signame), (events[i], stderr[-2000:])
        assert f"{signame} received in epoch" in stderr and "a restart continues with epoch" in stderr, stderr
        _assert_same(finished, result, f"{signame} {events[i]}")


def test_sigkill_at_random_moments(reference, tmp_path):
    mode, result, _, _, seconds = reference
    rng = random.Random(7)
    moments = sorted(rng.uniform(0.3 * seconds, seconds) for _ in range(10))  # start-up takes a good part

    def trial(k: int, delay: float):
        folder = _setup(tmp_path / f"random{k}", mode)
        status, _ = _server().run(folder, kill_after=delay)
        assert status in (0, -signal.SIGKILL)
        _run_to_the_end(folder)
        return _result(folder)

    with ThreadPoolExecutor(2) as pool:
        trials = [pool.submit(trial, k, delay) for k, delay in enumerate(moments)]
    for delay, finished in zip(moments, trials):
        _assert_same(finished.result(), result, f"SIGKILL after {delay:.2f}s")


def test_full_disk_while_storing_stops_naming_the_file_and_resumes(reference, tmp_path):
    mode, result = reference[:2]
    folder = _setup(tmp_path / "full", mode)
    # room for the learning_rates file, not for a checkpoint: the first epoch cannot be stored
    status, _ = _server().run(folder, file_size_limit=2000)
    stderr = (folder / "stderr.txt").read_text()
    assert status == 1 and "Cannot write" in stderr and "model.001" in stderr and "Traceback" not in stderr, stderr
    out = folder / "out"
    assert not [p for p in out.iterdir() if p.name.endswith(".pt") or ".tmp-" in p.name], sorted(os.listdir(out))
    assert "EpochData" not in (out / "learning_rates").read_text()  # no entry without its checkpoint
    _run_to_the_end(folder)  # space again: the run starts over and ends as the uninterrupted one
    _assert_same(_result(folder), result, "full disk")
