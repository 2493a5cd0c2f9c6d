"""Pinning a GPU training loop: the loop's thread (and torch's backward thread for its GPU) on one CPU for the loop,
helper threads, loader threads, forked workers and the checkpoint writer off it, every mask restored after."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.generating import DummyDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.engine.background_store import BackgroundStore
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.thread_affinity import LOOP_PINNING, autograd_threads, chosen_cpu, pinning_supported

needs_two_cpus = pytest.mark.skipif(
    not pinning_supported() or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 CPUs to choose from"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _mask_of(native_id: int) -> set:
    return os.sched_getaffinity(native_id)


def test_ranks_on_one_node_get_distinct_cpus_and_a_single_process_keeps_its_own():
    assert [chosen_cpu({0, 1, 2, 3}, local_rank=r, local_world_size=2) for r in range(2)] == [0, 2]
    assert [chosen_cpu({4, 5}, local_rank=r, local_world_size=2) for r in range(2)] == [4, 5]
    assert [chosen_cpu({8, 9, 10}, local_rank=r, local_world_size=3) for r in range(3)] == [8, 9, 10]
    if pinning_supported():
        allowed = os.sched_getaffinity(0)
        assert chosen_cpu(allowed) in allowed


@needs_two_cpus
def test_the_loop_thread_runs_on_one_cpu_while_pinned_and_on_all_of_its_cpus_after():
    allowed = os.sched_getaffinity(0)
    with LOOP_PINNING.pinned(None):
        assert os.sched_getaffinity(0) == {LOOP_PINNING.loop_cpu}
        assert LOOP_PINNING.loop_cpu in allowed
        with LOOP_PINNING.pinned(None):  # nested: the outer one decides
            assert os.sched_getaffinity(0) == {LOOP_PINNING.loop_cpu}
        assert os.sched_getaffinity(0) == {LOOP_PINNING.loop_cpu}
    assert os.sched_getaffinity(0) == allowed and LOOP_PINNING.loop_cpu is None
    with pytest.raises(RuntimeError, match="step failed"):
        with LOOP_PINNING.pinned(None):
            raise RuntimeError("step failed")
    assert os.sched_getaffinity(0) == allowed and LOOP_PINNING.loop_cpu is None


@needs_two_cpus
def test_helper_threads_keep_off_the_loop_cpu_and_get_every_cpu_back_after():
    allowed = os.sched_getaffinity(0)
    masks = {}
    pinned, unpinned = threading.Event(), threading.Event()

    def helper(name):
        pinned.wait(10)
        LOOP_PINNING.keep_off_loop_cpu()  # before each piece of work
        masks[f"{name} while pinned"] = os.sched_getaffinity(0)
        unpinned.wait(10)
        LOOP_PINNING.keep_off_loop_cpu()
        masks[f"{name} after"] = os.sched_getaffinity(0)

    before = threading.Thread(target=helper, args=("before",))  # e.g. the loader of the first batches
    before.start()
    with LOOP_PINNING.pinned(None):
        cpu = LOOP_PINNING.loop_cpu
        inside = threading.Thread(target=helper, args=("inside",))  # inherits the loop's single CPU
        inside.start()
        pinned.set()
        while len(masks) < 2:
            threading.Event().wait(0.01)
    unpinned.set()
    before.join(10)
    inside.join(10)
    assert masks["before while pinned"] == masks["inside while pinned"] == allowed - {cpu}
    assert masks["before after"] == masks["inside after"] == allowed


@needs_two_cpus
def test_threads_the_loop_started_move_off_its_cpu_after_its_first_step():
    allowed = os.sched_getaffinity(0)
    stop = threading.Event()
    earlier = threading.Thread(target=stop.wait)
    earlier.start()
    os.sched_setaffinity(earlier.native_id, {min(allowed)})  # a thread its owner placed itself: left alone
    with LOOP_PINNING.pinned(None):
        cpu = LOOP_PINNING.loop_cpu
        started = threading.Thread(target=stop.wait)  # e.g. a DataLoader's pinning thread
        started.start()
        assert os.sched_getaffinity(started.native_id) == {cpu}
        LOOP_PINNING.move_new_threads_off()
        assert os.sched_getaffinity(started.native_id) == allowed - {cpu}
        assert os.sched_getaffinity(0) == {cpu}
        assert os.sched_getaffinity(earlier.native_id) == {min(allowed)}
    assert os.sched_getaffinity(started.native_id) == allowed  # every CPU again once the loop ends
    stop.set()
    earlier.join()
    started.join()


@needs_two_cpus
def test_checkpoints_are_written_off_the_loop_cpu():
    allowed = os.sched_getaffinity(0)
    store = BackgroundStore()
    masks = []
    with LOOP_PINNING.pinned(None):  # the writer thread starts inside and would inherit the loop's CPU
        cpu = LOOP_PINNING.loop_cpu
        store.submit("a checkpoint", lambda: masks.append(os.sched_getaffinity(0)))
        store.flush()
    assert masks == [allowed - {cpu}]


def test_with_a_single_cpu_nothing_is_pinned():
    if not pinning_supported():
        pytest.skip("needs Linux")
    seen = {}

    def loop():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        with LOOP_PINNING.pinned(None):
            seen["cpu"] = LOOP_PINNING.loop_cpu

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    assert seen == {"cpu": None}


class _AffinityRecordingDataset(DummyDataset):
    """Each sequence's `data` holds the CPUs the process (or thread) that loaded it may run on."""

    max_cpus = os.cpu_count() or 1

    def load_corpus_seq(self, corpus_idx):
        seq = super().load_corpus_seq(corpus_idx)
        mask = sorted(os.sched_getaffinity(0))
        cpus = np.full((self.max_cpus, 2), -1, dtype="float32")
        cpus[: len(mask), 0] = mask
        return dict(seq, data=cpus)


@needs_two_cpus
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_loaders_started_by_a_pinned_loop_run_off_its_cpu(worker_type):
    allowed = os.sched_getaffinity(0)
    dataset = _AffinityRecordingDataset(
        input_dim=2, output_dim=3, num_seqs=6, seq_len=_AffinityRecordingDataset.max_cpus, seq_ordering="default"
    )
    options = PipelineOptions(limits=BatchLimits(4 * dataset.max_cpus, 2), num_workers=1, worker_type=worker_type)
    with LOOP_PINNING.pinned(None):
        cpu = LOOP_PINNING.loop_cpu
        batches = list(EpochBatches(dataset, 1, options))
    recorded = {frozenset(int(c) for c in seq[:, 0] if c >= 0) for batch in batches for seq in batch["data"].numpy()}
    assert recorded == {frozenset(allowed - {cpu})}


@needs_two_cpus
def test_torchs_cpu_threads_started_inside_a_pinned_loop_are_not_left_on_its_cpu():
    # a fresh process: torch's CPU thread pool starts at its first parallel operation, which here is inside the loop
    script = """
import os, torch
from i6_minireturnn.thread_affinity import LOOP_PINNING
torch.set_num_threads(2)
allowed = os.sched_getaffinity(0)
with LOOP_PINNING.pinned(None):
    torch.ones(1 << 20).mul_(2)
threads = [int(t) for t in os.listdir("/proc/self/task")]
print(sorted(len(os.sched_getaffinity(t)) for t in threads), len(allowed))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    sizes, allowed = result.stdout.rsplit(" ", 1)
    assert eval(sizes) == [int(allowed)] * len(eval(sizes))


def _record_masks(*, model, data, run_ctx, **kwargs):
    autograd = autograd_threads(torch.cuda.current_device())
    if not _record_masks.started:  # the first step starts a thread, as a custom engine's loader would
        _record_masks.started.append(threading.Thread(target=_record_masks.stop.wait, daemon=True))
        _record_masks.started[0].start()
    started = _mask_of(_record_masks.started[0].native_id)
    _record_masks.seen.append((os.sched_getaffinity(0), [_mask_of(t) for t in autograd], started, run_ctx.epoch))
    loss = model(data["data"].float()).sum()
    run_ctx.mark_as_loss(loss, "out")


def _start_recording() -> None:
    _record_masks.seen, _record_masks.started, _record_masks.stop = [], [], threading.Event()


def _gpu_engine(**keys) -> Engine:
    config = {
        "device": "cuda",
        "batch_size": 40,
        "max_seqs": 4,
        "num_epochs": 2,
        "optimizer": {"class": "adam"},
        "learning_rate": 1e-3,
        "get_model": lambda **kwargs: torch.nn.Linear(2, 3),
        "train_step": _record_masks,
        **keys,
    }
    engine = Engine(Config(config))
    engine.init_train(train_data=DummyDataset(input_dim=2, output_dim=3, num_seqs=16, seq_len=8))
    return engine


def _train_epochs(engine: Engine, epochs) -> None:
    for epoch in epochs:
        engine.epoch = epoch
        engine.init_train_epoch()
        engine.train_epoch()


@needs_cuda
@needs_two_cpus
def test_a_gpu_training_loop_shares_one_cpu_with_its_backward_thread_and_gives_it_back():
    allowed = os.sched_getaffinity(0)
    _start_recording()
    _train_epochs(_gpu_engine(), [1, 2])
    _record_masks.stop.set()
    loop_masks = [loop for loop, _, _, _ in _record_masks.seen]
    assert all(len(mask) == 1 and mask <= allowed for mask in loop_masks)
    # from the second step on the backward thread exists and runs on the loop's CPU (from the start, where it did)
    assert all(autograd == [loop] for loop, autograd, _, _ in _record_masks.seen[1:])
    # the thread the first step started ran on the loop's CPU until that step ended, then on the others; in the next
    # epoch (started before it) on all of them
    first_epoch = [started for _, _, started, epoch in _record_masks.seen if epoch == 1]
    assert len(first_epoch) > 1 and first_epoch[0] == loop_masks[0]
    assert all(started == allowed - loop_masks[0] for started in first_epoch[1:])
    assert all(started == allowed for _, _, started, epoch in _record_masks.seen if epoch == 2)
    assert os.sched_getaffinity(0) == allowed
    assert [_mask_of(t) for t in autograd_threads(torch.cuda.current_device())] == [allowed]


@needs_cuda
def test_pin_training_loop_false_leaves_the_threads_alone():
    allowed = os.sched_getaffinity(0)
    _start_recording()
    _train_epochs(_gpu_engine(pin_training_loop=False), [1])
    _record_masks.stop.set()
    assert all(loop == allowed for loop, _, _, _ in _record_masks.seen)
