"""The epoch planner: which sequences (or chunks) form which batch, from the lengths alone."""

from __future__ import annotations

import numpy as np
import pytest

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.chunking import Chunking, LengthFilter
from i6_minireturnn.data.epoch_plan import Item, plan_epoch
from i6_minireturnn.data.generating import StaticDataset, SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.errors import DataError

DATA_LENGTHS = (10, 10, 10, 30, 5, 5)


def _static(lengths=DATA_LENGTHS, **kwargs):
    data = [{"data": np.zeros((n, 1), "float32"), "classes": np.zeros(2, "int32")} for n in lengths]
    return StaticDataset(data=data, **kwargs)


def _seq_indices(plan):
    return [[item.seq_idx for item in batch] for batch in plan]


def _plan(limits, **options):
    return plan_epoch(_static(), 1, PipelineOptions(limits=limits, **options))


def test_batch_size_max_seqs_and_drop_last():
    assert _seq_indices(_plan(BatchLimits(30))) == [[0, 1, 2], [3], [4, 5]]
    assert _seq_indices(_plan(BatchLimits(30, max_seqs=2))) == [[0, 1], [2], [3], [4, 5]]
    assert _seq_indices(_plan(BatchLimits({"classes": 6}))) == [[0, 1, 2], [3, 4, 5]]
    assert _seq_indices(_plan(BatchLimits(25), drop_last=True)) == [[0, 1], [2], [3]]


def test_items_name_corpus_index_epoch_position_and_span():
    plan = plan_epoch(_static(seq_ordering="reverse"), 1, PipelineOptions(limits=BatchLimits(30)))
    assert plan[0] == [Item(corpus_idx=5, seq_idx=0, span=None), Item(corpus_idx=4, seq_idx=1, span=None)]
    assert [[item.corpus_idx for item in batch] for batch in plan] == [[5, 4], [3], [2, 1, 0]]


def test_length_filter_drops_before_batching():
    length_filter = LengthFilter({"data": 6}, {"data": 20})
    assert _seq_indices(_plan(BatchLimits(100), length_filter=length_filter)) == [[0, 1, 2]]
    with pytest.raises(DataError, match="no batch left"):
        _plan(BatchLimits(100), length_filter=LengthFilter({"data": 100}, None))


def test_chunks_are_batched_by_their_own_lengths():
    # data 10 frames, chunks of 4 every 3 frames: (0, 4), (3, 7), (6, 10); (9, 10) is below min_chunk_size
    chunking = Chunking({"chunk_streams": {"data": {"size": 4, "step": 3, "min_chunk_size": 2}}})
    plan = plan_epoch(_static((10, 10)), 1, PipelineOptions(limits=BatchLimits(8), chunking=chunking))
    spans = [{"data": (0, 4)}, {"data": (3, 7)}, {"data": (6, 10)}]
    items = [Item(seq, seq, span) for seq in (0, 1) for span in spans]
    assert plan == [items[0:2], items[2:4], items[4:6]]  # 4 frames x 2 chunks fill batch_size 8


def test_plan_is_reproducible_and_follows_the_epoch():
    def plan(epoch):
        dataset = SyntheticSpeechDataset(num_seqs=40, seq_ordering="random")
        return plan_epoch(dataset, epoch, PipelineOptions(limits=BatchLimits(60, 8)))

    assert plan(1) == plan(1)
    assert plan(1) != plan(2)
    assert sorted(item.corpus_idx for batch in plan(2) for item in batch) == list(range(40))


def test_epoch_batches_load_what_the_plan_says():
    dataset = SyntheticSpeechDataset(num_seqs=30, seq_ordering="laplace:.10")
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=0)
    plan = plan_epoch(dataset, 1, options)
    batches = EpochBatches(dataset, 1, options)
    assert batches.plan == plan and batches.num_batches == len(plan) and batches.is_planned
    loaded = [batch["seq_tag"] for batch in batches]
    assert loaded == [[dataset.corpus_seq_tag(item.corpus_idx) for item in batch] for batch in plan]


def test_streamed_datasets_are_not_planned():
    class StreamOnly(SyntheticSpeechDataset):
        has_cheap_lengths = False

    with pytest.raises(ValueError, match="streamed"):
        plan_epoch(StreamOnly(num_seqs=3), 1, PipelineOptions(limits=BatchLimits(60)))
    batches = EpochBatches(StreamOnly(num_seqs=3), 1, PipelineOptions(limits=BatchLimits(60)))
    assert batches.num_batches is None and not batches.is_planned
