"""Configs checked before the queue: a serializer alone in python_epilog brings its import path (hashes unchanged), and
a config the runtime would refuse fails the job's ``create_files`` mini task naming file, line and key, so that no run
is submitted; also through the real ``sis manager``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from i6_core.returnn.config import ReturnnConfig
from sisyphus.hash import short_hash

from i6_minireturnn import compat
from i6_minireturnn.errors import ConfigError
from jobs import MiniReturnnForwardJob, MiniReturnnTrainingJob
from jobs import serialization as s
from jobs.config_check import check_runtime_config
from jobs.launch import PACKAGE_ROOT, runtime_env

from .sis_setup import failed_jobs, job_folders, sis_manager, user_setup

MODEL = "tests.runtime.user_setup.epoch_aware_model"
DUMMY = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 4, "seq_len": 5}
MY_MODEL = """
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, dim, **kwargs):
        super().__init__()
        self.linear = nn.Linear(dim, 3)

    def forward(self, features):
        return self.linear(features.float()).permute(0, 2, 1)


def train_step(*, model, data, run_ctx, **kwargs):
    loss = nn.functional.cross_entropy(model(data["data"]), data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="ce", loss=loss, inv_norm_factor=data["classes:size1"].sum())
"""


def network() -> s.Network:
    return s.Network(f"{MODEL}.Model", {"augment_from_epoch": 5}, train_step=f"{MODEL}.train_step")


def test_hashes_did_not_move():
    # literal values of the serializers before they brought their import path (and as in i6_experiments)
    assert short_hash(network()) == "7conuvHxw0Iv"
    assert short_hash(s.Import(f"{MODEL}.train_step", import_as="train_step")) == "oDEztG9xducD"
    assert short_hash(ReturnnConfig(config={"batch_size": 20}, python_epilog=[network()])) == "ZiYiBBqgTvlF"
    assert short_hash(ReturnnConfig(config={"batch_size": 20}, python_epilog=[s.Collection([network()])])) == (
        "wlQYsa1JpQv8"
    )


def test_a_serializer_alone_brings_its_import_path_and_a_collection_writes_it_once(monkeypatch):
    alone = network().get()
    assert alone.startswith("import sys\n") and f"if {PACKAGE_ROOT!r} not in sys.path:\n" in alone
    assert alone.endswith(network().own_code())
    paths = s.import_paths()
    collection = s.Collection([network(), s.Import(f"{MODEL}.get_model", import_as="get_model")]).get()
    assert collection.count("import sys\n") == 1 and collection.count("sys.path.insert(") == len(paths)
    assert " not in sys.path" not in collection  # the objects' own code only
    # several serializers alone in one python_epilog: each folder goes on sys.path once
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in paths])
    namespace: dict = {}
    compat.install()  # as the runtime runs configs: the model file imports returnn.*
    try:
        exec(alone + s.Import(f"{MODEL}.train_step", import_as="train_step").get(), namespace)
    finally:
        compat.uninstall()
    assert all(sys.path.count(p) == 1 for p in paths) and sys.path[: len(paths)] == paths
    assert callable(namespace["train_step"]) and callable(namespace["get_model"])


def _recipe_folder(tmp_path: Path, monkeypatch) -> Path:
    """A Sisyphus recipe folder with a model file, as the manager sees it (on its sys.path, gs.BASE_DIR/recipe)."""
    from sisyphus import global_settings as gs

    recipe = tmp_path / "setup" / "recipe"
    recipe.mkdir(parents=True)
    (recipe / "my_model.py").write_text(MY_MODEL)
    monkeypatch.setattr(gs, "BASE_DIR", str(tmp_path / "setup"))
    monkeypatch.setattr(gs, "RECIPE_PREFIX", "recipe")
    monkeypatch.syspath_prepend(str(recipe))
    return recipe


def test_a_bare_network_config_runs_on_the_node(tmp_path, monkeypatch):
    _recipe_folder(tmp_path, monkeypatch)
    bare = s.Network("my_model.Model", {"dim": 2}, train_step="my_model.train_step")
    config = ReturnnConfig(
        config={"train": DUMMY, "batch_size": 20, "optimizer": {"class": "adam"}, "model": str(tmp_path / "m")},
        post_config={"device": "cpu", "num_epochs": 1, "log_verbosity": 1},
        python_epilog=[bare],
    )
    config.write(str(tmp_path / "returnn.config"))
    node = tmp_path / "node"  # another folder: only the config's own sys.path setup finds my_model
    node.mkdir()
    command = [sys.executable, "-m", "i6_minireturnn", str(tmp_path / "returnn.config")]
    done = subprocess.run(command, cwd=node, env=runtime_env(1), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "m.001.pt").exists()
    check_runtime_config(
        str(tmp_path / "returnn.config"), python=sys.executable, env=runtime_env(1), what=["--task", "train"]
    )


def _job_folders(job, monkeypatch, tmp_path: Path) -> Path:
    """Work and output folders of `job` under a work folder of this test; the working directory is its work folder."""
    base = Path(job._sis_path())
    (base / "work").mkdir(parents=True)
    (base / "output").mkdir(parents=True)
    monkeypatch.chdir(base / "work")
    return base


def test_create_files_refuses_what_the_node_would_refuse(tmp_path, monkeypatch):
    from sisyphus import global_settings

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    config = ReturnnConfig(
        config={"train": {**DUMMY, "seq_lenght": 5}, "batch_size": 20},
        python_epilog=[s.Collection([network()])],
    )
    job = MiniReturnnTrainingJob(config, num_epochs=1, device="cpu")
    base = _job_folders(job, monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as error:
        job.create_files()
    config_file = base / "output" / "returnn.config"
    line = next(i for i, text in enumerate(config_file.read_text().splitlines(), 1) if "seq_lenght" in text)
    message = str(error.value)
    assert message.startswith(f"config file {config_file}, line {line}, key 'train': Dataset 'train'"), message
    assert "'seq_lenght' (did you mean 'seq_len'?)" in message and "sis manager -co" in message
    assert not (base / "work" / "rnn.sh").exists()  # stopped right after the config was written


def test_forward_create_files_checks_task_forward(tmp_path, monkeypatch):
    from i6_core.returnn.training import PtCheckpoint
    from sisyphus import global_settings, tk

    monkeypatch.setattr(global_settings, "WORK_DIR", str(tmp_path / "work"))
    (tmp_path / "model.pt").write_bytes(b"not read by the check")
    checkpoint = PtCheckpoint(tk.Path(str(tmp_path / "model.pt")))

    def create_files(epilog: str) -> None:
        config = ReturnnConfig(config={"forward": DUMMY}, python_epilog=[s.Collection([network()]), epilog])
        job = MiniReturnnForwardJob(checkpoint, config, output_files=["out.txt"], device="cpu")
        _job_folders(job, monkeypatch, tmp_path)
        job.create_files()

    with pytest.raises(ConfigError, match="key 'forward_step': Config key 'forward_step' .* is missing"):
        create_files("")
    create_files(f"from {MODEL} import train_step as forward_step\n")  # a forward_step: fine


def test_a_check_that_cannot_run_here_leaves_it_to_the_node(tmp_path, capsys):
    config = tmp_path / "returnn.config"
    config.write_text("x = (\n")
    check_runtime_config(str(config), python=str(tmp_path / "no_python"), env=runtime_env(1), what=["--task", "train"])
    assert "Config check skipped" in capsys.readouterr().out
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'ImportError: torch' >&2\n"
                        "exit 1\n")  # fmt: skip
    crashing.chmod(0o755)
    check_runtime_config(str(config), python=str(crashing), env=runtime_env(1), what=["--task", "train"])
    out = capsys.readouterr().out
    assert "Config check could not run (exit status 1)" in out and "ImportError: torch" in out


# ---- through the real `sis manager` (a bare Network training and forwarding there: tests/jobs/test_job_lifecycle.py)

CORPUS = "{'class': 'SyntheticSpeechDataset', 'num_seqs': 12, 'num_classes': 4, 'feature_dim': 4}"
BAD_RECIPE = f'''
"""Three trainings whose configs build and hash, but which the runtime would refuse on the node."""

from i6_core.returnn.config import ReturnnConfig
from sisyphus import tk

from jobs import MiniReturnnTrainingJob
from jobs.serialization import Collection, Network


def py():
    def network(train_step):
        model = {{"feature_dim": 4, "num_labels": 4, "hidden": 4}}
        return Network("demo_model.CtcModel", model, train_step=train_step)

    config = {{"train": {CORPUS}, "batch_size": 2000, "optimizer": {{"class": "adam"}}}}
    bad = {{
        # a path that exists, to a function the runtime cannot call as train_step
        "wrong_step": ReturnnConfig(config, python_epilog=[network("demo_model.export")]),
        # a dataset option typo
        "dataset_typo": ReturnnConfig(
            {{**config, "train": {{**config["train"], "seq_orderng": "sorted"}}}},
            python_epilog=[Collection([network("demo_model.train_step")])],
        ),
        # epilog code that raises
        "epilog_raises": ReturnnConfig(
            config, python_epilog=[network("demo_model.train_step"), "vocab = open('/nowhere/vocab.txt').read()\\n"]
        ),
    }}
    for name, returnn_config in bad.items():
        job = MiniReturnnTrainingJob(returnn_config, num_epochs=1, device="cpu", cpu_rqmt=1, mem_rqmt=2, time_rqmt=1)
        tk.register_output(f"bad/{{name}}/learning_rates", job.out_learning_rates)
'''


def test_a_config_the_node_would_refuse_fails_in_create_files_before_any_run(tmp_path):
    folder = user_setup(tmp_path)
    (folder / "recipe" / "bad_configs.py").write_text(textwrap.dedent(BAD_RECIPE))
    output = sis_manager(folder, "recipe/bad_configs.py", timeout=300)
    jobs = job_folders(folder, "MiniReturnnTrainingJob")
    assert len(jobs) == 3 and len(failed_jobs(folder)) == 3, output[-3000:]
    expected = {  # the key each config is refused for, and the text on the line named
        "wrong_step": ("train_step", "import export as train_step", "requires f, which the runtime does not pass"),
        "dataset_typo": ("train", "seq_orderng", "'seq_orderng' (did you mean 'seq_ordering'?)"),
        "epilog_raises": ("vocab", "/nowhere/vocab.txt", "FileNotFoundError"),
    }
    seen = set()
    for job in jobs:
        assert (job / "error.create_files.1").exists(), sorted(p.name for p in job.iterdir())
        assert not list(job.glob("*.run*")), sorted(p.name for p in job.iterdir())  # no submit_log.run, log.run.1
        config_file = job / "output" / "returnn.config"
        lines = config_file.read_text().splitlines()
        log = (job / "log.create_files.1").read_text()
        for name, (key, line_text, fragment) in expected.items():
            if fragment in log:
                line = next(i for i, text in enumerate(lines, 1) if line_text in text)
                assert f"config file {config_file}, line {line}, key {key!r}: " in log, log[-2000:]
                seen.add(name)
    assert seen == set(expected)
