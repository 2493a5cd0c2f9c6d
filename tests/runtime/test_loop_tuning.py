"""Loop tuning (i6_minireturnn/loop_tuning.py) changes when work happens, never what it gives: the same batches and
the same trained model with pacing and pinning on or off, every batch delivered where the loop opens no window, no
loader thread left waiting, every CPU mask given back. Its speed is measured in benchmarks/engine_overhead.py."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.loop_tuning import LOOP_TUNING

from .conftest import assert_equal_nested, write_config


class _SlowDataset(SyntheticSpeechDataset):
    """Loading takes a while (as reading a file does), so that loader threads are ahead of the loop and paced."""

    def load_corpus_seq(self, corpus_idx):
        time.sleep(0.001)
        return super().load_corpus_seq(corpus_idx)


class _StreamedSlowDataset(_SlowDataset):
    has_cheap_lengths = False


def _run_loop(*, paced: bool, windows: bool, streamed: bool, workers: int = 2):
    """A stand-in training loop (a step 'launches' for 5 ms, then back-propagates in a 2 ms window where `windows`);
    returns the batches' contents and the seconds it took."""
    dataset = (_StreamedSlowDataset if streamed else _SlowDataset)(num_seqs=48, seq_ordering="default")
    options = PipelineOptions(limits=BatchLimits(400, 4), num_workers=workers)
    contents = []
    start = time.monotonic()
    with LOOP_TUNING.pacing.training(paced):  # as a GPU loop is paced (a CPU loop is not)
        for batch in EpochBatches(dataset, 1, options):
            contents.append((batch["seq_tag"], batch["data"].sum().item()))
            time.sleep(0.005)
            if windows:
                with LOOP_TUNING.window():
                    time.sleep(0.002)
    return contents, time.monotonic() - start


@pytest.mark.parametrize("streamed", [False, True], ids=["planned", "streamed"])
def test_paced_loaders_give_the_same_batches(streamed):
    paced, _ = _run_loop(paced=True, windows=True, streamed=streamed)
    unpaced, _ = _run_loop(paced=False, windows=True, streamed=streamed)
    assert len(paced) >= 10 and paced == unpaced


@pytest.mark.parametrize("streamed", [False, True], ids=["planned", "streamed"])
def test_a_loop_that_opens_no_window_still_gets_every_batch(streamed):
    """E.g. a custom updater that calls backward itself: no window ever opens; the loaders still deliver every batch,
    the one needed next at once, and the epoch takes no longer than the loaders' own waits allow."""
    contents, seconds = _run_loop(paced=True, windows=False, streamed=streamed)
    assert contents == _run_loop(paced=False, windows=False, streamed=streamed)[0]
    assert seconds < 30


def test_several_loader_threads_never_wait_for_a_window():
    """Pacing keeps one loader thread out of a busy loop's way; several loaders (a dataset that decodes audio) are
    there because loading is the limit, so none of them waits, even where the loop opens no window at all."""
    waits = []
    original = LOOP_TUNING.pacing.wait_for_window

    def counting(ahead):
        if not LOOP_TUNING.pacing.window_open and ahead():  # it is about to wait
            waits.append(threading.current_thread().name)
        return original(ahead)

    def slow_loop(workers):  # 20 ms a step, no window: loaders get ahead of it
        dataset = _SlowDataset(num_seqs=24, seq_ordering="default")
        options = PipelineOptions(limits=BatchLimits(400, 4), num_workers=workers)
        with LOOP_TUNING.pacing.training(True):
            for _ in EpochBatches(dataset, 1, options):
                time.sleep(0.02)

    LOOP_TUNING.pacing.wait_for_window = counting
    try:
        slow_loop(3)
        assert waits == []
        slow_loop(1)
        assert waits  # one loader ahead of the loop does wait
    finally:
        LOOP_TUNING.pacing.wait_for_window = original


def test_a_training_loop_on_the_cpu_is_not_paced():
    """On the CPU the loop computes itself and its backward opens hardly a window: a paced loader would start each
    batch only when the loop takes the one before. Pacing (like pinning) is for GPU loops."""
    with LOOP_TUNING.training_loop("cpu", paced=True, pinned=True):
        assert not LOOP_TUNING.pacing.paced and LOOP_TUNING.pacing.window_open


def test_no_loader_thread_waits_after_the_loop_ends():
    dataset = SyntheticSpeechDataset(num_seqs=40)
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=2)
    with LOOP_TUNING.pacing.training(True):
        iterator = iter(EpochBatches(dataset, 1, options))
        next(iterator)
    assert not LOOP_TUNING.pacing.paced and LOOP_TUNING.pacing.window_open
    iterator.close()  # the loaders ahead were waiting for a window: they end
    assert not [t for t in threading.enumerate() if t.name.startswith("data")]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU masks are Linux's")
def test_a_pinned_loop_gives_every_cpu_back_and_its_loaders_and_workers_deliver():
    """Pinned (as on a GPU) with thread and process loaders started inside: every batch arrives, and afterwards the
    process runs on all of its CPUs again (nothing left on one CPU for the rest of the run)."""
    allowed = os.sched_getaffinity(0)
    dataset = SyntheticSpeechDataset(num_seqs=24)
    expected = [b["seq_tag"] for b in EpochBatches(dataset, 1, PipelineOptions(limits=BatchLimits(60, 4)))]
    for worker_type in ("thread", "process"):
        options = PipelineOptions(limits=BatchLimits(60, 4), num_workers=2, worker_type=worker_type)
        with LOOP_TUNING.pinning.pinned(None):
            tags = [b["seq_tag"] for b in EpochBatches(dataset, 1, options)]
            LOOP_TUNING.after_first_step()
        assert tags == expected, worker_type
        assert os.sched_getaffinity(0) == allowed


TRAINING = """
num_epochs = 2
num_workers_per_gpu = 2
train = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 40, "seq_len": 5}
"""


def test_training_gives_the_same_model_with_pacing_and_pinning_on_or_off(tmp_path, run_cli, monkeypatch):
    models = {}
    for name, keys in {
        "default": "",
        "unpaced": "data_loader_pacing = False\n",
        "unpinned": "pin_training_loop = False\n",
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        code, _, err = run_cli(write_config(folder, TRAINING + keys))
        assert code == 0, err
        models[name] = torch.load(folder / "out" / "model.002.pt", weights_only=False)
    assert_equal_nested(models["unpaced"], models["default"], "unpaced")
    assert_equal_nested(models["unpinned"], models["default"], "unpinned")
