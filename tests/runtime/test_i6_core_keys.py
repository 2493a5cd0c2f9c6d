"""The keys i6_core's RETURNN jobs write (training, ReturnnForwardJobV2, ReturnnComputePriorJobV2), without Sisyphus.

The jobs themselves run in tests/jobs/test_i6_core_returnn_root.py; here: task compute_priors, ``forward_data``
naming a dataset key, ``allow_random_model_init``, and the keys asking for something this runtime does not do.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import write_config

PRIOR_STEP = """
def forward_step(*, model, data, run_ctx, **kwargs):
    probs = model(data["data"]).softmax(1)  # [B, classes, T]
    mask = torch.arange(probs.shape[2])[None, :] < data["data:size1"][:, None]
    summed = (probs * mask[:, None, :]).sum(dim=(0, 2))
    run_ctx.sum_frames = run_ctx.sum_frames + data["data:size1"].sum()
    run_ctx.sum_probs = summed if run_ctx.sum_probs is None else run_ctx.sum_probs + summed
"""


@pytest.fixture
def trained(tmp_path, run_cli):
    config = write_config(tmp_path, PRIOR_STEP)
    code, _, err = run_cli(config)
    assert code == 0, err
    return config


def test_compute_priors_writes_log_prior_from_the_step_sums(tmp_path, run_cli, trained):
    code, out, err = run_cli(
        trained, "++task", "compute_priors", "++load", "out/model.002.pt", "++output_file", "p.txt"
    )
    assert code == 0, err
    log_prior = np.loadtxt(tmp_path / "p.txt", delimiter=" ")
    assert log_prior.shape == (3,) and np.exp(log_prior).sum() == pytest.approx(1.0, abs=1e-6)
    assert "Prior sum in std-space" in out
    # a rerun (a restarted job) replaces the file
    code, _, err = run_cli(trained, "++task", "compute_priors", "++load", "out/model.001.pt", "++output_file", "p.txt")
    assert code == 0, err
    assert not np.allclose(np.loadtxt(tmp_path / "p.txt"), log_prior)


def test_compute_priors_keeps_the_file_a_finish_hook_wrote(tmp_path, run_cli):
    hook = """
def forward_finish_hook(run_ctx, **kwargs):
    with open(run_ctx.engine.config.value("output_file"), "w") as f:
        f.write("-1.0\\n-2.0\\n")
"""
    config = write_config(tmp_path, PRIOR_STEP + hook)
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "compute_priors", "++output_file", "p.txt")
    assert code == 0, err
    assert (tmp_path / "p.txt").read_text() == "-1.0\n-2.0\n"


def test_compute_priors_errors_name_the_missing_piece(tmp_path, run_cli):
    plain_step = "def forward_step(*, model, data, run_ctx, **kwargs):\n    model(data['data'])\n"
    config = write_config(tmp_path, plain_step)
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "compute_priors")
    assert code == 1 and "output_file" in err
    code, _, err = run_cli(config, "++task", "compute_priors", "++output_file", "p.txt")
    assert code == 1 and "run_ctx.sum_probs" in err and not (tmp_path / "p.txt").exists()


FORWARD_COUNT = """
def forward_init_hook(run_ctx, **kwargs):
    run_ctx.tags = []

def forward_step(*, model, data, run_ctx, **kwargs):
    run_ctx.tags += list(data["seq_tag"])

def forward_finish_hook(run_ctx, **kwargs):
    with open("tags.txt", "w") as f:
        f.write(" ".join(run_ctx.tags))
"""


def test_forward_data_names_a_dataset_key(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD_COUNT)
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "forward", "++forward_data", "dev")
    assert code == 0, err
    assert len((tmp_path / "tags.txt").read_text().split()) == 4  # dev has 4 sequences
    code, _, err = run_cli(config, "++task", "forward", "++forward_data", "test")
    assert code == 1 and "forward_data = 'test'" in err


def test_allow_random_model_init_forwards_without_checkpoint(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD_COUNT + "forward_data = 'dev'\n")
    code, _, err = run_cli(config, "++task", "forward")
    assert code == 1 and "allow_random_model_init" in err
    code, out, err = run_cli(config, "++task", "forward", "++allow_random_model_init", "True")
    assert code == 0, err
    assert "allow_random_model_init" in out and len((tmp_path / "tags.txt").read_text().split()) == 4


@pytest.mark.parametrize(
    "override, key",
    [
        (("++backend", "tensorflow"), "backend"),
        (("++use_tensorflow", "True"), "use_tensorflow"),
        (("++use_horovod", "True"), "use_horovod"),
    ],
)
def test_keys_asking_for_what_the_runtime_does_not_do_stop_the_run(tmp_path, run_cli, override, key):
    code, _, err = run_cli(write_config(tmp_path), *override)
    assert code == 1 and key in err and not (tmp_path / "out").exists()


def test_keys_i6_core_writes_are_accepted(tmp_path, run_cli):
    extra = {
        "backend": "'torch'",
        "target": "'classes'",
        "use_horovod": "False",
        "tf_log_dir": "'returnn-tf-log'",
        "log": "['./returnn.log']",
        "cleanup_old_models": "{'keep': [2]}",
    }
    code, out, err = run_cli(write_config(tmp_path, "".join(f"{k} = {v}\n" for k, v in extra.items())))
    assert code == 0, err
    assert "nothing read" not in out and (tmp_path / "returnn.log").exists()
