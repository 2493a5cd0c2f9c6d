"""TensorBoard scalars (use_tensorboard = True): read back from the event files; off by default; a missing package or
a wrong option stops the run naming the fix."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from i6_minireturnn.file_formats import read_learning_rate_file

from .conftest import write_config

if importlib.util.find_spec("tensorboard") is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip(
        "tensorboard not installed: pip install 'i6-minireturnn[tensorboard]' to run these tests",
        allow_module_level=True,
    )

TENSORBOARD = 'use_tensorboard = True\ntensorboard_opts = {"log_dir": "tb"%s}\nlog_step_interval = 1\n'


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_losses_scores_learning_rate_and_throughput(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path, TENSORBOARD % ""))
    assert code == 0, err
    scalars = _scalars(tmp_path / "tb")
    # 8 sequences, 4 per batch: 2 steps per epoch, written at every log point on the global step axis
    for tag in ("train/CE", "train/learning_rate", "train/steps_per_second", "train/computing_share"):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4], tag
    assert all(value == pytest.approx(0.01) for _, value in scalars["train/learning_rate"])
    assert all(0 < value <= 1 for _, value in scalars["train/computing_share"])
    # epoch axis: the learning_rates file's scores
    scores = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    for name in ("CE", "dev_loss_CE"):
        assert scalars[f"epoch/{name}"] == [(e, pytest.approx(scores[e].error[name])) for e in (1, 2)]
    # each step value is the mean since the last write (both batches have 20 frames: their mean is the epoch's)
    first_epoch = [value for _, value in scalars["train/CE"][:2]]
    assert sum(first_epoch) / 2 == pytest.approx(scores[1].error["CE"], rel=1e-5)
    assert [step for step, _ in scalars["dev/CE"]] == [2, 4]  # mainline's tag, at the global step
    assert {"epoch/learning_rate", "epoch/computing_share", "epoch/train_seconds"} <= set(scalars)
    assert "train/gpu_memory_peak_gib" not in scalars  # on CUDA only


def test_log_every_n_train_steps_writes_at_the_log_points_after_n_steps(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path, TENSORBOARD % ', "log_every_n_train_steps": 2'))
    assert code == 0, err
    assert [step for step, _ in _scalars(tmp_path / "tb")["train/CE"]] == [2, 4]


def test_off_by_default(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path))
    assert code == 0, err
    assert not (tmp_path / "runs").exists() and not list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_restart_hides_the_steps_it_repeats(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path, TENSORBOARD % ""))
    assert code == 0, err
    # epoch 2 trained again after a restart (its files removed): TensorBoard shows its steps once, from the new run
    os.remove(tmp_path / "out/model.002.pt")
    scores = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    del scores[2]
    from i6_minireturnn.file_formats import write_learning_rate_file

    write_learning_rate_file(str(tmp_path / "out/learning_rates"), scores)
    code, out, err = run_cli(write_config(tmp_path, TENSORBOARD % ""))
    assert code == 0, err
    assert "Starting training at epoch 2, global step 2" in out
    assert [step for step, _ in _scalars(tmp_path / "tb")["train/CE"]] == [1, 2, 3, 4]


def test_missing_package_names_the_extra(tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as where it is not installed
    code, _, err = run_cli(write_config(tmp_path, TENSORBOARD % ""))
    assert code == 1
    assert "use_tensorboard = True" in err and "pip install 'i6-minireturnn[tensorboard]'" in err


def test_not_required_and_missing_warns_once_and_trains(tmp_path, run_cli, monkeypatch):
    # what the training job asks for by its own default: a node without the package still trains
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    code, out, err = run_cli(write_config(tmp_path, TENSORBOARD % ', "required": False'))
    assert code == 0, err
    assert (out + err).count("TensorBoard is off: the tensorboard package is not installed") == 1
    assert not (tmp_path / "tb").exists() and (tmp_path / "out" / "learning_rates").exists()


def test_unknown_option_is_refused(tmp_path, run_cli):
    code, _, err = run_cli(write_config(tmp_path, TENSORBOARD % ', "log_every": 2'))
    assert code == 1 and "tensorboard_opts" in err and "unknown entries ['log_every']" in err and "log_dir" in err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")
def test_two_ranks_rank_0_writes_and_progress_between_log_points_needs_no_collective(tmp_path):
    from .test_distributed_training import _run, _write

    extra = (
        TENSORBOARD.replace("log_step_interval = 1", "log_step_interval = 3") % ""
        + 'log_progress_interval = 0\nlog_progress_file = "progress"\ntorch_distributed = {}\n'
    )
    code, out = _run(_write(tmp_path, extra).parent, processes=2)
    assert code == 0, out
    # 8 batches an epoch, 4 steps per rank: progress at steps 1, 2 (rank 0's losses) and 3 (a log point: all ranks')
    assert "train epoch 1/2, step 2/4 (50%), ETA " in out and "(losses of rank 0)" in out
    assert "train epoch 1/2, step 3/4 (75%)" in out
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    assert [step for step, _ in _scalars(tmp_path / "tb")["train/ctc"]] == [3, 4, 7, 8]
    assert (tmp_path / "progress").read_text().startswith("eval dev epoch 2")


def test_step_learning_rate_is_read_at_each_write():
    from i6_minireturnn.engine.loss_tracker import LossTracker
    from i6_minireturnn.engine.reporting import LoopReport, RunReporting
    from i6_minireturnn.engine.run_ctx import Loss

    class Writer:
        every_n_train_steps = None

        def __init__(self):
            self.written = []

        def start(self, global_step):
            pass

        def scalars(self, prefix, values, step):
            self.written.append((prefix, step, dict(values)))

        def flush(self):
            pass

    rates = iter([0.1, 0.2, 0.3])
    writer = Writer()
    run = RunReporting(step_interval=2, progress_interval=3600, tensorboard=writer)
    report = LoopReport("train", 1, 4, "cpu", run=run, global_step=10, learning_rate=lambda: next(rates))
    tracker = LossTracker("cpu")
    for i in range(4):
        loss = torch.tensor(float(i))
        tracker.add({"ce": Loss(name="ce", loss=loss)}, loss, global_step=10 + i, step_time=0.0)
        report.after_step(tracker, i + 1)
    report.finish(tracker)
    steps = [(prefix, step, values.get("learning_rate"), values.get("ce")) for prefix, step, values in writer.written]
    # log points at steps 2 and 4 (the pass' end writes no second time), then the epoch axis
    assert steps == [("train", 12, 0.1, 0.5), ("train", 14, 0.2, 2.5), ("epoch", 1, 0.3, 1.5)]
