"""Task train end to end: epochs, evaluation, learning_rates file, checkpoints, resume, cleanup, preload, AMP."""

from __future__ import annotations

import os

import pytest
import torch

from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

from .conftest import write_config


def test_two_epochs_with_dev_and_extra_eval(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        eval_datasets = {"devtrain": {**dev, "num_seqs": 3}}
        learning_rates = [0.01, 0.005]
        """,
    )
    code, out, err = run_cli(config)
    assert code == 0, err
    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert sorted(data) == [1, 2]
    assert data[1].learning_rate == 0.01 and data[2].learning_rate == 0.005
    for epoch in (1, 2):
        assert set(data[epoch].error) == {"CE", "dev_loss_CE", "devtrain_loss_CE"}
        assert all(v > 0 for v in data[epoch].error.values())
    assert data[2].error["CE"] < data[1].error["CE"]  # it learns
    for epoch in (1, 2):
        checkpoint = torch.load(tmp_path / f"out/model.{epoch:03d}.pt", weights_only=False)
        assert set(checkpoint) == {"model", "epoch", "step"}
        assert checkpoint["epoch"] == epoch
        assert checkpoint["step"] == 2 * epoch  # 8 seqs, 4 per batch
        assert set(checkpoint["model"]) == {"linear.weight", "linear.bias"}
        assert os.path.exists(tmp_path / f"out/model.{epoch:03d}.opt.pt")
    assert "epoch 2: trained 2 steps" in out
    assert "train epoch 1 step 0" in out  # per-step lines at verbosity 5
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp-" in f]


def test_epoch_loss_is_sum_over_norm(tmp_path, run_cli):
    """Reported loss = sum(loss) / sum(inv_norm_factor); without a norm factor, the mean over steps."""
    config = write_config(
        tmp_path,
        """
        num_epochs = 1
        dev = None
        learning_rate = 0.0
        class ConstModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(()))
        def get_model(epoch, step, **kwargs):
            return ConstModel()
        def train_step(*, model, data, run_ctx, **kwargs):
            n = data["data:size0"]
            run_ctx.mark_as_loss(model.w + n.float() * 2.0, "normed", inv_norm_factor=n)
            run_ctx.mark_as_loss(model.w + n.float(), "plain")
        batch_size = 15  # 3 seqs of length 5 per batch: batches of 3, 3, 2 seqs
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    errors = read_learning_rate_file(str(tmp_path / "out/learning_rates"))[1].error
    assert errors["normed"] == pytest.approx(2.0)
    assert errors["plain"] == pytest.approx((3 + 3 + 2) / 3)


def test_resume_after_deleting_newest_checkpoint(tmp_path, run_cli):
    config = write_config(tmp_path, "num_epochs = 3\n")
    code, _, err = run_cli(config)
    assert code == 0, err
    final = torch.load(tmp_path / "out/model.003.pt", weights_only=False)
    os.remove(tmp_path / "out/model.003.pt")
    os.remove(tmp_path / "out/model.003.opt.pt")
    code, out, err = run_cli(config)
    assert code == 0, err
    assert "Resuming training after stored epoch 2" in out
    assert "start epoch 3" in out and "start epoch 1 " not in out
    resumed = torch.load(tmp_path / "out/model.003.pt", weights_only=False)
    assert resumed["step"] == final["step"] == 6
    # Same seeds, same batches and restored optimizer state: the resumed epoch is bit-identical.
    for name, value in final["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    # The learning_rates history survived and holds epoch 3 once.
    assert sorted(read_learning_rate_file(str(tmp_path / "out/learning_rates"))) == [1, 2, 3]


def test_finished_training_reruns_as_no_op_and_more_epochs_continue(tmp_path, run_cli):
    config = write_config(tmp_path)
    assert run_cli(config)[0] == 0
    code, out, _ = run_cli(config)
    assert code == 0 and "Nothing to train" in out
    code, out, err = run_cli(config, "++num_epochs", "3")
    assert code == 0, err
    assert "start epoch 3" in out
    assert torch.load(tmp_path / "out/model.003.pt", weights_only=False)["step"] == 6


def test_cleanup_keeps_requested_epochs(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        num_epochs = 5
        cleanup_old_models = {"keep": [2], "keep_last_n": 1, "keep_best_n": 0}
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    stored = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".pt") and ".opt." not in f)
    assert stored == ["model.002.pt", "model.005.pt"]


def test_save_interval(tmp_path, run_cli):
    config = write_config(tmp_path, "num_epochs = 5\nsave_interval = 2\n")
    code, _, err = run_cli(config)
    assert code == 0, err
    stored = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".pt") and ".opt." not in f)
    assert stored == ["model.002.pt", "model.004.pt", "model.005.pt"]  # the final epoch is always saved


def test_save_interval_set_by_a_custom_engine(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        num_epochs = 5
        from i6_minireturnn.engine.engine import Engine
        class CustomEngine(Engine):
            def __init__(self, config):
                super().__init__(config)
                self._save_model_epoch_interval = 2  # Mini-RETURNN's attribute
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    stored = sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".pt") and ".opt." not in f)
    assert stored == ["model.002.pt", "model.004.pt", "model.005.pt"]


def test_preload_with_prefix_and_import_model(tmp_path, run_cli):
    source = {"model": {"weight": torch.full((3, 2), 7.0), "bias": torch.full((3,), -1.0)}, "epoch": 9, "step": 99}
    torch.save(source, tmp_path / "pretrained.pt")
    config = write_config(
        tmp_path,
        """
        num_epochs = 1
        learning_rate = 0.0
        preload_from_files = {"enc": {"filename": "pretrained.pt", "prefix": "linear.", "init_for_train": True}}
        """,
    )
    code, out, err = run_cli(config)
    assert code == 0, err
    weights = torch.load(tmp_path / "out/model.001.pt", weights_only=False)["model"]
    assert torch.equal(weights["linear.weight"], torch.full((3, 2), 7.0))
    assert torch.equal(weights["linear.bias"], torch.full((3,), -1.0))

    torch.save({"model": weights, "epoch": 4, "step": 12}, tmp_path / "init.pt")
    config2 = write_config(
        tmp_path, 'num_epochs = 1\nlearning_rate = 0.0\nmodel = "out2/model"\nimport_model_train_epoch1 = "init.pt"\n'
    )
    code, out, err = run_cli(config2)
    assert code == 0, err
    imported = torch.load(tmp_path / "out2/model.001.pt", weights_only=False)
    assert imported["epoch"] == 1 and imported["step"] == 2  # starts at epoch 1, step 0
    assert torch.equal(imported["model"]["linear.weight"], torch.full((3, 2), 7.0))


def test_preload_missing_parameters_is_an_error(tmp_path, run_cli):
    torch.save({"model": {"weight": torch.zeros(3, 2)}}, tmp_path / "partial.pt")
    extra = 'preload_from_files = {"a": {"filename": "partial.pt", "prefix": "linear.", "init_for_train": True}}\n'
    code, _, err = run_cli(write_config(tmp_path, extra))
    assert code == 1
    assert "linear.bias" in err and "partial.pt" in err
    extra = extra.replace('"init_for_train": True', '"init_for_train": True, "ignore_missing": True')
    code, _, err = run_cli(write_config(tmp_path, extra))
    assert code == 0, err


@pytest.mark.skipif(not hasattr(torch, "autocast"), reason="torch without autocast")
def test_amp_bfloat16_on_cpu(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        torch_amp_options = {"dtype": "bfloat16"}
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert data[2].error["CE"] < data[1].error["CE"]


def test_amp_autocast_dtype_is_used(tmp_path, run_cli):
    (tmp_path / "seen.txt").write_text("")
    config = write_config(
        tmp_path,
        """
        num_epochs = 1
        torch_amp_options = {"dtype": "bfloat16"}
        _orig_train_step = train_step
        def train_step(*, model, data, run_ctx, **kwargs):
            with open("seen.txt", "a") as f:
                f.write(str(model.linear(data["data"].float()).dtype) + "\\n")
            _orig_train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    assert set((tmp_path / "seen.txt").read_text().split()) == {"torch.bfloat16"}


def test_gradient_accumulation_and_clipping_run(tmp_path, run_cli):
    config = write_config(
        tmp_path, "accum_grad_multiple_step = 2\ngradient_clip = 0.5\ngradient_clip_norm = 1.0\ngradient_noise = 0.01\n"
    )
    code, _, err = run_cli(config)
    assert code == 0, err


def test_random_seed_makes_runs_reproducible(tmp_path, run_cli):
    config = write_config(tmp_path, 'num_epochs = 1\nrandom_seed = 3\ntrain["seq_ordering"] = "random"\n')
    assert run_cli(config)[0] == 0
    first = torch.load(tmp_path / "out/model.001.pt", weights_only=False)["model"]
    assert run_cli(config, "++model", "again/model", "++learning_rate_file", "again/lr")[0] == 0
    second = torch.load(tmp_path / "again/model.001.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert run_cli(config, "++model", "other/model", "++learning_rate_file", "other/lr", "++random_seed", "4")[0] == 0
    other = torch.load(tmp_path / "other/model.001.pt", weights_only=False)["model"]
    assert not torch.equal(first["linear.weight"], other["linear.weight"])


def test_custom_engine_from_config(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        num_epochs = 1
        from i6_minireturnn.engine.engine import Engine
        class CustomEngine(Engine):
            def run_train_step(self, data, run_ctx, step_idx):
                total, losses = super().run_train_step(data, run_ctx, step_idx)
                with open("custom_steps.txt", "a") as f:
                    f.write(f"{step_idx}\\n")
                return total, losses
        """,
    )
    code, out, err = run_cli(config)
    assert code == 0, err
    assert (tmp_path / "custom_steps.txt").read_text().split() == ["0", "1"]
    assert "Using custom engine CustomEngine" in out


def test_newbob_decays_from_dev_score(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        num_epochs = 3
        learning_rate = 0.01
        learning_rate_control = "newbob_abs"
        newbob_error_threshold = -1000.0  # any change counts as too small: decay every epoch
        newbob_learning_rate_decay = 0.5
        """,
    )
    code, _, err = run_cli(config)
    assert code == 0, err
    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert [data[e].learning_rate for e in (1, 2, 3)] == [0.01, 0.01, 0.005]


def test_float16_loss_scale_is_stored_with_the_epoch_and_resumed(tmp_path, run_cli):
    # A resumed float16 run must scale its losses as the uninterrupted one: the scale grows or shrinks in training.
    config = write_config(tmp_path, 'torch_amp_options = {"dtype": "float16"}\n')
    code, _, err = run_cli(config, "++num_epochs", "1")
    assert code == 0, err
    first = torch.load(tmp_path / "out/model.001.pt", weights_only=False)
    if "grad_scaler" not in first:  # this torch has no float16 loss scaler for the CPU: nothing to store
        pytest.skip("no float16 gradient scaler for the CPU in this torch version")
    assert first["grad_scaler"]["scale"] > 0
    from i6_minireturnn.config import Config
    from i6_minireturnn.engine.engine import Engine

    resumed = Config()
    resumed.load_file(str(config))
    resumed.set("num_epochs", 2)
    engine = Engine(resumed)
    engine.init_train()
    try:
        assert engine._updater.grad_scaler_state()["scale"] == first["grad_scaler"]["scale"]
    finally:
        engine.close()
