"""Every typed config key is checked before the run starts: a bad value exits with status 1 and a message naming
the key, the value and where it came from; valid values (all forms the readers accept) still run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.config_validation import validate_config
from i6_minireturnn.engine.updater import Updater, create_optimizer
from i6_minireturnn.errors import ConfigError

from .conftest import write_config

REPO = Path(__file__).resolve().parents[2]

# (config line, key the message must name): the values the brief lists first, then one per validated key.
BAD_VALUES = [
    ("learning_rates = []", "learning_rates"),
    ("batch_size = -5", "batch_size"),
    ("max_seqs = 0", "max_seqs"),
    ("gradient_clip = -1.0", "gradient_clip"),
    ('optimizer = {"class": "adam", "betas": "x"}', "optimizer"),
    ('optimizer = {"class": "adam", "lr": "fast"}', "optimizer"),
    ('optimizer = {"class": "sgd", "momentum": "high"}', "optimizer"),
    ('optimizer = {"class": "adam", "amsgrad": "false"}', "optimizer"),
    ('optimizer = {"class": "adam", "eps": -1e-8}', "optimizer"),
    ('optimizer = {"class": "adam", "learning_rate_multiplier": "x"}', "optimizer"),
    ("batch_size = True", "batch_size"),
    ("batch_size = 20.5", "batch_size"),
    ('batch_size = {"data": 0}', "batch_size"),
    ("batch_size = {}", "batch_size"),
    ("max_seqs = -2", "max_seqs"),
    ("max_seqs = True", "max_seqs"),
    ("num_epochs = 0", "num_epochs"),
    ("num_epochs = True", "num_epochs"),
    ("save_interval = 0", "save_interval"),
    ("start_epoch = 0", "start_epoch"),
    ("load_epoch = -1", "load_epoch"),
    ("learning_rate = -0.1", "learning_rate"),
    ("learning_rates = [0.1, -0.1]", "learning_rates"),
    ("learning_rates = {0: 0.1}", "learning_rates"),
    ('learning_rates = "fast"', "learning_rates"),
    ("learning_rates = {}", "learning_rates"),
    ("min_learning_rate = -1e-5", "min_learning_rate"),
    ('learning_rate_control = "cosine"', "learning_rate_control"),
    ("learning_rate_control_min_num_epochs_per_new_lr = -1", "learning_rate_control_min_num_epochs_per_new_lr"),
    ("learning_rate_control_error_measure = 3", "learning_rate_control_error_measure"),
    ("newbob_learning_rate_decay = 0", "newbob_learning_rate_decay"),
    ('newbob_learning_rate_growth = "x"', "newbob_learning_rate_growth"),
    ('newbob_relative_error_threshold = "small"', "newbob_relative_error_threshold"),
    ("newbob_multi_num_epochs = 0", "newbob_multi_num_epochs"),
    ("newbob_multi_update_interval = -3", "newbob_multi_update_interval"),
    ('relative_error_div_by_old = "perhaps"', "relative_error_div_by_old"),
    ("gradient_clip_norm = 0", "gradient_clip_norm"),
    ("gradient_clip_norm_invalid_gradient_threshold = 0", "gradient_clip_norm_invalid_gradient_threshold"),
    ("gradient_noise = -0.1", "gradient_noise"),
    ("weight_decay = -0.01", "weight_decay"),
    ("accum_grad_multiple_step = 0", "accum_grad_multiple_step"),
    ("accum_grad_multiple_step = True", "accum_grad_multiple_step"),
    ('torch_amp_options = {"dtype": "float8"}', "torch_amp_options"),
    ("torch_amp_options = {}", "torch_amp_options"),
    ('stop_on_nonfinite_train_score = "maybe"', "stop_on_nonfinite_train_score"),
    ("num_workers_per_gpu = -1", "num_workers_per_gpu"),
    ('data_worker_type = "fiber"', "data_worker_type"),
    ("batch_drop_last = 2", "batch_drop_last"),
    ("min_seq_length = -1", "min_seq_length"),
    ("max_seq_length = 0", "max_seq_length"),
    ('max_seq_length = {"data": "long"}', "max_seq_length"),
    ('chunking_options = {"chunk_streams": {"data": {"size": 0, "step": 5}}}', "chunking_options"),
    ('chunking_options = {"chunk_streams": {"data": {"size": 10}}}', "chunking_options"),
    ('chunking_options = {"chunk_streams": {"data": {"size": 10, "step": 5}}, "random": 1}', "chunking_options"),
    ('cleanup_old_models = {"keep_last_n": -1}', "cleanup_old_models"),
    ('cleanup_old_models = {"keep": [0]}', "cleanup_old_models"),
    ('cleanup_old_models = "sometimes"', "cleanup_old_models"),
    ('preload_from_files = {"base": {"prefix": "enc."}}', "preload_from_files"),
    ('eval_datasets = {"devtrain": {"num_seqs": 2}}', "eval_datasets"),
    ("log_verbosity = 7", "log_verbosity"),
    ("log_step_interval = 0", "log_step_interval"),
    ("log_progress_interval = -1", "log_progress_interval"),
    ('random_seed = "abc"', "random_seed"),
    ("random_seed = True", "random_seed"),
    ("load_ignore_missing_vars = 5", "load_ignore_missing_vars"),
    ("model = 5", "model"),
    ("get_model = 5", "get_model"),
]


def _fails(run_cli, *args: object) -> str:
    code, out, err = run_cli(*args)
    assert code == 1, out + err
    assert "Traceback" not in err  # a user error, not a crash
    return err


@pytest.mark.parametrize("line, key", BAD_VALUES, ids=[line for line, _ in BAD_VALUES])
def test_bad_value_exits_naming_the_key(tmp_path, run_cli, line, key):
    config = write_config(tmp_path, line + "\n")
    err = _fails(run_cli, config)
    assert f"Config key '{key}'" in err and str(config) in err, err
    assert not (tmp_path / "out").exists()  # stopped before anything was built


def test_message_names_value_and_expectation(tmp_path, run_cli):
    err = _fails(run_cli, write_config(tmp_path, "max_seqs = 0\n"))
    assert "must be an integer >= 1" in err and "got 0 (int)" in err
    err = _fails(run_cli, write_config(tmp_path, 'optimizer = {"class": "adam", "betas": "x"}\n'))
    assert "['betas']" in err and "'x'" in err and "pair of numbers" in err
    err = _fails(run_cli, write_config(tmp_path, 'optimizer = {"class": "adam", "lr": "fast"}\n'))
    assert "['lr']" in err and "'fast'" in err and "learning_rates" in err


@pytest.mark.parametrize(
    "key, value", [("max_seqs", "0"), ("batch_size", "+-5"), ("learning_rates", "[]"), ("log_verbosity", "True")]
)
def test_command_line_value_names_the_command_line(tmp_path, run_cli, key, value):
    err = _fails(run_cli, write_config(tmp_path), f"++{key}", value)
    assert f"Config key '{key}'" in err and f"given on the command line (++{key} " in err, err


def test_unknown_optimizer_class_is_reported_up_front(tmp_path, run_cli):
    err = _fails(run_cli, write_config(tmp_path, 'optimizer = {"class": "adamm"}\n'))
    assert "Unknown optimizer class 'adamm'" in err and "sgd" in err


@pytest.mark.parametrize(
    "lines",
    [
        "max_seqs = -1\nbatch_size = {'data': 20, 'classes': 20}\n",
        "learning_rates = [0.01, 0.005]\n",
        "learning_rates = {1: 0.01, 2: 0.005}\n",
        "gradient_clip = 1.0\ngradient_clip_norm = 5\ngradient_noise = 0.0\naccum_grad_multiple_step = 2\n",
        "optimizer = {'class': 'AdamW', 'epsilon': 1e-8, 'betas': (0.9, 0.98), 'weight_decay': 0.01, "
        "'learning_rate_multiplier': 0.5, 'amsgrad': True}\n",
        "cleanup_old_models = {'keep': {1}, 'keep_last_n': 1, 'keep_best_n': 0}\n",
        "chunking_options = {'chunk_streams': {'data': {'size': 3, 'step': 2}, 'classes': {'size': 3, 'step': 2}}}\n",
        "learning_rate_control = 'newbob_multi_epoch'\nnewbob_multi_num_epochs = 2\nnewbob_learning_rate_decay = 0.7\n"
        "newbob_relative_error_threshold = -0.02\nmin_learning_rate = 1e-5\nlearning_rate_control_error_measure = "
        "'dev_loss_CE'\n",
        "num_epochs = 2.0\nrandom_seed = -3\nlog_verbosity = 0\nmin_seq_length = 1\nmax_seq_length = {'data': 9}\n",
        "stop_on_nonfinite_train_score = 0\nbatch_drop_last = 'false'\nnum_workers_per_gpu = 2\n",
        "torch_amp_options = None\ndata_worker_type = 'thread'\nlog_progress_interval = 0\nsave_interval = 1\n",
    ],
)
def test_valid_values_still_run(tmp_path, run_cli, lines):
    code, out, err = run_cli(write_config(tmp_path, lines))
    assert code == 0, err
    assert (tmp_path / "out/model.002.pt").exists()


def test_valid_command_line_values_still_run(tmp_path, run_cli):
    code, _, err = run_cli(
        write_config(tmp_path), "++max_seqs", "2", "++learning_rates", "[0.01, 0.005]", "++gradient_clip", "1"
    )
    assert code == 0, err


def test_line_based_config_values_are_read_as_the_getters_read_them(tmp_path):
    path = tmp_path / "line.config"
    path.write_text(
        "batch_size 5000\nmax_seqs 40\nlearning_rates 0.1,0.05\nlog_verbosity 5\nstop_on_nonfinite_train_score false\n"
        "gradient_clip_norm 2.5\ncleanup_old_models True\nlearning_rate_control newbob_rel\n"
    )
    config = Config()
    config.load_file(str(path))
    validate_config(config)
    path.write_text("batch_size 5000\nmax_seqs 0\n")
    config = Config()
    config.load_file(str(path))
    with pytest.raises(ConfigError, match=f"'max_seqs'.*{path}"):
        validate_config(config)


@pytest.mark.parametrize("template", sorted((REPO / "config_templates").glob("*.config")), ids=lambda p: p.name)
def test_config_templates_pass(template, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a template may write its generated corpus when it loads
    config = Config()
    config.load_file(str(template))
    validate_config(config)


def test_optimizer_constructor_error_names_class_and_argument():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ConfigError, match=r"Optimizer Rprop refuses its argument etas = 'x' .*returnn\.config"):
        create_optimizer({"class": "rprop", "etas": "x"}, model, learning_rate=0.1, where="returnn.config")
    with pytest.raises(ConfigError, match="Optimizer SGD refuses its argument nesterov = True"):
        create_optimizer({"class": "sgd", "nesterov": True}, model, learning_rate=0.1)
    updater = Updater(config=Config({"optimizer": {"class": "adam", "lr": 0.1}}), network=model, device="cpu")
    with pytest.raises(ConfigError, match="outside of the 'optimizer' dict"):
        updater.create_optimizer()


def test_optimizer_constructor_error_through_the_command_line(tmp_path, run_cli):
    err = _fails(run_cli, write_config(tmp_path, 'optimizer = {"class": "rprop", "etas": "tiny"}\n'))
    assert "Optimizer Rprop" in err and "etas" in err and "'tiny'" in err


def test_real_process_exit_status(tmp_path):
    """``python -m i6_minireturnn CONFIG`` as a process: status 1, the key on stderr."""
    config = write_config(tmp_path, "learning_rates = []\n")
    proc = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", str(config)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Config key 'learning_rates'" in proc.stderr and "non-empty" in proc.stderr
