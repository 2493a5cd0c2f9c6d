"""The training plots (i6_minireturnn.tools.plot_training, tools/plot_training.py): title, log score axis, integer
epoch ticks, the best epoch marked, the learning-rate plot; PNG and SVG."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from i6_minireturnn.file_formats import EpochData, write_learning_rate_file

if importlib.util.find_spec("matplotlib") is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip("matplotlib not installed: pip install 'i6-minireturnn[plot]'", allow_module_level=True)

from i6_minireturnn.tools import plot_training  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEV = [3.0, 1.0, 0.5, 0.7, 0.9]  # best at epoch 3


def _data():
    return {
        e: EpochData(learningRate=1e-3 * 0.5 ** (e - 1), error={"ce": 4.0 / e, "dev_loss_ce": DEV[e - 1]})
        for e in range(1, 6)
    }


def _write(folder: Path) -> Path:
    path = folder / "learning_rates"
    write_learning_rate_file(str(path), _data())
    return path


def test_scores_plot_has_title_log_axis_integer_ticks_and_the_best_epoch():
    fig = plot_training.plot_scores(_data(), "my-setup")
    ax = fig.axes[0]
    assert ax.get_title() == "my-setup: scores" and ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"ce", "dev_loss_ce", "best dev_loss_ce: epoch 3 (0.5)"} <= set(labels)
    best = next(line for line in ax.get_lines() if line.get_label().startswith("best"))
    assert list(best.get_xdata()) == [3] and list(best.get_ydata()) == [0.5]


def test_best_epoch_prefers_dev_and_takes_a_given_key():
    assert plot_training.best_epoch(_data()) == ("dev_loss_ce", 3, 0.5)
    assert plot_training.best_epoch(_data(), "ce") == ("ce", 5, 0.8)
    assert plot_training.best_epoch({1: EpochData(1.0, {"ce": 1.0})}) is None  # training scores only: no best


def test_nonpositive_scores_keep_a_linear_axis_and_nonfinite_ones_are_left_out():
    data = {1: EpochData(1.0, {"dev_loss_x": -1.0}), 2: EpochData(1.0, {"dev_loss_x": float("nan")})}
    ax = plot_training.plot_scores(data, "t").axes[0]
    assert ax.get_yscale() == "linear"
    assert plot_training.score_series(data) == {"dev_loss_x": [(1, -1.0)]}


def test_learning_rate_plot():
    ax = plot_training.plot_learning_rates(_data(), "my-setup").axes[0]
    assert ax.get_title() == "my-setup: learning rate" and ax.get_yscale() == "log"
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_command_line_writes_both_plots(tmp_path, fmt, capsys):
    path = _write(tmp_path / "my-setup")
    assert plot_training.main([str(path), "--format", fmt, "--out-dir", str(tmp_path / "plots")]) == 0
    for name in ("score_and_error", "learning_rate"):
        output = tmp_path / "plots" / f"{name}.{fmt}"
        assert output.stat().st_size > 1000
    if fmt == "svg":  # the default title: the folder of the learning_rates file
        assert "my-setup: scores" in (tmp_path / "plots" / "score_and_error.svg").read_text()
    assert "Wrote" in capsys.readouterr().out


def test_root_script_and_a_missing_file(tmp_path):
    path = _write(tmp_path)
    script = REPO / "tools" / "plot_training.py"
    run = subprocess.run([sys.executable, str(script), str(path), "--title", "x"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "score_and_error.png").stat().st_size > 1000 and (tmp_path / "learning_rate.png").exists()
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert run.returncode == 1 and "nothing" in run.stderr
