"""Tasks forward (with hooks) and eval, loading checkpoints via load / load_epoch / model."""

from __future__ import annotations

import ast

import torch

from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

from .conftest import write_config

FORWARD_PART = """
forward = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 5, "seq_len": 5}

def forward_init_hook(run_ctx, **kwargs):
    run_ctx.results = {}
    run_ctx.stages = [run_ctx.stage]

def forward_step(*, model, data, run_ctx, **kwargs):
    best = model(data["data"]).argmax(1)
    for tag, labels in zip(data["seq_tag"], best.tolist()):
        run_ctx.results[tag] = labels

def forward_finish_hook(run_ctx, **kwargs):
    with open("forward_out.py", "w") as f:
        f.write(repr({"epoch": run_ctx.epoch, "stages": run_ctx.stages, "results": run_ctx.results}))
"""


def test_forward_with_hooks_writes_file(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD_PART)
    assert run_cli(config)[0] == 0
    code, _, err = run_cli(config, "++task", "forward", "++load", "out/model.001.pt")
    assert code == 0, err
    written = ast.literal_eval((tmp_path / "forward_out.py").read_text())
    assert written["epoch"] == 1 and written["stages"] == ["forward_step"]
    assert sorted(written["results"]) == [f"seq-{i}" for i in range(5)]
    assert all(len(labels) == 5 and set(labels) <= {0, 1, 2} for labels in written["results"].values())

    # load_epoch + model, and the newest epoch of model, are the other ways to name the checkpoint
    code, _, err = run_cli(config, "++task", "forward", "++load_epoch", "2")
    assert code == 0, err
    assert ast.literal_eval((tmp_path / "forward_out.py").read_text())["epoch"] == 2
    code, _, err = run_cli(config, "++task", "forward", "++load", "out/model.001")  # without .pt, as RETURNN allows
    assert code == 0, err


def test_forward_results_match_the_model(tmp_path, run_cli):
    config = write_config(tmp_path, FORWARD_PART)
    assert run_cli(config)[0] == 0
    assert run_cli(config, "++task", "forward")[0] == 0
    results = ast.literal_eval((tmp_path / "forward_out.py").read_text())["results"]
    weights = torch.load(tmp_path / "out/model.002.pt", weights_only=False)["model"]
    from i6_minireturnn.data.generating import DummyDataset

    dataset = DummyDataset(input_dim=2, output_dim=3, num_seqs=5, seq_len=5)
    dataset.init_seq_order(1)
    features = torch.from_numpy(dataset.get_seq(3)["data"])
    expected = (features @ weights["linear.weight"].T + weights["linear.bias"]).argmax(-1).tolist()
    assert results["seq-3"] == expected


def test_eval_task_reports_and_records_losses(tmp_path, run_cli):
    config = write_config(tmp_path)
    assert run_cli(config)[0] == 0
    before = read_learning_rate_file(str(tmp_path / "out/learning_rates"))[1].error["dev_loss_CE"]
    code, out, err = run_cli(
        config,
        "++task",
        "eval",
        "++load_epoch",
        "1",
        "++eval_datasets",
        "{'other': {'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 2, 'seq_len': 4}}",
    )
    assert code == 0, err
    assert "eval other: other_loss_CE" in out
    errors = read_learning_rate_file(str(tmp_path / "out/learning_rates"))[1].error
    assert errors["dev_loss_CE"] == before  # same model, same data: same score
    assert "other_loss_CE" in errors
