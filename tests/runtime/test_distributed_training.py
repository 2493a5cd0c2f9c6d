"""Training on two CPU processes started by torchrun (gloo), as users start it: the result equals one process that
sees the same global batches, checkpoints move between 1 and 2 processes, a killed rank stops the run and the restart
finishes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Tuple

import pytest
import torch

from i6_minireturnn.file_formats import read_learning_rate_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

# A CTC model on variable-length synthetic speech; SGD, so that the update is linear in the gradient and 2 ranks
# averaging their gradients with learning rate 2x equal 1 process summing 2 accumulated steps with learning rate x.
CONFIG = """
import os
import torch
from torch import nn

task = "train"
device = "cpu"
log_verbosity = 4
train = {"class": "SyntheticSpeechDataset", "num_seqs": 24, "feature_dim": 6, "num_classes": 5, "seed": 1}
dev = {"class": "SyntheticSpeechDataset", "num_seqs": 10, "feature_dim": 6, "num_classes": 5, "seed": 2}
batch_size = 1000
max_seqs = 3
num_workers_per_gpu = 1
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {"class": "sgd", "momentum": 0.9}
learning_rate = LR


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.out = nn.Linear(16, 6)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x))).log_softmax(-1)


def get_model(epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    log_probs = model(data["data"]).transpose(0, 1)  # [T, B, C]
    loss = nn.functional.ctc_loss(
        log_probs, data["classes"].long(), data["data:size1"], data["classes:size1"], blank=5, reduction="sum"
    )
    run_ctx.mark_as_loss(name="ctc", loss=loss, inv_norm_factor=data["classes:size1"].sum())
"""


def _write(folder: Path, extra: str = "", lr: float = 0.1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "returnn.config"
    path.write_text(textwrap.dedent(CONFIG).replace("LR", repr(lr)) + textwrap.dedent(extra))
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(folder: Path, *args: str, processes: int = 1, timeout: float = 180) -> Tuple[int, str]:
    """Runs the runtime as users do: ``python -m i6_minireturnn`` or through torchrun; returns (exit code, output)."""
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        cmd += ["-m", "i6_minireturnn"]
    else:
        cmd = [sys.executable, "-m", "i6_minireturnn"]
    proc = subprocess.run(
        cmd + ["returnn.config", *args], cwd=folder, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def _params(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _scores(folder: Path) -> dict:
    return {epoch: data.error for epoch, data in read_learning_rate_file(str(folder / "out/learning_rates")).items()}


@pytest.mark.parametrize("reduce_type, accum", [("grad", 1), ("param", 1), ("grad", 2)])
def test_two_ranks_equal_one_process_accumulating_their_batch_pairs(tmp_path, reduce_type, accum):
    # 24 sequences, 3 per batch: 8 batches an epoch; rank r takes batches r, r+2, ...; global step k is batches
    # 2k and 2k+1, which the single process accumulates (accum_grad_multiple_step = 2). With accumulation over 2
    # steps on each rank (no_sync on the first), an update covers 4 batches: the single process accumulates 4.
    extra = f"torch_distributed = {{'reduce_type': {reduce_type!r}}}\naccum_grad_multiple_step = {accum}\n"
    code, out = _run(_write(tmp_path / "two", extra, lr=0.2).parent, processes=2)
    assert code == 0, out
    code, out_single = _run(_write(tmp_path / "one", f"accum_grad_multiple_step = {2 * accum}\n", lr=0.1).parent)
    assert code == 0, out_single
    assert "trained 4 steps" in out and "trained 8 steps" in out_single
    for epoch in (1, 2):
        two, one = _params(tmp_path / f"two/out/model.00{epoch}.pt"), _params(tmp_path / f"one/out/model.00{epoch}.pt")
        assert two.keys() == one.keys()
        for name in one:
            assert torch.allclose(two[name], one[name], rtol=1e-5, atol=1e-6), (epoch, name)
    two_scores, one_scores = _scores(tmp_path / "two"), _scores(tmp_path / "one")
    for epoch in (1, 2):
        # dev: 10 sequences are 4 batches, 2 and 2 (or 3 and 1 with another split): all of them counted once
        assert two_scores[epoch]["dev_loss_ctc"] == pytest.approx(one_scores[epoch]["dev_loss_ctc"], rel=1e-6)
        assert two_scores[epoch]["ctc"] == pytest.approx(one_scores[epoch]["ctc"], rel=1e-5)


def test_uneven_batches_give_every_rank_the_same_steps_and_eval_counts_all(tmp_path):
    # 21 sequences: 7 batches; training drops the 7th (3 steps per rank), evaluation of 7 batches keeps all
    extra = "torch_distributed = {}\nnum_epochs = 1\n"
    extra += "train['num_seqs'] = 21\ndev = dict(train, seed=3)\n"
    code, out = _run(_write(tmp_path / "two", extra).parent, processes=2)
    assert code == 0, out
    assert "trained 3 steps" in out
    # the dev score equals task eval in one process on the stored model
    two = _scores(tmp_path / "two")[1]["dev_loss_ctc"]
    code, out = _run(tmp_path / "two", "++task", "eval", "++load_epoch", "1", "++learning_rate_file", "eval_scores")
    assert code == 0, out
    single = read_learning_rate_file(str(tmp_path / "two/eval_scores"))[1].error["dev_loss_ctc"]
    assert two == pytest.approx(single, rel=1e-6)


def test_checkpoints_move_between_one_and_two_processes(tmp_path):
    folder = _write(tmp_path / "a", "torch_distributed = {}\n").parent
    code, out = _run(folder, "++num_epochs", "1", processes=2)
    assert code == 0, out
    code, out = _run(folder)  # one process continues the 2-process training
    assert code == 0, out
    assert "Resuming training after stored epoch 1" in out and (folder / "out/model.002.pt").exists()

    folder = _write(tmp_path / "b", "torch_distributed = {}\n").parent
    code, out = _run(folder, "++num_epochs", "1")  # torchrun not used: one process, with a note
    assert code == 0, out
    assert "not started by torchrun" in out
    code, out = _run(folder, processes=2)
    assert code == 0, out
    assert "Resuming training after stored epoch 1" in out and (folder / "out/model.002.pt").exists()
    assert _params(folder / "out/model.002.pt").keys() == _params(tmp_path / "a/out/model.002.pt").keys()


KILL_RANK_1 = """
_orig_train_step = train_step
def train_step(*, model, data, run_ctx, **kwargs):
    if run_ctx.epoch == 2 and os.environ.get("RANK") == "1" and os.path.exists("kill-me"):
        os.kill(os.getpid(), 9)
    _orig_train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
"""


def test_a_killed_rank_stops_the_run_and_the_restart_finishes(tmp_path):
    folder = _write(tmp_path, "torch_distributed = {}\n" + KILL_RANK_1).parent
    (folder / "kill-me").write_text("")
    code, out = _run(folder, processes=2, timeout=150)  # a hang would time out here
    assert code != 0
    assert sorted(_scores(folder)) == [1] and not (folder / "out/model.002.pt").exists()
    (folder / "kill-me").unlink()
    code, out = _run(folder, processes=2)
    assert code == 0, out
    assert "Resuming training after stored epoch 1" in out
    assert sorted(_scores(folder)) == [1, 2] and (folder / "out/model.002.pt").exists()


NAN_ON_RANK_1 = """
_orig_train_step = train_step
def train_step(*, model, data, run_ctx, **kwargs):
    if os.environ.get("RANK") == "1" and run_ctx.epoch == 1 and run_ctx.global_step == 1:
        run_ctx.mark_as_loss(model(data["data"]).sum() * float("nan"), "ctc")
    else:
        _orig_train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
"""


def test_a_nonfinite_loss_on_one_rank_stops_all_or_all_skip_it(tmp_path):
    folder = _write(tmp_path / "stop", "torch_distributed = {}\n" + NAN_ON_RANK_1).parent
    code, out = _run(folder, processes=2)
    assert code != 0 and "Non-finite training loss in epoch 1, step 1" in out
    assert not (folder / "out/model.001.pt").exists()

    extra = "torch_distributed = {}\nstop_on_nonfinite_train_score = False\n" + NAN_ON_RANK_1
    folder = _write(tmp_path / "skip", extra).parent
    code, out = _run(folder, processes=2)
    assert code == 0, out
    assert "1 step(s) with non-finite loss skipped" in out
    weights = _params(folder / "out/model.002.pt")
    assert all(torch.isfinite(w).all() for w in weights.values())


STREAMED = """
from i6_minireturnn.data.generating import SyntheticSpeechDataset

class StreamedSpeech(SyntheticSpeechDataset):
    has_cheap_lengths = False  # its epochs are streamed: no rank knows its step count in advance

train = dict(train, **{"class": StreamedSpeech, "num_seqs": 23})
"""


def test_streamed_dataset_ends_the_epoch_on_every_rank_together(tmp_path):
    folder = _write(tmp_path, "torch_distributed = {}\nnum_epochs = 1\n" + STREAMED).parent
    code, out = _run(folder, processes=2)
    assert code == 0, out
    steps = [int(s) for s in re.findall(r"trained (\d+) steps", out)]
    assert steps and steps[0] >= 3  # 23 sequences dealt 12 / 11, 3 per batch: 4 batches each


EXIT_HANDLER = """
import atexit

atexit.register(lambda: print(f"exit handler of rank {os.environ['RANK']} ran", flush=True))
_train_step = train_step


def train_step(*, model, data, run_ctx, **kwargs):
    _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
    if BROKEN:
        raise RuntimeError("broken step")
    for _ in range(20):  # collectives nobody waits for: gloo's threads release their tensors after the barrier
        torch.distributed.all_reduce(torch.ones(100000), async_op=True)
"""


@pytest.mark.parametrize("broken", [False, True])
def test_ranks_end_after_their_exit_handlers_with_the_runs_exit_code(tmp_path, broken):
    # The ranks end themselves once the exit handlers ran: a gloo thread releasing a tensor while the interpreter
    # finalizes took the GIL and aborted a finished run ("terminate called without an active exception", SIGABRT).
    extra = "torch_distributed = {}\nnum_epochs = 1\n" + EXIT_HANDLER.replace("BROKEN", repr(broken))
    code, out = _run(_write(tmp_path, extra).parent, processes=2)
    assert "terminate called" not in out
    if broken:
        # the rank that fails second may be stopped by torchrun first: the first one's handlers ran
        assert code != 0 and "broken step" in out and "exit handler of rank" in out
    else:
        assert code == 0 and "Finished in" in out, out
        assert "exit handler of rank 0 ran" in out and "exit handler of rank 1 ran" in out
        assert (tmp_path / "out/model.001.pt").exists()


def test_several_processes_without_torch_distributed_are_refused(tmp_path):
    folder = _write(tmp_path).parent
    code, out = _run(folder, processes=2)
    assert code != 0 and "torch_distributed" in out and "WORLD_SIZE" in out
    assert not (folder / "out").exists()


@pytest.mark.parametrize(
    "value, expect",
    [("{'reduce_type': 'sum'}", "reduce_type"), ("{'bucket': 1}", "unknown entries bucket"), ("[1]", "must be a dict")],
)
def test_bad_torch_distributed_options_are_named(tmp_path, value, expect):
    folder = _write(tmp_path, f"torch_distributed = {value}\n").parent
    code, out = _run(folder, processes=2)
    assert code != 0 and expect in out


def test_forward_refuses_several_processes(tmp_path):
    folder = _write(tmp_path, "torch_distributed = {}\nnum_epochs = 1\n").parent
    assert _run(folder)[0] == 0
    extra = "def forward_step(*, model, data, run_ctx, **kwargs):\n    pass\nforward = dev\n"
    with open(folder / "returnn.config", "a") as f:
        f.write(extra)
    code, out = _run(folder, "++task", "forward", processes=2)
    assert code != 0 and "Task forward runs in one process" in out


HOOKS = """
_calls = {"steps": 0, "pre": 0, "post": 0}
_get_model = get_model


def get_model(epoch, step, **kwargs):
    model = _get_model(epoch, step)
    model.register_forward_pre_hook(lambda module, args: _calls.__setitem__("pre", _calls["pre"] + 1))
    model.register_forward_hook(lambda module, args, out: _calls.__setitem__("post", _calls["post"] + 1))
    return model


_train_step = train_step


def train_step(*, model, data, run_ctx, **kwargs):
    _calls["steps"] += 1
    _train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
    if not _calls["pre"] == _calls["post"] == _calls["steps"]:
        raise AssertionError(f"hooks ran {_calls} times")
"""


def test_hooks_of_the_model_run_once_per_call(tmp_path):
    # the model's forward goes through DDP, which calls the module again: its hooks still run once per step
    folder = _write(tmp_path, "torch_distributed = {}\nnum_epochs = 1\n" + HOOKS).parent
    code, out = _run(folder, processes=2)
    assert code == 0, out
    assert "trained 4 steps" in out
