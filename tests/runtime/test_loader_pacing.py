"""Loader pacing: loader threads that are ahead of a paced training loop work only in its windows (backward, waiting
for a batch); the batch the loop needs next is always loaded; the engine's training steps are paced, with the
backward as the window."""

from __future__ import annotations

import threading
import time

import pytest

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.loader_pacing import PACING
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions

from .conftest import write_config


class _RecordingDataset(SyntheticSpeechDataset):
    """Records, for each sequence loaded, the loop's phase and how many batches it had taken then."""

    def __init__(self, state, **kwargs):
        super().__init__(**kwargs)
        self.state = state
        self.records = []

    def load_corpus_seq(self, corpus_idx):
        self.records.append((corpus_idx, self.state["taken"], self.state["phase"]))
        # loading takes a while (as reading a file does): on a fast machine an unpaced loader would otherwise
        # finish a batch ahead before the loop, having taken the batch before, even enters its next phase
        time.sleep(0.001)
        return super().load_corpus_seq(corpus_idx)


class _StreamedRecordingDataset(_RecordingDataset):
    """The same, without cheap lengths: batches are collected as the sequences come (the streamed path)."""

    has_cheap_lengths = False


def _loop(paced: bool, *, windows: bool = True, streamed: bool = False):
    """A stand-in training loop: each step 'launches' for 30 ms (the loader could run: the sleep releases Python's
    lock), then back-propagates in a 10 ms window; waiting for a batch is a window too. Returns the loads that were
    ahead of the loop, by phase, the batches' contents, their number and the loads of the batch needed next."""
    state = {"taken": 0, "phase": "launch"}
    options = PipelineOptions(limits=BatchLimits(400, 4), num_workers=1)
    # the plan says which batch each sequence is in; streaming gives the same batches
    plan = EpochBatches(_RecordingDataset(state, num_seqs=48, seq_ordering="default"), 1, options).plan
    batch_of = {item.corpus_idx: b for b, items in enumerate(plan) for item in items}
    dataset = (_StreamedRecordingDataset if streamed else _RecordingDataset)(state, num_seqs=48, seq_ordering="default")
    batches = EpochBatches(dataset, 1, options)
    dataset.records.clear()  # planning read the lengths
    contents = []
    with PACING.training(paced):
        iterator = iter(batches)
        while True:
            state["phase"] = "waiting"  # for the next batch: a window too
            batch = next(iterator, None)
            state["phase"] = "launch"
            if batch is None:
                break
            state["taken"] += 1
            contents.append((batch["seq_tag"], batch["data"].sum().item()))
            time.sleep(0.03)
            if windows:
                state["phase"] = "window"
                with PACING.window():
                    time.sleep(0.01)
                state["phase"] = "launch"
    ahead = {"launch": 0, "window": 0, "waiting": 0}
    needed = dict(ahead)
    for corpus_idx, taken, phase in dataset.records:
        # loads of a batch after the one the loop needs next, and of that one
        (ahead if batch_of[corpus_idx] > taken else needed)[phase] += 1
    return ahead, contents, len(plan), needed


@pytest.mark.parametrize("streamed", [False, True], ids=["planned", "streamed"])
def test_a_paced_loader_works_ahead_only_in_the_loops_windows(streamed):
    ahead, contents, num_batches, _ = _loop(paced=True, streamed=streamed)
    assert num_batches >= 10 and len(contents) == num_batches
    assert ahead["window"] >= num_batches  # it did read ahead (a batch has 4 sequences), in the backward windows
    # a load is recorded just after the loader passed its window check: one the loop's thread overtook in between
    # (a heavily loaded machine) may show as outside a window, and a streamed batch that is needed next reads the
    # first sequence of the following one (to know it is full); without pacing nearly all are outside (below)
    assert ahead["launch"] <= 3

    unpaced_ahead, unpaced_contents, _, _ = _loop(paced=False, streamed=streamed)
    assert unpaced_contents == contents  # the same batches
    assert unpaced_ahead["launch"] > num_batches


def test_a_loop_without_windows_still_gets_every_batch_in_time():
    # e.g. a custom updater that calls backward itself: a batch waits for no window once the loop needs it next
    ahead, contents, num_batches, needed = _loop(paced=True, windows=False)
    assert contents == _loop(paced=False)[1]
    # a loader that waited while its batch was ahead goes on as soon as the loop takes the batch before, not only
    # when the loop waits for it: the needed batch's sequences are read while the loop works ("launch")
    assert needed["waiting"] <= 8 and needed["launch"] >= 2 * num_batches
    assert ahead["launch"] <= 3


def test_no_loader_thread_waits_after_the_loop_ends():
    dataset = SyntheticSpeechDataset(num_seqs=40)
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=2)
    with PACING.training():
        iterator = iter(EpochBatches(dataset, 1, options))
        next(iterator)
    assert not PACING.paced and PACING.window_open
    iterator.close()  # the loaders ahead were waiting for a window: they end
    assert not [t for t in threading.enumerate() if t.name.startswith("data")]


@pytest.mark.parametrize("pacing", [True, False], ids=["default", "turned_off"])
def test_training_steps_are_paced_with_backward_as_the_window(tmp_path, run_cli, pacing):
    write_config(
        tmp_path,
        f"""
        from i6_minireturnn.data.loader_pacing import PACING
        num_workers_per_gpu = 1
        data_loader_pacing = {pacing}

        def train_step(*, model, data, run_ctx, **kwargs):
            logits = model(data["data"])
            loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
            print(f"forward paced={{PACING.paced}} window={{PACING.window_open}}")
            if loss.requires_grad:
                loss.register_hook(lambda grad: print(f"backward window={{PACING.window_open}}"))
            run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
        """,
    )
    code, out, err = run_cli("returnn.config")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith(("forward", "backward"))]
    # 2 epochs of 2 steps (8 sequences, 4 a batch), each followed by evaluating dev (1 batch, no backward)
    step = ["forward paced=True window=False", "backward window=True"]
    if not pacing:  # `data_loader_pacing = False`: loaders run whenever they get the lock, as without pacing
        step = ["forward paced=False window=True", "backward window=True"]
    eval_step = ["forward paced=False window=True"]
    assert lines == 2 * (2 * step + eval_step)


def test_work_for_the_next_window_runs_when_the_loop_opens_it():
    # how the read-ahead hands a loader thread its next batch: in a window, where waking it costs the loop nothing
    calls = []
    assert not PACING.at_next_window(lambda: calls.append("unpaced"))  # no loop is paced: the caller runs it now
    with PACING.training():
        assert PACING.at_next_window(lambda: calls.append("first"))
        assert PACING.at_next_window(lambda: calls.append("second"))
        assert calls == []
        with PACING.window():
            assert calls == ["first", "second"]
            assert not PACING.at_next_window(lambda: calls.append("open"))  # a window is open: the caller runs it
        with PACING.window():
            pass
        assert PACING.at_next_window(lambda: calls.append("after the loop"))
    assert calls == ["first", "second"]  # run once each; work queued by a loop that ended is dropped
    with PACING.training():
        with PACING.window():
            assert calls == ["first", "second"]
