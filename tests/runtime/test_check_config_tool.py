"""``python -m i6_minireturnn.tools.check_config``: the config templates pass for their tasks; each kind of config the
runtime would refuse gives one line naming config file, line and key, and exit status 1; nothing is built or read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from i6_minireturnn.tools.check_config import main

from .conftest import BASE_CONFIG, write_config

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO / "config_templates").glob("*.config"))


@pytest.fixture
def check(tmp_path, monkeypatch, capsys):
    """Runs the tool in-process inside tmp_path; returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def line_of(path: Path, text: str) -> int:
    """The number of the (first) line of `path` that contains `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def assert_refused(result, path: Path, key: str, line: Optional[int], *fragments: str) -> str:
    """Exit status 1 and one line on stderr: ``ERROR: config file <path>, line <line>, key '<key>': ...``."""
    code, _, err = result
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    where = f"config file {path}" + (f", line {line}" if line else "") + f", key {key!r}: "
    assert err.startswith("ERROR: " + where), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_templates_pass_for_their_tasks(template, check):
    code, out, err = check(template)
    assert code == 0 and "is fine: task 'train'" in out, err
    # task forward: the template's forward data, or (demo_ctc) the dev set named on the command line as its header says
    forward_data = [] if "\nforward_data" in template.read_text() else ["++forward_data", "dev"]
    code, out, err = check(template, "--task", "forward", *forward_data)
    assert code == 0 and "task 'forward'; functions forward_step, get_model" in out, err


def test_good_config_for_every_task_builds_nothing(tmp_path, check):
    config = write_config(
        tmp_path, "forward_data = 'dev'\ndef forward_step(*, model, data, run_ctx, **kwargs):\n    pass\n"
    )
    for task in ("train", "eval", "forward", "compute_priors", "initialize_model", "nop"):
        code, out, err = check(config, "--task", task)
        assert code == 0 and f"task {task!r}" in out, (task, err)
    assert not (tmp_path / "out").exists()  # no model prefix, no learning_rates file: the engine never started
    assert not torch.cuda.is_initialized()


NESTED = """
dev = {
    "class": "MetaDataset",
    "data_map": {},
    "datasets": {
        "a": {"class": "DummyDataset", "input_dim": 2,
              "outptu_dim": 3},
    },
}
"""

# extra config lines, the key named, the text of the line named (None: no line), fragments of the message
BAD = [
    pytest.param("from my_model import train_step\n", "train_step", "from my_model", ["No module named 'my_model'"],
                 id="import"),
    pytest.param("NUM_LABELS = 10\nvocab = {'size': int('ten')}\n", "vocab", "int('ten')", ["ValueError: invalid"],
                 id="epilog raises"),
    pytest.param("def train_step(model, data):\n    pass\n", "train_step", "def train_step(model, data)",
                 ["has no parameter run_ctx", "**kwargs"], id="wrong signature"),
    pytest.param("del train_step\n", "train_step", None, ["'train_step' (the training step) is missing"],
                 id="missing step"),
    pytest.param("def train_step(*, model, extern_data, **kwargs):\n    pass\n", "train_step", "extern_data",
                 ["RETURNN's mainline API"], id="mainline step"),
    pytest.param("dev = {\n    'class': 'DumyDataset',\n    'num_seqs': 2,\n}\n", "dev", "DumyDataset",
                 ["Unknown dataset class 'DumyDataset'. Did you mean 'DummyDataset'?"], id="unknown dataset class"),
    pytest.param("dev = {\n    'class': 'DummyDataset',\n    'seq_lenght': 5,\n}\n", "dev", "seq_lenght",
                 ["got unknown option(s): 'seq_lenght' (did you mean 'seq_len'?)"], id="dataset option typo"),
    pytest.param(NESTED, "dev", "outptu_dim", ["Dataset 'dev/a' (DummyDataset) got unknown option(s): 'outptu_dim'"],
                 id="nested dataset option"),
    pytest.param("gradient_clip_nrom = 1.0\n", "gradient_clip_nrom", "gradient_clip_nrom",
                 ["(did you mean 'gradient_clip_norm'?)"], id="unknown key"),
    pytest.param("max_seqs = 'many'\n", "max_seqs", "max_seqs = 'many'", ["must be an integer >= 1"], id="type"),
    pytest.param("device = 'tpu'\n", "device", "device = 'tpu'", ["Unknown device 'tpu'"], id="device"),
    pytest.param("CustomEngine = dict\n", "CustomEngine", "CustomEngine", ["must be a subclass"], id="custom engine"),
]  # fmt: skip


@pytest.mark.parametrize("extra,key,line_text,fragments", BAD)
def test_config_the_runtime_refuses(extra, key, line_text, fragments, tmp_path, check):
    config = write_config(tmp_path, extra)
    line = line_of(config, line_text) if line_text else None
    assert_refused(check(config), config, key, line, *fragments)


def test_task_forward_needs_its_dataset_and_step(tmp_path, check):
    config = write_config(tmp_path)
    assert_refused(check(config, "--task", "forward"), config, "forward", None, "needs the dataset 'forward'")
    config = write_config(tmp_path, "forward_data = 'dev'\n")
    assert_refused(check(config, "--task", "forward"), config, "forward_step", None, "'forward_step'", "is missing")
    config = write_config(tmp_path, "forward_data = 'devv'\n")
    line = line_of(config, "forward_data")
    assert_refused(check(config, "--task", "forward"), config, "forward_data", line, "names no dataset")


def test_task_and_values_from_the_command_line(tmp_path, check):
    config = write_config(tmp_path)
    code, _, err = check(config, "--task", "search")
    assert code == 1 and err.startswith("ERROR: command line ++task: Task 'search' does not exist"), err
    code, _, err = check(config, "++max_seqs", "many")
    assert code == 1 and err.startswith("ERROR: command line ++max_seqs: Config key 'max_seqs'"), err


def test_syntax_error_names_its_line(tmp_path, check):
    config = write_config(tmp_path, "x = (\n")
    code, _, err = check(config)
    assert code == 1 and err.startswith(f"ERROR: config file {config}, line {line_of(config, 'x = (')}: "), err
    assert "Python syntax error" in err and len(err.strip().splitlines()) == 1


def test_custom_engine_brings_its_own_functions(tmp_path, check):
    base = BASE_CONFIG.replace("def get_model(", "def _unused_get_model(").replace("def train_step(", "def _unused(")
    extra = "from returnn.torch.engine import Engine\n\nclass CustomEngine(Engine):\n    pass\n"
    code, out, err = check(write_config(tmp_path, extra, base=base))
    assert code == 0 and "CustomEngine CustomEngine" in out, err


def test_no_data_file_is_read_and_the_cache_manager_is_not_asked(tmp_path, check, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cf = bin_dir / "cf"
    cf.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/cf_calls\necho "$1"\n')
    cf.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    extra = (
        "_cached = __import__('i6_minireturnn.cache_manager', fromlist=['cached_path']).cached_path\n"
        "dev = {'class': 'HDFDataset', 'files': [_cached('/nowhere/dev.hdf')]}\n"
    )
    code, out, err = check(write_config(tmp_path, extra))
    assert code == 0, err
    assert not (tmp_path / "cf_calls").exists()  # on the node the config asks the cache manager; the check does not


def test_command_line_exit_status_and_one_error_line(tmp_path):
    good = write_config(tmp_path, name="good.config")
    bad = write_config(tmp_path, "train = {'class': 'DummyDataset', 'input_dim': 2, 'num_seq': 4}\n", name="bad.config")
    command = [sys.executable, "-m", "i6_minireturnn.tools.check_config"]
    done = subprocess.run([*command, str(good)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith(f"Config {good} is fine"), done.stderr
    done = subprocess.run([*command, str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(rf"ERROR: config file {re.escape(str(bad))}, line \d+, key 'train': ", done.stderr)
    assert "'num_seq' (did you mean 'num_seqs'?)" in done.stderr


def test_dataset_mode_checks_that_dataset_only(tmp_path, check):
    # what hdf_dump reads: the config's code and one dataset, no model or step functions
    config = tmp_path / "dataset.config"
    config.write_text("train = {'class': 'SyntheticSpeechDataset', 'num_seqs': 3}\n")
    code, out, err = check(config, "--dataset", "train")
    assert code == 0 and "dataset train" in out, err
    config.write_text("x = 1\ntrain = {'class': 'SyntheticSpeechDataset', 'num_seqz': 3}\n")
    assert_refused(check(config, "--dataset", "train"), config, "train", 2, "num_seqz")
    config.write_text("dev = {'class': 'SyntheticSpeechDataset'}\n")
    assert_refused(
        check(config, "--dataset", "train"), config, "train", None, "'train' (the dataset to read) is missing"
    )
