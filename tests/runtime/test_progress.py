"""Progress lines with ETA: due by time, checked every step without device reads, never a collective; the progress
file; the default interval."""

from __future__ import annotations

from typing import List

import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.engine.loss_tracker import LossTracker
from i6_minireturnn.engine.reporting import DEFAULT_PROGRESS_INTERVAL, LoopReport, RunReporting
from i6_minireturnn.engine.run_ctx import Loss
from i6_minireturnn.log import log

from .conftest import write_config


class CountingTracker(LossTracker):
    """A tracker that counts its device reads (:meth:`totals`) and the ranks it reads them over."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.reads: List[object] = []

    def totals(self, ranks=None):
        self.reads.append(ranks)
        return super().totals(ranks)


class FakeRanks:
    """Two ranks as seen from rank 0: sums double; counts the collectives."""

    def __init__(self) -> None:
        self.collectives = 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        self.collectives += 1
        return tensor * 2 if op == "sum" else tensor

    def union_of(self, names: List[str]) -> List[str]:
        return names


@pytest.fixture(autouse=True)
def verbosity_3(monkeypatch):
    monkeypatch.setattr(log, "verbosity", 3)


def _steps(report: LoopReport, tracker: LossTracker, count: int) -> None:
    for i in range(count):
        loss = torch.tensor(float(i))
        tracker.add({"ce": Loss(name="ce", loss=loss)}, loss, global_step=i, step_time=0.0)
        report.after_step(tracker, i + 1)


def _report(name="train", *, step_interval=1000, progress_interval=3600.0, **kwargs) -> LoopReport:
    run = RunReporting(step_interval=step_interval, progress_interval=progress_interval)
    return LoopReport(name=name, epoch=1, num_batches=100, device="cpu", run=run, final_epoch=3, **kwargs)


def test_default_progress_interval_is_30_seconds():
    assert DEFAULT_PROGRESS_INTERVAL == 30.0
    assert RunReporting.from_config(Config({})).progress_interval == 30.0
    assert RunReporting.from_config(Config({"log_progress_interval": 5})).progress_interval == 5.0


def test_steps_between_log_points_read_nothing_unless_progress_is_due(capsys):
    tracker = CountingTracker()
    _steps(_report(), tracker, 20)
    assert tracker.reads == [] and "ETA" not in capsys.readouterr().out
    tracker = CountingTracker()
    _steps(_report(progress_interval=0), tracker, 3)  # due at every step, far from any log point
    assert tracker.reads == [None, None, None]
    out = capsys.readouterr().out
    assert "train epoch 1/3, step 3/100 (3%), ETA " in out and "(training " in out and "steps/s, ce 1" in out


def test_progress_never_starts_a_collective(capsys):
    ranks = FakeRanks()
    tracker = CountingTracker()
    report = _report(step_interval=10, progress_interval=0, ranks=ranks, reduce_at_log_points=True)
    _steps(report, tracker, 25)
    # the collective reads at the log points 10 and 20 only (two reductions each); progress reads rank 0's totals
    assert ranks.collectives == 4
    assert [r for r in tracker.reads if r is not None] == [ranks, ranks]
    lines = [line for line in capsys.readouterr().out.splitlines() if "ETA" in line]
    assert len(lines) == 25
    assert "(losses of rank 0)" in lines[0] and "(losses of rank 0)" not in lines[9]  # step 10: over all ranks
    report.finish(tracker)
    assert ranks.collectives == 6
    # evaluation: the ranks' step counts may differ, so only the end reduces
    ranks, tracker = FakeRanks(), CountingTracker()
    _steps(_report("eval dev", step_interval=10, progress_interval=0, ranks=ranks), tracker, 25)
    assert ranks.collectives == 0


def test_no_progress_below_verbosity_3_without_a_progress_file(monkeypatch, capsys):
    monkeypatch.setattr(log, "verbosity", 2)
    tracker = CountingTracker()
    _steps(_report(progress_interval=0), tracker, 5)
    assert tracker.reads == [] and capsys.readouterr().out == ""


def test_training_eta_from_the_epochs_of_this_run():
    report = _report()  # 10 s for 5 of 100 steps: 190 s left in this epoch
    assert report._eta(10.0, 5) == "0:03:10 (training 0:09:50)"  # + 2 epochs at the projected 200 s
    run = report.run
    run.epoch_starts = {1: 0.0, 2: 300.0}  # one full epoch (with storing and evaluation) took 300 s
    second = LoopReport(name="train", epoch=2, num_batches=100, device="cpu", run=run, final_epoch=3)
    assert second._eta(10.0, 5) == "0:03:10 (training 0:08:10)"  # + 1 epoch at 300 s
    run.epoch_starts[3] = 600.0
    streamed = LoopReport(name="train", epoch=3, num_batches=None, device="cpu", run=run, final_epoch=3)
    assert streamed._eta(100.0, 5) == "0:03:20"  # a streamed epoch: from the mean epoch time; the last epoch
    first_streamed = LoopReport("train", 1, None, "cpu", run=RunReporting(), final_epoch=3)
    assert first_streamed._eta(10.0, 5) == ""


def test_progress_file_and_lines_with_the_defaults_of_a_short_run(tmp_path, run_cli):
    config = write_config(tmp_path, 'log_progress_interval = 0\nlog_progress_file = "progress"\nlog_verbosity = 3\n')
    code, out, err = run_cli(config)
    assert code == 0, err
    # log_step_interval is 50: every progress line falls between log points
    assert "train epoch 1/2, step 1/2 (50%), ETA " in out and "(training " in out
    assert "eval dev epoch 2, step 1/1 (100%)" not in out  # the last step of a pass is its end, no progress line
    assert (tmp_path / "progress").read_text().startswith("train epoch 2/2 50%, ETA ")
