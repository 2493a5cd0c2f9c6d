"""Logging (greeting, verbosity, log files, progress with ETA) and the updater's behaviour."""

from __future__ import annotations

import io
import os
import socket
import threading

import pytest
import torch

from i6_minireturnn import __version__
from i6_minireturnn.config import Config
from i6_minireturnn.engine.updater import Updater
from i6_minireturnn.errors import ConfigError
from i6_minireturnn.log import Log

from .conftest import write_config


def test_log_file_greeting_and_progress(tmp_path, run_cli):
    config = write_config(
        tmp_path, 'log = ["logs/a.log", "logs/b.log"]\nlog_progress_interval = 0\nlog_step_interval = 1\n'
    )
    code, out, err = run_cli(config)
    assert code == 0, err
    text = (tmp_path / "logs/a.log").read_text()
    assert text == (tmp_path / "logs/b.log").read_text()
    assert f"i6-minireturnn {__version__}" in text and f"pid {os.getpid()}" in text
    assert socket.gethostname() in text and f"torch {torch.__version__}" in text and "device cpu" in text
    assert "train epoch 1 step 1, step time" in text  # per-step lines (verbosity 5) with loss names
    assert "CE " in text
    assert "step 1/2 (50%), ETA" in text  # progress with ETA
    assert "epoch 2: trained 2 steps in" in text and text in out


def test_lines_of_several_threads_stay_whole_in_every_output():
    # print writes a message and its newline separately; the background checkpoint writer's "Saved model" line
    # landed between them in one log file and not in the other
    log, first, second = Log(), io.StringIO(), io.StringIO()
    log.outputs = [first, second]

    def write_lines(name):
        for i in range(1000):
            print(f"{name} line {i}", "in", "parts", file=log.v3)

    threads = [threading.Thread(target=write_lines, args=(name,)) for name in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = first.getvalue().splitlines()
    assert len(lines) == 3000 and all(line.endswith(" in parts") for line in lines)
    assert first.getvalue() == second.getvalue()
    print("unfinished", end="", file=log.v3)  # held until its newline or a flush
    assert not first.getvalue().endswith("unfinished")
    log.v3.flush()
    assert first.getvalue().endswith("unfinished") and second.getvalue().endswith("unfinished")


def test_low_verbosity_is_quiet(tmp_path, run_cli):
    code, out, err = run_cli(write_config(tmp_path, "log_verbosity = 1\n"))
    assert code == 0, err
    assert out == ""


def test_errors_go_to_the_log_file_too(tmp_path, run_cli):
    config = write_config(tmp_path, 'log = "run.log"\noptimizer = {"class": "adamx"}\n')
    code, _, err = run_cli(config)
    assert code == 1 and "adamx" in err
    assert "Unknown optimizer class 'adamx'" in (tmp_path / "run.log").read_text()


def _updater(**keys):
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    config = Config({"optimizer": {"class": "SGD"}, **keys})
    updater = Updater(config=config, network=model, device="cpu", initial_learning_rate=1.0)
    updater.create_optimizer()
    return model, updater


def _loss(model, scale=1.0):
    return model(torch.ones(1, 2)).sum() * scale  # gradient d/dw = scale per weight


def test_gradient_accumulation_updates_every_n_steps():
    model, updater = _updater(accum_grad_multiple_step=2)
    updater.step(_loss(model), 0)
    assert model.weight.tolist() == [[1.0, 1.0]]
    updater.step(_loss(model), 1)
    assert model.weight.tolist() == [[-1.0, -1.0]]  # both steps' gradients summed
    updater.step(_loss(model), 2)
    updater.apply_update()  # the epoch end applies a partial accumulation
    assert model.weight.tolist() == [[-2.0, -2.0]]


def test_gradient_clip_by_value_and_norm():
    model, updater = _updater(gradient_clip=0.25)
    updater.step(_loss(model, 10.0), 0)
    assert model.weight.tolist() == [[0.75, 0.75]]
    model, updater = _updater(gradient_clip_norm=1.0)
    updater.step(_loss(model, 10.0), 0)
    assert model.weight[0, 0].item() == pytest.approx(1.0 - 2**-0.5)


def test_nonfinite_gradient_norm_skips_update():
    model, updater = _updater(gradient_clip_norm=1.0)
    updater.step(_loss(model, float("inf")), 0)
    assert model.weight.tolist() == [[1.0, 1.0]] and updater.num_skipped_updates == 1


def test_weight_decay_learning_rate_and_epsilon():
    _, updater = _updater(weight_decay=0.1)
    assert updater.optimizer.param_groups[0]["weight_decay"] == 0.1
    model = torch.nn.Linear(2, 1)
    config = Config({"optimizer": {"class": "AdamW", "epsilon": 1e-3, "learning_rate_multiplier": 0.5}})
    updater = Updater(config=config, network=model, device="cpu", initial_learning_rate=1.0)
    updater.create_optimizer()
    updater.set_learning_rate(0.2)
    group = updater.optimizer.param_groups[0]
    assert group["eps"] == 1e-3 and group["lr"] == pytest.approx(0.1)
    assert config.typed_value("optimizer")["class"] == "AdamW"  # the config's dict is not consumed


def test_optimizer_dict_errors():
    model = torch.nn.Linear(2, 1)
    for options, message in [
        ({"class": "adam", "learning_rate": 0.1}, "outside of the 'optimizer' dict"),
        ({"lr": 0.1}, "no 'class'"),
        ("adam", "must be a dict"),
    ]:
        updater = Updater(config=Config({"optimizer": options}), network=model, device="cpu")
        with pytest.raises(ConfigError, match=message):
            updater.create_optimizer()


def test_skipped_step_keeps_the_window_gradients():
    """accum 2, second micro-step non-finite: the update applies the first micro-step's gradient alone."""
    model, updater = _updater(accum_grad_multiple_step=2)  # SGD, learning rate 1, weights 1
    updater.step(_loss(model, 0.5), 0)  # gradient 0.5 per weight, accumulated
    updater.skip_step(1)  # window boundary: the update happens with what step 0 accumulated
    assert model.weight.tolist() == [[0.5, 0.5]]  # 1 - 1.0 * 0.5
    updater.skip_step(2)
    updater.skip_step(3)  # a window of skipped steps only: no update
    assert model.weight.tolist() == [[0.5, 0.5]]
    updater.skip_step(4)
    updater.step(_loss(model, 0.25), 5)  # a skipped first micro-step does not hold back the second
    assert model.weight.tolist() == [[0.25, 0.25]]


# A scalar parameter w (1.0 at the start) and the loss w * s in step s (1-based): the gradient of step s is s, or
# the loss is NaN in the steps listed in _NONFINITE.
SCALAR_CONFIG = """
#!rnn.py
import torch
from torch import nn

task = "train"
device = "cpu"
log_verbosity = 2
train = {"class": "DummyDataset", "input_dim": 1, "output_dim": 2, "num_seqs": 6, "seq_len": 2}
batch_size = 100
max_seqs = 1
num_workers_per_gpu = 0
num_epochs = 1
model = "out/model"
optimizer = {"class": "sgd", "weight_decay": 0.5}
learning_rate = 0.1
accum_grad_multiple_step = 2
stop_on_nonfinite_train_score = False
_NONFINITE = {2, 3, 4, 5}
_calls = []


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))


def get_model(**kwargs):
    return Scalar()


def train_step(*, model, data, run_ctx, **kwargs):
    _calls.append(None)
    step = len(_calls)
    run_ctx.mark_as_loss(model.w * (float("nan") if step in _NONFINITE else float(step)), "loss")
"""


def test_nonfinite_micro_step_drops_only_its_own_gradient(tmp_path, run_cli):
    """Through the engine: windows (1, NaN), (NaN, NaN), (NaN, 6), SGD with weight decay 0.5, learning rate 0.1."""
    config = write_config(tmp_path, base=SCALAR_CONFIG)
    code, out, err = run_cli(config)
    assert code == 0, err
    assert "4 step(s) with non-finite loss skipped" in out
    lr, wd = 0.1, 0.5
    w = 1.0
    w -= lr * (1.0 + wd * w)  # window 1: the valid first micro-step's gradient alone (the NaN step adds nothing)
    # window 2: every micro-step skipped, no update (weight decay would otherwise shrink w)
    w -= lr * (6.0 + wd * w)  # window 3: the valid second micro-step's gradient
    checkpoint = torch.load(tmp_path / "out/model.001.pt", weights_only=False)
    assert checkpoint["model"]["w"].item() == pytest.approx(w, abs=1e-6)
