"""RETURNN's file formats shared by the runtime and the jobs: learning_rates file, checkpoint names, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from i6_minireturnn import file_formats
from i6_minireturnn.engine import checkpoints, learning_rate_control
from i6_minireturnn.errors import FileFormatError, UserError
from i6_minireturnn.file_formats import EpochData, read_learning_rate_file, write_learning_rate_file

REPO = Path(__file__).resolve().parents[2]


def test_learning_rate_file_round_trip_in_returnn_format(tmp_path):
    data = {2: EpochData(0.5, {"dev_loss_ce": float("inf")}), 1: EpochData(1.0, {"ce": 2.5})}
    write_learning_rate_file(str(tmp_path / "learning_rates"), data)
    assert (tmp_path / "learning_rates").read_text() == (
        "{\n"
        "1: EpochData(learningRate=1.0, error={'ce': 2.5}),\n"
        "2: EpochData(learningRate=0.5, error={'dev_loss_ce': float('inf')}),\n"
        "}\n"
    )
    assert read_learning_rate_file(str(tmp_path / "learning_rates")) == data
    assert [p.name for p in tmp_path.iterdir()] == ["learning_rates"]  # no temp file left


@pytest.mark.parametrize(
    "text, message", [("{1: EpochData(", "Cannot read learning_rate_file"), ("[1, 2]", "does not hold a dict")]
)
def test_unreadable_learning_rate_file_names_the_file(tmp_path, text, message):
    (tmp_path / "lr").write_text(text)
    with pytest.raises(FileFormatError, match=f"{message}.*lr|lr.*{message}") as info:
        read_learning_rate_file(str(tmp_path / "lr"))
    assert isinstance(info.value, UserError)  # shown as one line by the command line


def test_checkpoint_file_names():
    assert file_formats.model_path("out/epoch", 7) == "out/epoch.007.pt"
    assert file_formats.optimizer_path("out/epoch", 12) == "out/epoch.012.opt.pt"
    assert file_formats.epoch_prefix("model", 1234) == "model.1234"


def test_runtime_modules_use_these_names():
    assert learning_rate_control.EpochData is EpochData
    assert learning_rate_control.read_learning_rate_file is read_learning_rate_file
    assert checkpoints.model_path is file_formats.model_path
    assert checkpoints.optimizer_path is file_formats.optimizer_path
    assert (checkpoints.MODEL_SUFFIX, checkpoints.OPTIMIZER_SUFFIX) == (".pt", ".opt.pt")


def test_importing_does_not_import_torch():
    code = "import sys, i6_minireturnn.file_formats; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
