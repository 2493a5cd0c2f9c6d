"""A config in Mini-RETURNN's own style (its engine test scenario as a config file) runs unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

REPO = Path(__file__).resolve().parents[2]

CONFIG = """#!rnn.py
import torch
from torch import nn

task = "train"
device = "cpu"
train = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5}
dev = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 2, "seq_len": 5}
model = "models/model"
learning_rate_file = "learning_rates"
num_epochs = 5
optimizer = {"class": "adam"}


def ce_train_step(*, model, data, run_ctx, **_kwargs):
    features = data["data"]
    features_len = data["data:size1"]
    features_len, indices = torch.sort(features_len, descending=True)
    features = features[indices, :, :]

    labels = data["classes"][indices, :]
    labels_len = data["classes:size1"][indices]

    logits = model(features)

    loss = nn.functional.cross_entropy(logits, labels.long(), reduction="sum")
    num_frames = torch.sum(labels_len)
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=num_frames)


class LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, x):
        x = x.type(torch.float32)
        logits = self.linear(x)
        logits_ce_order = torch.permute(logits, dims=(0, 2, 1))  # CE expects [B, F, T]
        return logits_ce_order


def get_linear_model(epoch, step, **kwargs):
    return LinearModel()


get_model = get_linear_model
train_step = ce_train_step
"""


@pytest.mark.parametrize("entry", ["rnn.py", "module", "console_script"])
def test_minireturnn_engine_scenario(tmp_path, entry):
    (tmp_path / "returnn.config").write_text(CONFIG)
    if entry == "rnn.py":
        command = [sys.executable, str(REPO / "rnn.py"), "returnn.config"]
    elif entry == "module":
        command = [sys.executable, "-m", "i6_minireturnn", "returnn.config"]
    else:
        script = shutil.which("i6-minireturnn")
        if script is None:
            pytest.skip("console script not installed (pip install -e . installs it)")
        command = [script, "returnn.config"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path / "models")) == sorted(
        [f"model.{e:03d}.pt" for e in range(1, 6)] + ["model.004.opt.pt", "model.005.opt.pt"]
    )
    data = read_learning_rate_file(str(tmp_path / "learning_rates"))
    assert sorted(data) == [1, 2, 3, 4, 5]
    assert set(data[5].error) == {"CE", "dev_loss_CE"}
    assert data[5].learning_rate == 1.0  # RETURNN's default learning_rate
