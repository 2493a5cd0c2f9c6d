"""Reading ahead: loads and collates an epoch's batches while the previous ones are in use.

Workers are threads by default: reading, decoding and copying arrays release the GIL, and a batch then needs no
transfer between processes (which costs more than collating it). ``data_worker_type = "process"`` uses DataLoader
worker processes instead, for datasets whose loading holds the GIL.
"""

from __future__ import annotations

import collections
import multiprocessing
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, List, Optional, Tuple

import torch
import torch.utils.data

from .batching import group_into_batches
from .chunking import cut
from .collate import collate_batch
from .dataset import Dataset
from .epoch_plan import Item, expand_sequence, streamed_positions

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

Batch = Dict[str, Any]


def load_items(dataset: Dataset, items: List[Item]) -> Batch:
    """Loads the sequences of one planned batch (each once, also when several of its chunks are in it) and
    collates them."""
    loaded: Dict[int, Dict[str, Any]] = {}
    seqs = []
    for item in items:
        if item.corpus_idx not in loaded:
            loaded[item.corpus_idx] = dataset.get_corpus_seq(item.corpus_idx, seq_idx=item.seq_idx)
        seqs.append(cut(loaded[item.corpus_idx], item.span))
    return collate_batch(seqs)


def stream_batches(dataset: Dataset, options: PipelineOptions, seed: int) -> Iterator[Batch]:
    """The batches of a dataset without cheap lengths: loads the shard's sequences in epoch order and batches them
    as they come (the same batches a plan would give, had the lengths been known)."""
    chunks = _streamed_chunks(dataset, options, seed)
    for batch in group_into_batches(chunks, options.limits, drop_last=options.drop_last):
        yield collate_batch(batch)


def _streamed_chunks(
    dataset: Dataset, options: PipelineOptions, seed: int
) -> Iterator[Tuple[Dict[str, Any], Dict[str, int]]]:
    """(loaded sequence or chunk, its lengths) in epoch order, for the shard's positions."""
    for seq_idx in streamed_positions(dataset.num_seqs, options):
        seq = dataset.get_seq(seq_idx)
        lengths = {k: int(v.shape[0]) for k, v in seq.items() if hasattr(v, "shape") and v.ndim}
        where = f"sequence {seq['seq_tag']!r} of dataset {dataset.name!r}"
        for item, item_lengths in expand_sequence(
            options, dataset.corpus_index(seq_idx), seq_idx, lengths, seed=seed, where=where
        ):
            yield cut(seq, item.span), item_lengths


def read_ahead_planned(dataset: Dataset, plan: List[List[Item]], options: PipelineOptions) -> Iterator[Batch]:
    """The batches of a plan, in plan order; workers load the next ones while the current one is in use."""
    if options.num_workers > 0 and options.worker_type == "process":
        yield from _loader_processes(_PlannedBatches(dataset, plan), min(options.num_workers, len(plan)), options)
        return
    pin = options.pin_memory
    if options.num_workers == 0:
        for items in plan:
            yield _load_planned(dataset, items, pin)
        return
    pool = ThreadPoolExecutor(options.num_workers, thread_name_prefix="data")
    in_flight = options.num_workers * options.prefetch
    pending: Deque[Future] = collections.deque()
    try:
        for items in plan:
            pending.append(pool.submit(_load_planned, dataset, items, pin))
            if len(pending) > in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # also on an early exit: no loader keeps running


def read_ahead_streamed(dataset: Dataset, options: PipelineOptions, seed: int) -> Iterator[Batch]:
    """The batches of a streamed epoch (see :func:`stream_batches`); one worker reads ahead (one stream)."""
    if options.num_workers > 0 and options.worker_type == "process":
        yield from _loader_processes(_StreamedBatches(dataset, options, seed), 1, options)
        return
    batches = stream_batches(dataset, options, seed)
    pin = options.pin_memory
    if options.num_workers == 0:
        for batch in batches:
            yield _pinned(batch) if pin else batch
        return
    # one thread: it runs the submitted steps of the stream one after another, in order
    pool = ThreadPoolExecutor(1, thread_name_prefix="data")
    pending: Deque[Future] = collections.deque(
        pool.submit(_next_batch, batches, pin) for _ in range(max(1, options.prefetch))
    )
    try:
        while True:
            batch = pending.popleft().result()
            if batch is None:
                return
            pending.append(pool.submit(_next_batch, batches, pin))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        batches.close()


def _load_planned(dataset: Dataset, items: List[Item], pin: bool) -> Batch:
    batch = load_items(dataset, items)
    return _pinned(batch) if pin else batch


def _next_batch(batches: Iterator[Batch], pin: bool) -> Optional[Batch]:
    """The stream's next batch, None at its end."""
    batch = next(batches, None)
    return _pinned(batch) if pin and batch is not None else batch


def _pinned(batch: Batch) -> Batch:
    """Page-locked copies of the tensors, so the copy to the GPU can run asynchronously."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _PlannedBatches(torch.utils.data.Dataset):
    """Map-style: batch index -> collated batch, for DataLoader worker processes."""

    def __init__(self, dataset: Dataset, plan: List[List[Item]]):
        self.dataset = dataset
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Batch:
        return load_items(self.dataset, self.plan[index])


class _StreamedBatches(torch.utils.data.IterableDataset):
    """Iterable: :func:`stream_batches` in a DataLoader worker process."""

    def __init__(self, dataset: Dataset, options: PipelineOptions, seed: int):
        self.dataset = dataset
        self.options = options
        self.seed = seed

    def __iter__(self) -> Iterator[Batch]:
        return stream_batches(self.dataset, self.options, self.seed)


def _loader_processes(source: torch.utils.data.Dataset, num_workers: int, options: PipelineOptions) -> Iterator[Batch]:
    """A DataLoader over `source` with `num_workers` worker processes (forked)."""
    loader = torch.utils.data.DataLoader(
        source,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=options.pin_memory,
        multiprocessing_context=_worker_context() if num_workers else None,
    )
    yield from loader


def _worker_context() -> Optional[str]:
    # fork keeps datasets defined inside a config file usable in workers (they cannot be pickled by name)
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None
