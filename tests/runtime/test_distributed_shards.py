"""Shards of an epoch for data-parallel ranks: disjoint, complete, and of equal length where training needs it.

No torch.distributed here: a rank is just ``shard_index`` / ``num_shards`` in the pipeline options.
"""

from __future__ import annotations

import pytest

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.epoch_plan import plan_epoch
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.errors import DataError

OPTIONS = PipelineOptions(limits=BatchLimits(60, 8), num_workers=0)


def _dataset(num_seqs=50, **kwargs):
    return SyntheticSpeechDataset(num_seqs=num_seqs, seq_ordering="laplace:.10", **kwargs)


def _shard_plans(num_shards, remainder, dataset_factory=_dataset):
    # a fresh dataset per rank, as every rank builds its own
    return [
        EpochBatches(dataset_factory(), 3, OPTIONS.sharded(rank, num_shards, remainder=remainder)).plan
        for rank in range(num_shards)
    ]


def _items(plans):
    return [item for plan in plans for batch in plan for item in batch]


@pytest.mark.parametrize("num_shards", [2, 3, 4, 5])
def test_drop_gives_equal_disjoint_shards_of_the_plan(num_shards):
    full = plan_epoch(_dataset(), 3, OPTIONS)
    shards = _shard_plans(num_shards, "drop")
    kept = len(full) - len(full) % num_shards
    assert [len(shard) for shard in shards] == [kept // num_shards] * num_shards
    assert sorted(map(repr, (batch for shard in shards for batch in shard))) == sorted(map(repr, full[:kept]))
    items = [(item.corpus_idx, repr(item.span)) for item in _items(shards)]
    assert len(items) == len(set(items))  # disjoint


@pytest.mark.parametrize("num_shards", [2, 3, 7])
def test_keep_covers_every_batch_once(num_shards):
    full = plan_epoch(_dataset(), 3, OPTIONS)
    shards = _shard_plans(num_shards, "keep")
    assert sorted(map(repr, (batch for shard in shards for batch in shard))) == sorted(map(repr, full))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_keep_shards_sum_to_the_single_process_result():
    def total(options):
        return sum(
            float(batch["data"].sum()) + int(batch["data:size0"]) for batch in EpochBatches(_dataset(), 1, options)
        )

    single = total(OPTIONS)
    sharded = [
        total(PipelineOptions(limits=OPTIONS.limits, num_workers=workers).sharded(rank, 3, remainder="keep"))
        for rank, workers in enumerate((0, 2, 1))
    ]
    assert sum(sharded) == pytest.approx(single, rel=1e-6)


def test_shards_work_with_process_workers():
    options = PipelineOptions(limits=OPTIONS.limits, num_workers=2, worker_type="process")
    tags = []
    for rank in range(2):
        batches = EpochBatches(_dataset(30), 1, options.sharded(rank, 2, remainder="keep"))
        tags.extend(tag for batch in batches for tag in batch["seq_tag"])
    assert sorted(tags) == sorted(f"seq-{i}" for i in range(30))


def test_one_shard_is_the_whole_epoch():
    full = EpochBatches(_dataset(), 2, OPTIONS)
    for remainder in ("drop", "keep"):
        one = EpochBatches(_dataset(), 2, OPTIONS.sharded(0, 1, remainder=remainder))
        assert one.plan == full.plan and one.num_batches == full.num_batches
        assert [b["seq_tag"] for b in one] == [b["seq_tag"] for b in full]


class _StreamOnly(SyntheticSpeechDataset):
    has_cheap_lengths = False


def _streamed_tags(num_shards, rank, num_seqs=23, workers=0):
    options = PipelineOptions(limits=OPTIONS.limits, num_workers=workers).sharded(rank, num_shards, remainder="drop")
    batches = EpochBatches(_StreamOnly(num_seqs=num_seqs, seq_ordering="random"), 1, options)
    assert batches.num_batches is None and not batches.is_planned
    return [tag for batch in batches for tag in batch["seq_tag"]]


def test_streamed_shards_deal_sequences_round_robin():
    dataset = _StreamOnly(num_seqs=23, seq_ordering="random")
    dataset.init_seq_order(1)
    epoch_tags = [dataset.get_seq_tag(i) for i in range(dataset.num_seqs)]
    shards = [_streamed_tags(3, rank, workers=rank) for rank in range(3)]
    for rank, tags in enumerate(shards):
        assert tags == epoch_tags[rank::3]
    assert sorted(sum(shards, [])) == sorted(epoch_tags)  # disjoint and complete
    assert _streamed_tags(1, 0) == epoch_tags


def test_streamed_shard_without_sequences_is_empty_not_an_error():
    assert _streamed_tags(4, 3, num_seqs=3) == []


def test_keep_shard_without_batches_is_empty_not_an_error():
    assert len(plan_epoch(_dataset(1), 1, OPTIONS)) == 1
    assert list(EpochBatches(_dataset(1), 1, OPTIONS.sharded(1, 2, remainder="keep"))) == []


def test_drop_with_fewer_batches_than_shards_is_an_error():
    with pytest.raises(DataError, match="fewer than the 2 shards"):
        EpochBatches(_dataset(1), 1, OPTIONS.sharded(1, 2, remainder="drop"))


def test_shard_options_are_checked():
    with pytest.raises(ValueError, match="shard_remainder must be given"):
        PipelineOptions(limits=OPTIONS.limits, shard_index=0, num_shards=2)
    with pytest.raises(ValueError, match="not in range"):
        OPTIONS.sharded(2, 2, remainder="keep")
    with pytest.raises(ValueError, match="one of"):
        OPTIONS.sharded(0, 2, remainder="pad")
