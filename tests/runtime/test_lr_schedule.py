"""Learning rate of each step: ``dynamic_learning_rate`` as PyTorch RETURNN calls it, the declarative step schedules
of i6 setups (piecewise linear, warm-up with inverse square-root or cosine decay), combined with the epoch's rate
from learning-rate control; exact values, resume, errors naming the key, the config file, the function and the step.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.engine.lr_schedule import (
    DynamicLearningRate,
    PiecewiseLinear,
    WarmupDecay,
    epoch_continuous,
    step_schedule_from_config,
)
from i6_minireturnn.engine.updater import Updater
from i6_minireturnn.errors import ConfigError

from .conftest import write_config

# train_step of the end-to-end configs: one line per training step with what the step saw, read back by _steps().
LOGGING_TRAIN_STEP = """
def train_step(*, model, data, run_ctx, **kwargs):
    updater = run_ctx.engine._updater
    if model.training:  # not in evaluation, which runs train_step too
        with open("steps.log", "a") as f:
            f.write(repr((run_ctx.global_step, run_ctx.epoch, updater.get_effective_learning_rate(),
                          updater.get_optimizer().param_groups[0]["lr"])) + "\\n")
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
"""


def _steps(folder: Path) -> List[Tuple[int, int, float, float]]:
    """(global step, epoch, effective rate, optimizer rate) of each training step, in order."""
    return [ast.literal_eval(line) for line in (folder / "steps.log").read_text().splitlines()]


def _config(**items) -> Config:
    config = Config(items)
    config.files = ["lr.config"]
    return config


def _rates(schedule, steps, learning_rate=1.0, epoch=1):
    return [
        schedule.rate(global_train_step=s, epoch=epoch, epoch_continuous=None, learning_rate=learning_rate)
        for s in steps
    ]


# ---- values of each schedule -------------------------------------------------------------------------------------


def test_piecewise_linear_as_i6_dyn_lr_piecewise_linear():
    # i6's own test values: points at steps 0, 10, 20, evaluated at global_train_step + 1; constant after the last
    schedule = step_schedule_from_config(
        _config(learning_rate_piecewise_steps=[10, 20], learning_rate_piecewise_values=[0, 1, 0.5])
    )
    assert isinstance(schedule, PiecewiseLinear)
    expected = [0.1, 0.6, 1.0, 0.95, 0.9, 0.7, 0.5, 0.5, 0.5]
    assert _rates(schedule, [0, 5, 9, 10, 11, 15, 19, 20, 10_000]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # the factor multiplies the epoch's rate (learning_rates / newbob)
    assert _rates(schedule, [5], learning_rate=0.25) == [pytest.approx(0.15, rel=1e-12)]


def test_piecewise_one_cycle_as_i6_lrlin_oclr():
    # _get_cfg_lrlin_oclr_by_bs_nep: learning_rate = 1.0, values peak * [1e-2, 1, 1e-2, 1e-3]
    peak = 1e-3
    schedule = step_schedule_from_config(
        _config(
            learning_rate_piecewise_steps=[100, 200, 220],
            learning_rate_piecewise_values=[peak * 1e-2, peak, peak * 1e-2, peak * 1e-3],
        )
    )
    rates = _rates(schedule, [49, 99, 149, 199, 209, 219, 500])
    expected = [peak * (0.01 + 0.99 * 0.5), peak, peak * (1 - 0.99 * 0.5), peak * 1e-2, peak * 5.5e-3, 1e-6, 1e-6]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_piecewise_by_epoch_continuous():
    schedule = step_schedule_from_config(
        _config(
            learning_rate_piecewise_steps=[1, 3],
            learning_rate_piecewise_values=[0.0, 1.0, 0.0],
            learning_rate_piecewise_by_epoch_continuous=True,
        )
    )
    rate = [
        schedule.rate(global_train_step=0, epoch=e, epoch_continuous=c, learning_rate=2.0)
        for e, c in [(1, 0.0), (1, 0.5), (2, 1.0), (2, 1.5), (3, 2.5), (4, 3.0), (9, 8.5)]
    ]
    assert rate == [0.0, 1.0, 2.0, 1.5, 0.5, 0.0, 0.0]
    with pytest.raises(ConfigError, match="learning_rate_piecewise_by_epoch_continuous.*epoch 2"):
        schedule.rate(global_train_step=7, epoch=2, epoch_continuous=None, learning_rate=1.0)


def test_epoch_continuous_counts_steps_of_the_epoch():
    assert [epoch_continuous(3, i, 4) for i in range(4)] == [2.0, 2.25, 2.5, 2.75]
    assert epoch_continuous(3, 2, None) is None  # a streamed epoch: its number of steps is unknown


def test_linear_warmup_then_invsqrt_decay_as_i6():
    schedule = step_schedule_from_config(_config(learning_rate_warmup_steps=4, learning_rate_invsqrt_norm=4))
    assert isinstance(schedule, WarmupDecay)
    rates = _rates(schedule, [0, 1, 3, 4, 11], learning_rate=2.0)
    assert rates == pytest.approx([0.5, 1.0, 2.0, 2.0 * 1.25**-0.5, 2.0 * 3**-0.5], rel=1e-12)


def test_linear_warmup_alone_then_epoch_rate():
    schedule = step_schedule_from_config(_config(learning_rate_warmup_steps=4))
    assert _rates(schedule, [0, 1, 2, 3, 4, 1000], learning_rate=0.5) == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]


def test_linear_warmup_then_cosine_decay():
    schedule = step_schedule_from_config(
        _config(
            learning_rate_warmup_steps=2,
            learning_rate_cosine_decay_steps=4,
            learning_rate_cosine_decay_min_factor=0.1,
        )
    )
    rates = _rates(schedule, [0, 1, 2, 3, 4, 5, 50])
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    assert rates == pytest.approx([0.5, 1.0, *cosine, 0.1], rel=1e-12)
    assert rates[3] == pytest.approx(0.55, rel=1e-12)
    no_warmup = step_schedule_from_config(_config(learning_rate_cosine_decay_steps=2))
    assert _rates(no_warmup, [0, 1, 9]) == pytest.approx([0.5, 0.0, 0.0], abs=1e-15)


def test_no_schedule_keys_no_schedule():
    assert step_schedule_from_config(_config(learning_rate=0.1, learning_rates=[0.1, 0.2])) is None


def test_dynamic_learning_rate_gets_returnn_arguments_and_replaces_the_epoch_rate():
    calls = []

    def dynamic_learning_rate(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs):
        calls.append((global_train_step, epoch, epoch_continuous, learning_rate, kwargs))
        return learning_rate * 0.5 + global_train_step

    # the declarative keys are then left to the function (i6's functions read them themselves)
    config = _config(
        dynamic_learning_rate=dynamic_learning_rate,
        learning_rate_piecewise_steps=[10],
        learning_rate_piecewise_values=[1.0, 2.0],
    )
    schedule = step_schedule_from_config(config)
    assert isinstance(schedule, DynamicLearningRate)
    assert schedule.rate(global_train_step=3, epoch=2, epoch_continuous=1.5, learning_rate=0.25) == 3.125
    assert calls == [(3, 2, 1.5, 0.25, {})]


def test_updater_sets_the_step_rate_on_every_parameter_group():
    def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs):
        return learning_rate * (global_train_step + 1)

    config = _config(dynamic_learning_rate=dynamic_learning_rate, optimizer={"class": "sgd"})
    net = torch.nn.Linear(2, 2)
    updater = Updater(config=config, network=net, device="cpu", initial_learning_rate=0.1)
    updater.create_optimizer()
    updater.set_learning_rate(0.1)  # before any step: the epoch's rate
    assert updater.get_optimizer().param_groups[0]["lr"] == 0.1 and updater.get_effective_learning_rate() == 0.1
    updater.set_current_train_step(global_train_step=4, epoch=1, epoch_continuous=0.5)
    assert updater.get_effective_learning_rate() == pytest.approx(0.5)
    assert updater.get_optimizer().param_groups[0]["lr"] == pytest.approx(0.5)
    assert updater.learning_rate == 0.1  # the epoch's rate, as in RETURNN
    updater.set_learning_rate(0.2)  # a new epoch's rate: the schedule applies it from the next step on
    assert updater.get_optimizer().param_groups[0]["lr"] == pytest.approx(0.5) and updater.learning_rate == 0.2
    updater.set_current_train_step(global_train_step=5, epoch=2, epoch_continuous=1.0)
    assert updater.get_optimizer().param_groups[0]["lr"] == pytest.approx(1.2)


def test_updater_step_rate_includes_learning_rate_multiplier():
    config = _config(learning_rate_warmup_steps=2, optimizer={"class": "sgd", "learning_rate_multiplier": 3.0})
    updater = Updater(config=config, network=torch.nn.Linear(2, 2), device="cpu", initial_learning_rate=0.1)
    updater.create_optimizer()
    updater.set_current_train_step(global_train_step=0, epoch=1)
    assert updater.get_effective_learning_rate() == pytest.approx(0.05)
    assert updater.get_optimizer().param_groups[0]["lr"] == pytest.approx(0.15)


def test_updater_without_schedule_keeps_the_epoch_rate():
    updater = Updater(
        config=_config(optimizer={"class": "sgd"}), network=torch.nn.Linear(2, 2), device="cpu", initial_learning_rate=1
    )
    updater.create_optimizer()
    updater.set_learning_rate(0.3)
    updater.set_current_train_step(global_train_step=99, epoch=3)
    assert updater.get_optimizer().param_groups[0]["lr"] == 0.3 and updater.get_effective_learning_rate() == 0.3


# ---- errors ------------------------------------------------------------------------------------------------------


def _returns(value):
    def dynamic_learning_rate(*, global_train_step, learning_rate, **kwargs):
        return value

    return dynamic_learning_rate


@pytest.mark.parametrize("value", ["0.1", None, [0.1], float("nan"), -1.0, True])
def test_dynamic_learning_rate_returning_a_non_rate_names_function_and_step(value):
    schedule = step_schedule_from_config(_config(dynamic_learning_rate=_returns(value)))
    with pytest.raises(ConfigError) as info:
        schedule.rate(global_train_step=17, epoch=3, epoch_continuous=None, learning_rate=1.0)
    message = str(info.value)
    assert "dynamic_learning_rate" in message and "_returns.<locals>.dynamic_learning_rate" in message
    assert "global train step 17, epoch 3" in message and "lr.config" in message and repr(value) in message


def test_dynamic_learning_rate_may_return_numpy_and_tensor_scalars():
    import numpy

    for value in (numpy.float32(0.5), torch.tensor(0.5), 1):
        schedule = step_schedule_from_config(_config(dynamic_learning_rate=_returns(value)))
        assert schedule.rate(global_train_step=0, epoch=1, epoch_continuous=None, learning_rate=1.0) == float(value)


def test_dynamic_learning_rate_signature_errors():
    def no_kwargs(*, global_train_step, learning_rate):
        return learning_rate

    def tf_style(*, network, global_train_step, learning_rate, **kwargs):
        return learning_rate

    with pytest.raises(ConfigError, match=r"no_kwargs in config file lr.config must take \*\*kwargs"):
        step_schedule_from_config(_config(dynamic_learning_rate=no_kwargs))
    with pytest.raises(ConfigError, match="tf_style in config file lr.config takes 'network'"):
        step_schedule_from_config(_config(dynamic_learning_rate=tf_style))
    with pytest.raises(ConfigError, match="dict form"):
        step_schedule_from_config(_config(dynamic_learning_rate={"interval": 10, "decay": 0.9}))
    with pytest.raises(ConfigError, match="must be a function"):
        step_schedule_from_config(_config(dynamic_learning_rate=0.1))


@pytest.mark.parametrize(
    "items, words",
    [
        (
            dict(learning_rate_piecewise_steps=[0, 10, 90, 100], learning_rate_piecewise_values=[0, 1, 0.1, 0.01]),
            ["one entry more than learning_rate_piecewise_steps", "4 values for 4 steps"],
        ),
        (dict(learning_rate_piecewise_steps=[10, 5], learning_rate_piecewise_values=[0, 1, 0]), ["increase strictly"]),
        (dict(learning_rate_piecewise_steps=[10]), ["learning_rate_piecewise_values is missing"]),
        (dict(learning_rate_piecewise_values=[0, 1]), ["learning_rate_piecewise_steps is missing"]),
        (
            dict(
                learning_rate_piecewise_steps=[10], learning_rate_piecewise_values=[0, 1], learning_rate_warmup_steps=5
            ),
            ["learning_rate_piecewise_steps", "learning_rate_warmup_steps", "two schedules"],
        ),
        (
            dict(learning_rate_warmup_steps=5, learning_rate_invsqrt_norm=5, learning_rate_cosine_decay_steps=5),
            ["learning_rate_invsqrt_norm and learning_rate_cosine_decay_steps"],
        ),
        (dict(learning_rate_cosine_decay_min_factor=0.1), ["without learning_rate_cosine_decay_steps"]),
        (dict(learning_rate_warmup_steps=0), ["learning_rate_warmup_steps = 0"]),
        (dict(learning_rate_piecewise_by_epoch_continuous=True), ["without learning_rate_piecewise_steps"]),
        (dict(learning_rate_warmup_steps="many"), ["'learning_rate_warmup_steps'", "'many'"]),
    ],
)
def test_bad_schedule_keys_name_keys_and_config_file(items, words):
    with pytest.raises(ConfigError) as info:
        step_schedule_from_config(_config(**items))
    for word in [*words, "lr.config"]:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "line, key",
    [
        ("learning_rate_piecewise_steps = [10, -5]", "learning_rate_piecewise_steps"),
        ('learning_rate_piecewise_values = ["x"]', "learning_rate_piecewise_values"),
        ("learning_rate_warmup_steps = 2.5", "learning_rate_warmup_steps"),
        ("learning_rate_invsqrt_norm = 0", "learning_rate_invsqrt_norm"),
        ("learning_rate_cosine_decay_steps = 0", "learning_rate_cosine_decay_steps"),
        ("learning_rate_cosine_decay_min_factor = 2", "learning_rate_cosine_decay_min_factor"),
        ('learning_rate_piecewise_by_epoch_continuous = "perhaps"', "learning_rate_piecewise_by_epoch_continuous"),
        ("dynamic_learning_rate = {'interval': 10, 'decay': 0.9}", "dynamic_learning_rate"),
    ],
)
def test_bad_schedule_values_stop_before_training(tmp_path, run_cli, line, key):
    config = write_config(tmp_path, line + "\n")
    code, out, err = run_cli(config)
    assert code == 1 and "Traceback" not in err, out + err
    assert f"Config key '{key}'" in err and str(config) in err, err
    assert not (tmp_path / "out").exists()


def test_schedule_key_combinations_stop_before_training(tmp_path, run_cli):
    config = write_config(tmp_path, "learning_rate_piecewise_steps = [10, 20]\nlearning_rate_piecewise_values = [1]\n")
    code, out, err = run_cli(config)
    assert code == 1 and "Traceback" not in err, out + err
    assert "learning_rate_piecewise_values must have one entry more" in err and str(config) in err, err
    assert not (tmp_path / "out").exists()


# ---- end to end (the engine sets each step's rate) ----------------------------------------------------------------
# DummyDataset with 8 sequences and 4 per batch: 2 steps per epoch.


def test_dynamic_learning_rate_end_to_end(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        LOGGING_TRAIN_STEP + """
num_epochs = 3
learning_rates = [0.1, 0.05, 0.025]

def dynamic_learning_rate(*, global_train_step, epoch, epoch_continuous, learning_rate, **kwargs):
    with open("calls.log", "a") as f:
        f.write(repr((global_train_step, epoch, epoch_continuous, learning_rate)) + "\\n")
    return learning_rate * (global_train_step + 1)
""",
    )
    code, out, err = run_cli(config)
    assert code == 0, out + err
    epoch_rates = {1: 0.1, 2: 0.05, 3: 0.025}
    steps = _steps(tmp_path)
    assert [(s, e) for s, e, _, _ in steps] == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3)]
    for step, epoch, effective, optimizer_rate in steps:
        assert effective == optimizer_rate == pytest.approx(epoch_rates[epoch] * (step + 1), rel=1e-12)
    calls = [ast.literal_eval(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    assert calls == [
        (0, 1, 0.0, 0.1),
        (1, 1, 0.5, 0.1),
        (2, 2, 1.0, 0.05),
        (3, 2, 1.5, 0.05),
        (4, 3, 2.0, 0.025),
        (5, 3, 2.5, 0.025),
    ]
    # the learning_rates file keeps the epochs' rates (RETURNN's format), not the steps'
    assert "learningRate=0.05" in (tmp_path / "out/learning_rates").read_text()


def test_declarative_schedule_end_to_end_with_newbob(tmp_path, run_cli):
    # newbob_abs with a threshold every change exceeds: epoch rates 0.01, 0.01, 0.005 whatever the scores
    config = write_config(
        tmp_path,
        LOGGING_TRAIN_STEP + """
num_epochs = 3
learning_rate = 0.01
learning_rate_control = "newbob_abs"
newbob_error_threshold = -1e9
learning_rate_warmup_steps = 4
""",
    )
    code, out, err = run_cli(config)
    assert code == 0, out + err
    rates = [rate for _, _, rate, _ in _steps(tmp_path)]
    assert rates == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.005, 0.005], rel=1e-12)


def test_resumed_run_uses_the_same_step_rates(tmp_path, run_cli):
    extra = LOGGING_TRAIN_STEP + """
num_epochs = 3
learning_rate = 0.01
learning_rate_control = "newbob_abs"
newbob_error_threshold = -1e9
learning_rate_piecewise_steps = [3, 5]
learning_rate_piecewise_values = [0.1, 1.0, 0.2]
"""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir()
    parts.mkdir()
    write_config(whole, extra)
    write_config(parts, extra)
    code, out, err = run_cli(whole / "returnn.config")  # run_cli works in tmp_path; the files go to the cwd
    assert code == 0, out + err
    (tmp_path / "steps.log").rename(whole / "steps.log")
    (tmp_path / "out").rename(whole / "out")
    code, out, err = run_cli(parts / "returnn.config", "++num_epochs", "1")  # stopped after epoch 1
    assert code == 0, out + err
    code, out, err = run_cli(parts / "returnn.config")  # resumed: epochs 2 and 3
    assert code == 0, out + err
    assert "Starting training at epoch 2, global step 2" in out + err
    (tmp_path / "steps.log").rename(parts / "steps.log")
    uninterrupted, resumed = _steps(whole), _steps(parts)
    assert len(uninterrupted) == 6
    assert resumed == uninterrupted  # exactly the same floats, step by step
    factors = [0.1 + 0.9 / 3, 0.1 + 1.8 / 3, 1.0, 0.6, 0.2, 0.2]
    epoch_rates = [0.01, 0.01, 0.01, 0.01, 0.005, 0.005]
    assert [r for _, _, r, _ in resumed] == pytest.approx([f * e for f, e in zip(factors, epoch_rates)], rel=1e-12)
