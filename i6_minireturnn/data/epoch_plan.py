"""Planning an epoch: which sequences (or chunks of them) form which batch, and which batches are this process's.

The plan depends only on the dataset's configuration, the epoch and the pipeline options, never on the number of
loader workers or on timing: every worker and every rank computes the same plan, and a rank takes its share of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional

from ..errors import DataError
from .batching import group_into_batches
from .chunking import Span, chunk_lengths
from .dataset import Dataset

if TYPE_CHECKING:
    from .pipeline import PipelineOptions


class Item(NamedTuple):
    """One batch entry: a sequence, or one chunk of it."""

    corpus_idx: int
    seq_idx: int  # position in the epoch
    span: Optional[Span]  # the chunk; None for the whole sequence


class SizedItem(NamedTuple):
    """A batch entry with the lengths the batch limits look at."""

    item: Item
    lengths: Dict[str, int]


def start_epoch(dataset: Dataset, epoch: int) -> int:
    """Fixes the dataset's sequence order for `epoch`; returns the epoch's seed (chunk starts are drawn from it)."""
    dataset.init_seq_order(epoch)
    if dataset.num_seqs == 0:
        raise DataError(f"Dataset {dataset.name!r} has no sequences in epoch {epoch}")
    return dataset.random_seed_for_epoch(epoch)


def expand_sequence(
    options: PipelineOptions, corpus_idx: int, seq_idx: int, lengths: Dict[str, int], *, seed: int, where: str
) -> List[SizedItem]:
    """The batch entries of one sequence: none if the length filter drops it, one per chunk if chunked."""
    if options.length_filter is not None and not options.length_filter.keep(lengths):
        return []
    if options.chunking is None:
        return [SizedItem(Item(corpus_idx, seq_idx, None), lengths)]
    fraction = options.chunking.start_fraction(seed, corpus_idx)
    spans = options.chunking.spans(lengths, fraction, where=where)
    return [SizedItem(Item(corpus_idx, seq_idx, span), chunk_lengths(lengths, span)) for span in spans]


def plan_epoch(dataset: Dataset, epoch: int, options: PipelineOptions) -> List[List[Item]]:
    """All batches of `epoch` (every shard's), from the lengths the dataset knows without loading data.

    Sets the dataset's epoch order. Applies the length filter, chunking, ``batch_size``, ``max_seqs`` and
    ``drop_last`` of `options`; ignores its shard and worker fields.
    """
    if not dataset.has_cheap_lengths:
        raise ValueError(f"Dataset {dataset.name!r} has no cheap lengths: its epochs are streamed, not planned")
    seed = start_epoch(dataset, epoch)
    entries: List[SizedItem] = []
    for seq_idx in range(dataset.num_seqs):
        where = f"sequence {seq_idx} of dataset {dataset.name!r}"
        lengths = dataset.get_seq_length(seq_idx)
        entries.extend(
            expand_sequence(options, dataset.corpus_index(seq_idx), seq_idx, lengths, seed=seed, where=where)
        )
    plan = list(group_into_batches(entries, options.limits, drop_last=options.drop_last))
    if not plan:
        raise DataError(
            f"Dataset {dataset.name!r}: no batch left in epoch {epoch} "
            "(all sequences filtered by min/max_seq_length, or batch_drop_last?)"
        )
    return plan


def take_shard(plan: List[List[Item]], options: PipelineOptions) -> List[List[Item]]:
    """This shard's batches of a full plan: every ``num_shards``-th batch, starting at ``shard_index``.

    ``shard_remainder="drop"`` (training) first leaves out the last ``len(plan) % num_shards`` batches, so that every
    shard takes the same number of steps (data-parallel training waits for all ranks at every step). With an order
    that changes between epochs these sequences are seen in other epochs; with a fixed order (``default``,
    ``sorted``) the same ones are left out every epoch. ``shard_remainder="keep"`` (evaluation, forwarding) leaves
    out nothing: shards differ by at most one batch, and the shards' results together equal one process's.
    """
    num_shards = options.num_shards
    if num_shards == 1:
        return plan
    if options.shard_remainder == "drop":
        if len(plan) < num_shards:
            raise DataError(
                f"The epoch has {len(plan)} batch(es), fewer than the {num_shards} shards (ranks) that train on it; "
                "use a smaller batch_size or fewer processes"
            )
        plan = plan[: len(plan) - len(plan) % num_shards]
    return plan[options.shard_index :: num_shards]


def streamed_positions(num_seqs: int, options: PipelineOptions) -> range:
    """The epoch positions a shard reads when the epoch is streamed (lengths unknown, so batches cannot be
    planned): sequence i goes to shard ``i % num_shards``. Step counts then may differ between shards."""
    return range(options.shard_index, num_seqs, options.num_shards)
