"""Every task takes the checkpoint by one rule (engine/epoch_store.py): the newest complete epoch that reads back.
Training resumes after it, eval / forward / compute_priors load it (a newer, incomplete epoch is skipped with a note),
a custom engine's get_epoch_model answers it; files needed to continue are read before any work."""

from __future__ import annotations

import shutil

import torch

from i6_minireturnn.config import Config
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.file_formats import read_learning_rate_file

from .conftest import assert_equal_nested, write_config

FORWARD = """
forward = dev
def forward_init_hook(run_ctx, **kwargs):
    run_ctx.loaded = []
def forward_step(*, model, data, run_ctx, **kwargs):
    run_ctx.loaded.append(float(model.linear.weight.sum()))
def forward_finish_hook(run_ctx, **kwargs):
    with open("forward_weights.txt", "w") as f:
        f.write(repr(run_ctx.loaded[0]))
"""


def _weight_sum(path) -> float:
    return float(torch.load(path, weights_only=False)["model"]["linear.weight"].sum())


def _train_then_store_an_incomplete_epoch_3(tmp_path, run_cli):
    """Two complete epochs, then model.003.pt without its learning_rates entry (a run killed right after the model
    file was renamed into place)."""
    config = write_config(tmp_path, FORWARD)
    code, _, err = run_cli(config)
    assert code == 0, err
    out = tmp_path / "out"
    state = torch.load(out / "model.002.pt", weights_only=False)
    state["epoch"] = 3
    state["model"] = {name: value + 1.0 for name, value in state["model"].items()}
    torch.save(state, out / "model.003.pt")
    shutil.copy(out / "model.002.opt.pt", out / "model.003.opt.pt")
    assert "3: EpochData" not in (out / "learning_rates").read_text()
    return config, out


def test_forward_and_eval_skip_an_incomplete_newest_epoch_with_a_note(tmp_path, run_cli):
    config, out = _train_then_store_an_incomplete_epoch_3(tmp_path, run_cli)
    code, stdout, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    assert "Epoch 3: the model was stored, but the run stopped before its learning_rates entry" in stdout
    assert f"Loading checkpoint {out / 'model.002.pt'}".replace(str(tmp_path) + "/", "") in stdout
    assert float((tmp_path / "forward_weights.txt").read_text()) == _weight_sum(out / "model.002.pt")

    code, stdout, err = run_cli(config, "++task", "eval")
    assert code == 0, err
    assert "model.002.pt" in stdout and "model.003.pt" not in stdout.replace("Epoch 3: the model", "")
    assert "epoch 2 eval dev" in stdout


def test_training_resumes_where_forward_loads_and_get_epoch_model_agrees(tmp_path, run_cli, monkeypatch):
    config, out = _train_then_store_an_incomplete_epoch_3(tmp_path, run_cli)
    loaded = Config()
    loaded.load_file(str(config))
    monkeypatch.chdir(tmp_path)
    assert Engine.get_epoch_model(loaded) == (2, "out/model.002")
    loaded.set("task", "forward")
    assert Engine.get_epoch_model(loaded) == (2, "out/model.002")

    code, stdout, err = run_cli(config, "++num_epochs", "3")
    assert code == 0, err
    assert "Resuming training after stored epoch 2" in stdout
    assert "3: EpochData" in (out / "learning_rates").read_text()  # epoch 3 trained again, now complete


def test_forward_skips_an_unreadable_newest_epoch_as_training_does(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD)
    assert run_cli(config)[0] == 0
    newest = tmp_path / "out" / "model.002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    code, stdout, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    assert "skipping unreadable checkpoint of epoch 2" in stdout
    assert float((tmp_path / "forward_weights.txt").read_text()) == _weight_sum(tmp_path / "out" / "model.001.pt")


def test_a_damaged_optimizer_state_stops_before_any_work(tmp_path, run_cli, monkeypatch):
    """The optimizer state to continue with is read with the model: a damaged one stops the run before the missing
    evaluation of the stored epoch runs and before learning_rates is rewritten, naming the file and the ways on.
    Done as the message says (the epoch's files removed), the restart ends as the uninterrupted run."""
    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.chdir(reference)
    assert run_cli(write_config(reference, "num_epochs = 3\n"))[0] == 0
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, "num_epochs = 3\n")
    assert run_cli(config, "++num_epochs", "2")[0] == 0
    out = tmp_path / "out"
    lr_file = out / "learning_rates"
    # epoch 2 without its dev score: a restart would evaluate it first
    text = lr_file.read_text()
    lr_file.write_text(text[: text.index("'dev_loss_CE'", text.index("2: EpochData"))] + "})\n}\n")
    scores = read_learning_rate_file(str(lr_file))[2].error
    assert scores and not any(key.startswith("dev_") for key in scores)
    before = lr_file.read_bytes()
    opt = out / "model.002.opt.pt"
    opt.write_bytes(opt.read_bytes()[:50])
    code, stdout, err = run_cli(config)
    assert code == 1
    assert "model.002.opt.pt" in err and "allow_missing_optimizer_checkpoint" in err and "Traceback" not in err
    assert "remove" in err and "model.002.pt" in err
    assert "eval dev" not in stdout  # no work done
    assert lr_file.read_bytes() == before

    (out / "model.002.pt").unlink()
    opt.unlink()
    code, _, err = run_cli(config)
    assert code == 0, err
    for name in ("model.003.pt", "model.003.opt.pt", "model.002.pt"):
        assert_equal_nested(
            torch.load(out / name, weights_only=False), torch.load(reference / "out" / name, weights_only=False), name
        )
    assert lr_file.read_text() == (reference / "out" / "learning_rates").read_text()


def test_a_checkpoint_that_does_not_fit_names_its_file(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD)
    assert run_cli(config)[0] == 0
    state = torch.load(tmp_path / "out" / "model.002.pt", weights_only=False)
    state["model"]["linear.weight"] = torch.zeros(5, 2)
    torch.save(state, tmp_path / "out" / "model.002.pt")
    code, _, err = run_cli(config, "++task", "forward")
    assert code == 1
    assert "out/model.002.pt" in err and "does not fit the model" in err
