"""Helpers to write small configs and run them through the command-line entry in-process."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Tuple

import pytest
import torch

from i6_minireturnn.__main__ import main

# A Mini-RETURNN style config: linear framewise classifier on DummyDataset (as in Mini-RETURNN's engine test).
BASE_CONFIG = """
#!rnn.py
import torch
from torch import nn

task = "train"
device = "cpu"
log_verbosity = 5
train = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 8, "seq_len": 5}
dev = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5}
batch_size = 20
max_seqs = 4
num_workers_per_gpu = 0
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {"class": "adam"}
learning_rate = 0.01


class LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, x):
        return self.linear(x.float()).permute(0, 2, 1)  # [B, classes, T] for cross_entropy


def get_model(epoch, step, **kwargs):
    return LinearModel()


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
"""


def write_config(folder: Path, extra: str = "", base: str = BASE_CONFIG, name: str = "returnn.config") -> Path:
    """Writes base + extra lines as a config file in `folder`."""
    path = folder / name
    path.write_text(textwrap.dedent(base).lstrip() + "\n" + textwrap.dedent(extra))
    return path


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """Runs ``python -m i6_minireturnn ARGS`` in-process inside tmp_path; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> Tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_equal_nested(a, b, where: str) -> None:
    """Stored states (nested dicts / lists of tensors and values) are equal: same keys, dtypes, shapes and values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
