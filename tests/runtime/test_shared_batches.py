"""Batches from a worker process through shared memory (``data_worker_type = "shared_memory"``): the same batches as
the other loaders, batches the consumer keeps stay intact, the worker's errors and death are reported, and no worker
or memory outlives the epoch."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal

import pytest
import torch

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.errors import DataError

from .conftest import write_config

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create (Linux)")


def _options(worker_type: str = "shared_memory", **kwargs) -> PipelineOptions:
    return PipelineOptions(limits=BatchLimits(300, 6), num_workers=1, worker_type=worker_type, **kwargs)


def _contents(batch):
    return batch["seq_tag"], {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _assert_same(batches, reference):
    assert len(batches) == len(reference)
    for (tags, tensors), (ref_tags, ref_tensors) in zip(batches, reference):
        assert tags == ref_tags and tensors.keys() == ref_tensors.keys()
        for key in tensors:
            assert tensors[key].dtype == ref_tensors[key].dtype and torch.equal(tensors[key], ref_tensors[key]), key


def _open_fds() -> int:
    gc.collect()  # pipes of earlier tests that are garbage but not yet closed
    return len(os.listdir("/proc/self/fd"))


def test_batches_equal_the_thread_loaders_over_epochs_and_leave_nothing_behind():
    dataset = SyntheticSpeechDataset(num_seqs=60, seq_ordering="laplace:.10")
    fds = _open_fds()
    for epoch in (1, 2):
        reference = [_contents(b) for b in EpochBatches(dataset, epoch, _options("thread"))]
        _assert_same([_contents(b) for b in EpochBatches(dataset, epoch, _options())], reference)
    assert not multiprocessing.active_children()
    assert _open_fds() == fds


def test_batches_the_consumer_keeps_stay_intact():
    # more batches kept than there are slots: the later ones come through the pipe, nothing is overwritten
    dataset = SyntheticSpeechDataset(num_seqs=60, seq_ordering="laplace:.10")
    reference = [_contents(b) for b in EpochBatches(dataset, 1, _options("thread"))]
    kept = list(EpochBatches(dataset, 1, _options()))
    assert len(kept) > 6
    _assert_same([_contents(b) for b in kept], reference)


def test_growing_batches_get_larger_slots():
    # batch sizes from 1 to 40 sequences: slots made for the small first batches are replaced by larger ones
    dataset = SyntheticSpeechDataset(num_seqs=80, seq_ordering="sorted")
    options = PipelineOptions(limits=BatchLimits(100000, 40), num_workers=1, worker_type="shared_memory")
    small = PipelineOptions(limits=BatchLimits(100000, 1), num_workers=1, worker_type="shared_memory")
    reference = [_contents(b) for b in EpochBatches(dataset, 1, small)][:4]
    reference += [_contents(b) for b in EpochBatches(dataset, 1, options)]
    got = [_contents(b) for b in EpochBatches(dataset, 1, small)][:4]
    got += [_contents(b) for b in EpochBatches(dataset, 1, options)]
    _assert_same(got, reference)


class _Failing(SyntheticSpeechDataset):
    """Raises while the worker loads sequence 7 (a DataError, as a broken file would)."""

    def get_corpus_seq(self, corpus_idx, **kwargs):
        if corpus_idx == 7:
            raise DataError(f"sequence {corpus_idx} of dataset 'train' is broken")
        return super().get_corpus_seq(corpus_idx, **kwargs)


class _Killed(SyntheticSpeechDataset):
    """The worker process dies while loading sequence 7 (as killed for memory)."""

    def get_corpus_seq(self, corpus_idx, **kwargs):
        if corpus_idx == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().get_corpus_seq(corpus_idx, **kwargs)


def test_a_worker_error_is_raised_with_its_type_and_message():
    with pytest.raises(DataError, match="sequence 7 of dataset 'train' is broken"):
        list(EpochBatches(_Failing(num_seqs=20), 1, _options()))
    assert not multiprocessing.active_children()


def test_a_dead_worker_is_reported():
    with pytest.raises(DataError, match="data worker process ended unexpectedly.*SIGKILL"):
        list(EpochBatches(_Killed(num_seqs=20), 1, _options()))
    assert not multiprocessing.active_children()


def test_stopping_early_ends_the_worker():
    fds = _open_fds()
    batches = iter(EpochBatches(SyntheticSpeechDataset(num_seqs=200), 1, _options()))
    first = next(batches)
    batches.close()
    assert first["data"].shape[0] > 0
    assert not multiprocessing.active_children()
    del first
    assert _open_fds() == fds


TRAINING = """
num_workers_per_gpu = 1
data_worker_type = WORKER_TYPE
train["num_seqs"] = 24
train["seq_ordering"] = "random"
"""


def test_training_stores_the_same_files_as_with_threads(tmp_path, run_cli, monkeypatch):
    stored = {}
    for worker_type in ("thread", "shared_memory"):
        folder = tmp_path / worker_type
        folder.mkdir()
        monkeypatch.chdir(folder)
        write_config(folder, TRAINING.replace("WORKER_TYPE", repr(worker_type)))
        code, out, err = run_cli("returnn.config")
        assert code == 0, err
        stored[worker_type] = torch.load(folder / "out/model.002.pt", weights_only=False)["model"]
        assert (folder / "out/learning_rates").read_text()
    for name, value in stored["thread"].items():
        assert torch.equal(value, stored["shared_memory"][name]), name
    assert not multiprocessing.active_children()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (page-locked slots)")
def test_page_locked_slots_copy_to_the_gpu_unchanged():
    # asynchronous copies from the slots while the worker refills released ones: the GPU gets every batch unchanged
    dataset = SyntheticSpeechDataset(num_seqs=300, seq_ordering="laplace:.10")
    reference = [_contents(b) for b in EpochBatches(dataset, 1, _options("thread"))]
    on_gpu = []
    for batch in EpochBatches(dataset, 1, _options(pin_memory=True)):
        assert batch["data"].is_pinned()
        torch.cuda._sleep(2000000)  # the copies wait behind this: a slot given back before them would be refilled
        moved = {k: v.to("cuda", non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        del batch  # the slot goes back once the copies are done
        on_gpu.append(moved)
    got = [(b["seq_tag"], {k: v.cpu() for k, v in b.items() if isinstance(v, torch.Tensor)}) for b in on_gpu]
    _assert_same(got, reference)
