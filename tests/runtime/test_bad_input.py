"""Bad input: one clear message naming the cause, a non-zero exit, and no partial checkpoint or learning_rates file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from .conftest import write_config


def _outputs(tmp_path):
    out = tmp_path / "out"
    return sorted(os.listdir(out)) if out.exists() else []


def _fails(run_cli, tmp_path, config, *args, expect=()):
    code, out, err = run_cli(config, *args)
    assert code != 0, out
    for text in expect:
        assert text in err, err
    assert "Traceback" not in err  # a user error, not a crash
    assert not [f for f in _outputs(tmp_path) if ".tmp-" in f]
    return err


def test_missing_config_file(tmp_path, run_cli):
    _fails(run_cli, tmp_path, "does_not_exist.config", expect=["Config file not found", "does_not_exist.config"])


def test_python_syntax_error_names_file_and_line(tmp_path, run_cli):
    config = write_config(tmp_path, "num_epochs = = 3\n")
    lines = config.read_text().splitlines()
    line_no = lines.index("num_epochs = = 3") + 1
    err = _fails(run_cli, tmp_path, config, expect=["syntax error", str(config), f"line {line_no}"])
    assert "num_epochs = = 3" in err


def test_error_while_running_config_names_line(tmp_path, run_cli):
    config = write_config(tmp_path, "x = undefined_name + 1\n")
    _fails(run_cli, tmp_path, config, expect=["NameError", "undefined_name", "line"])


@pytest.mark.parametrize("key", ["get_model", "train_step"])
def test_missing_function(tmp_path, run_cli, key):
    config = write_config(tmp_path, f"del {key}\n")
    _fails(run_cli, tmp_path, config, expect=[f"'{key}'", "missing", str(config)])
    assert _outputs(tmp_path) == []


def test_missing_forward_step(tmp_path, run_cli):
    config = write_config(tmp_path, "forward = dev\n")
    assert run_cli(config, "++num_epochs", "1")[0] == 0
    _fails(run_cli, tmp_path, config, "++task", "forward", expect=["'forward_step'", "missing"])


def test_unknown_optimizer_lists_valid_names(tmp_path, run_cli):
    config = write_config(tmp_path, 'optimizer = {"class": "adamm"}\n')
    _fails(run_cli, tmp_path, config, expect=["adamm", "adam", "adamw", "sgd"])
    assert _outputs(tmp_path) == []


def test_unknown_optimizer_argument(tmp_path, run_cli):
    config = write_config(tmp_path, 'optimizer = {"class": "adam", "betas2": 0.9}\n')
    _fails(run_cli, tmp_path, config, expect=["betas2", "Adam"])


@pytest.mark.parametrize(
    "line, key",
    [
        ('batch_size = "many"\n', "batch_size"),
        ('num_epochs = "two"\n', "num_epochs"),
        ("num_epochs = 2.5\n", "num_epochs"),
    ],
)
def test_wrong_type(tmp_path, run_cli, line, key):
    config = write_config(tmp_path, line)
    _fails(run_cli, tmp_path, config, expect=[f"'{key}'", "must be", str(config)])
    assert _outputs(tmp_path) == []


def test_misspelt_key_is_reported_with_suggestion(tmp_path, run_cli):
    config = write_config(tmp_path, "learning_rat = 0.1\n").read_text().replace("learning_rate = 0.01\n", "")
    (tmp_path / "c.config").write_text(config)
    _fails(run_cli, tmp_path, tmp_path / "c.config", expect=["'learning_rat'", "did you mean 'learning_rate'"])
    assert _outputs(tmp_path) == []


def test_step_that_marks_no_loss(tmp_path, run_cli):
    config = write_config(tmp_path, "def train_step(*, model, data, run_ctx, **kwargs):\n    model(data['data'])\n")
    _fails(run_cli, tmp_path, config, expect=["marked no loss", "mark_as_loss"])
    assert _outputs(tmp_path) == []


def test_loss_that_is_not_a_scalar(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    run_ctx.mark_as_loss(model(data['data']).sum(1), 'per_frame')\n",
    )
    _fails(run_cli, tmp_path, config, expect=["'per_frame'", "must be a scalar", "shape"])
    assert _outputs(tmp_path) == []


NAN_STEP = """
_orig = train_step
def train_step(*, model, data, run_ctx, **kwargs):
    if run_ctx.epoch == 2 and run_ctx.global_step == 3:
        run_ctx.mark_as_loss(model(data["data"]).sum() * float("nan"), "CE")
    else:
        _orig(model=model, data=data, run_ctx=run_ctx, **kwargs)
"""


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path, run_cli):
    config = write_config(tmp_path, NAN_STEP)
    _fails(run_cli, tmp_path, config, expect=["Non-finite", "epoch 2", "step 3"])
    # epoch 1 is complete and stored; epoch 2 left nothing behind
    assert "model.001.pt" in _outputs(tmp_path) and "model.002.pt" not in _outputs(tmp_path)
    from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert "CE" not in data.get(2, type("E", (), {"error": {}})()).error


def test_nonfinite_loss_skipped_when_allowed(tmp_path, run_cli):
    config = write_config(tmp_path, NAN_STEP + "stop_on_nonfinite_train_score = False\n")
    code, out, err = run_cli(config)
    assert code == 0, err
    assert "1 step(s) with non-finite loss skipped" in out
    weights = torch.load(tmp_path / "out/model.002.pt", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())
    from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

    errors = read_learning_rate_file(str(tmp_path / "out/learning_rates"))[2].error
    assert all(v == v for v in errors.values())  # no NaN in the epoch's score


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPU")
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_cuda_requested_without_gpu(tmp_path, run_cli, device):
    config = write_config(tmp_path, f'device = "{device}"\n')
    _fails(run_cli, tmp_path, config, expect=["no CUDA GPU is available", f"'{device}'"])


def test_load_missing_checkpoint(tmp_path, run_cli):
    config = write_config(tmp_path, "forward = dev\ndef forward_step(**kwargs):\n    pass\n")
    _fails(
        run_cli,
        tmp_path,
        config,
        "++task",
        "forward",
        "++load",
        "nowhere/model.007.pt",
        expect=["not found", "nowhere/model.007"],
    )


def test_load_truncated_checkpoint(tmp_path, run_cli):
    config = write_config(tmp_path, "forward = dev\ndef forward_step(**kwargs):\n    pass\n")
    assert run_cli(config, "++num_epochs", "1")[0] == 0
    data = (tmp_path / "out/model.001.pt").read_bytes()
    (tmp_path / "broken.pt").write_bytes(data[: len(data) // 2])
    _fails(run_cli, tmp_path, config, "++task", "forward", "++load", "broken.pt", expect=["broken.pt", "truncated"])


def test_resume_skips_truncated_newest_checkpoint(tmp_path, run_cli):
    config = write_config(tmp_path, "num_epochs = 3\n")
    assert run_cli(config, "++num_epochs", "2")[0] == 0
    path = tmp_path / "out/model.002.pt"
    path.write_bytes(path.read_bytes()[:100])
    code, out, err = run_cli(config)
    assert code == 0, err
    assert "skipping unreadable checkpoint of epoch 2" in out
    assert "Resuming training after stored epoch 1" in out
    assert torch.load(tmp_path / "out/model.003.pt", weights_only=False)["step"] == 6


def test_command_line_exit_code_and_stderr(tmp_path):
    """The real process: exit status 1 and the message on stderr."""
    config = write_config(tmp_path, 'optimizer = {"class": "nope"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", str(config)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Unknown optimizer class 'nope'" in proc.stderr
