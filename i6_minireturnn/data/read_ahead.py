"""Reading ahead: loads and collates an epoch's batches while the previous ones are in use.

Workers are threads by default: reading, decoding and copying arrays release the GIL, and a batch then needs no
transfer between processes (which costs more than collating it). ``data_worker_type = "process"`` uses DataLoader
worker processes instead, for datasets whose loading holds the GIL.

Where batches go to a GPU (``pin_memory``), threads collate them straight into page-locked memory (no second copy of
each batch); with worker processes the DataLoader pins them. The loop copies them to the device. Loader threads
keep out of a paced training loop's way (:mod:`..loop_tuning`).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.utils.data

from ..errors import UserError
from ..loop_tuning import LOOP_TUNING
from .batching import group_into_batches
from .chunking import cut
from .collate import Batch, collate_batch
from .dataset import Dataset
from .epoch_plan import Item, expand_sequence, streamed_positions

if TYPE_CHECKING:
    from .pipeline import PipelineOptions


def load_items(dataset: Dataset, items: List[Item], pin_memory: bool = False) -> Batch:
    """Loads the sequences of one planned batch (each once, also when several of its chunks are in it) and
    collates them (into page-locked memory with `pin_memory`). A paced loader thread may wait between the
    sequences (:meth:`.LoopTuning.between_sequences`).

    Datasets that can (``reads_batches``, e.g. HDF) read whole sequences straight into the batch tensors
    (``read_batch``).
    """
    if getattr(dataset, "reads_batches", False) and all(item.span is None for item in items):
        LOOP_TUNING.between_sequences()
        corpus_indices = [item.corpus_idx for item in items]
        return dataset.read_batch(corpus_indices, [item.seq_idx for item in items], pin_memory=pin_memory)
    loaded: Dict[int, Dict[str, Any]] = {}
    seqs = []
    for item in items:
        if item.corpus_idx not in loaded:
            LOOP_TUNING.between_sequences()
            loaded[item.corpus_idx] = dataset.get_corpus_seq(item.corpus_idx, seq_idx=item.seq_idx)
        seqs.append(cut(loaded[item.corpus_idx], item.span))
    return collate_batch(seqs, dataset_name=dataset.name, pin_memory=pin_memory)


def stream_batches(dataset: Dataset, options: PipelineOptions, seed: int, pin_memory: bool = False) -> Iterator[Batch]:
    """The batches of a dataset without cheap lengths: loads the shard's sequences in epoch order and batches them
    as they come (the same batches a plan would give, had the lengths been known); collated into page-locked memory
    with `pin_memory`; paced as :func:`load_items`."""
    chunks = _streamed_chunks(dataset, options, seed)
    for batch in group_into_batches(chunks, options.limits, drop_last=options.drop_last):
        yield collate_batch(batch, dataset_name=dataset.name, pin_memory=pin_memory)


def _streamed_chunks(
    dataset: Dataset, options: PipelineOptions, seed: int
) -> Iterator[Tuple[Dict[str, Any], Dict[str, int]]]:
    """(loaded sequence or chunk, its lengths) in epoch order, for the shard's positions."""
    for seq_idx in streamed_positions(dataset.num_seqs, options):
        LOOP_TUNING.between_sequences()
        seq = dataset.get_seq(seq_idx)
        lengths = {k: int(v.shape[0]) for k, v in seq.items() if hasattr(v, "shape") and v.ndim}
        where = f"sequence {seq['seq_tag']!r} of dataset {dataset.name!r}"
        for item, item_lengths in expand_sequence(
            options, dataset.corpus_index(seq_idx), seq_idx, lengths, seed=seed, where=where
        ):
            yield cut(seq, item.span), item_lengths


def read_ahead_planned(dataset: Dataset, plan: List[List[Item]], options: PipelineOptions) -> Iterator[Batch]:
    """The batches of a plan, in plan order; workers load the next ones while the current one is in use."""
    if options.forks_workers:
        yield from _loader_processes(_PlannedBatches(dataset, plan), min(options.num_workers, len(plan)), options)
        return
    pin = options.pin_memory
    if options.num_workers == 0:
        for items in plan:
            yield load_items(dataset, items, pin)
        return
    pool = ThreadPoolExecutor(options.num_workers, thread_name_prefix="data")
    in_flight = options.num_workers * options.prefetch
    loads = _LoadQueue(pool)

    def load(index: int, items: List[Item]) -> Batch:
        # ahead: after the batch the loop needs next
        with LOOP_TUNING.loading(lambda: index > loads.taken, loaders=options.num_workers):
            return load_items(dataset, items, pin)

    try:
        for index, items in enumerate(plan):
            loads.add(load, index, items)
            if len(loads) > in_flight:
                yield loads.take()
        while len(loads):
            yield loads.take()
    finally:
        loads.close()
        pool.shutdown(wait=True, cancel_futures=True)  # also on an early exit: no loader keeps running


class _LoadQueue:
    """The loads of batches ahead, oldest first, handed to the loader pool in order. Used by the loop's thread."""

    def __init__(self, pool: ThreadPoolExecutor):
        self._pool = pool
        self._loads: Deque[List[Any]] = collections.deque()  # [future or None, function, args]; started ones first
        self._closed = False
        self.taken = 0  # loads the loop has taken: it needs load `taken` (counted from 0) next

    def __len__(self) -> int:
        return len(self._loads)

    def add(self, func: Callable[..., Optional[Batch]], *args: Any) -> None:
        """Queues the load `func(*args)`."""
        self._loads.append([None, func, args])
        self._start(len(self._loads))

    def take(self) -> Optional[Batch]:
        """The oldest load's batch (waiting for it is a window for paced loaders: the loop needs no Python then); the
        next one, needed next now, starts at once, and where it is not ready its loader stops waiting for a window.
        (The oldest load has always started: when it was queued as the only one, or when the one before was taken.)"""
        future = self._loads.popleft()[0]
        if future.done():
            batch = future.result()
        else:
            with LOOP_TUNING.window():
                batch = future.result()
        self.taken += 1
        if self._loads:
            self._start(1)
            if not self._loads[0][0].done():
                LOOP_TUNING.next_batch_pending()
        return batch

    def close(self) -> None:
        """No more loads start (the pool is shut down next)."""
        self._closed = True

    def _start(self, count: int) -> None:
        for load in itertools.islice(self._loads, count):
            if load[0] is None and not self._closed:
                load[0] = self._pool.submit(load[1], *load[2])


def read_ahead_streamed(dataset: Dataset, options: PipelineOptions, seed: int) -> Iterator[Batch]:
    """The batches of a streamed epoch (see :func:`stream_batches`); one worker reads ahead (one stream)."""
    if options.forks_workers:
        yield from _loader_processes(_StreamedBatches(dataset, options, seed), 1, options)
        return
    produced = 0  # batches the stream has given
    loads: Optional[_LoadQueue] = None

    def ahead() -> bool:  # the batch being collected is after the one the loop needs next
        return loads is not None and produced > loads.taken

    batches = stream_batches(dataset, options, seed, pin_memory=options.pin_memory)
    if options.num_workers == 0:
        yield from batches
        return

    def next_batch() -> Optional[Batch]:
        nonlocal produced
        with LOOP_TUNING.loading(ahead, loaders=1):
            batch = next(batches, None)
        produced += 1
        return batch

    # one thread: it runs the submitted steps of the stream one after another, in the order they were queued
    pool = ThreadPoolExecutor(1, thread_name_prefix="data")
    loads = _LoadQueue(pool)
    for _ in range(max(1, options.prefetch)):
        loads.add(next_batch)
    try:
        while True:
            batch = loads.take()
            if batch is None:
                return
            loads.add(next_batch)
            yield batch
    finally:
        loads.close()
        pool.shutdown(wait=True, cancel_futures=True)
        batches.close()


class _PlannedBatches(torch.utils.data.Dataset):
    """Map-style: batch index -> collated batch, for DataLoader worker processes."""

    def __init__(self, dataset: Dataset, plan: List[List[Item]]):
        self.dataset = dataset
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Union[Batch, _WorkerUserError]:
        try:
            return load_items(self.dataset, self.plan[index])
        except UserError as error:
            return _WorkerUserError(error)


class _StreamedBatches(torch.utils.data.IterableDataset):
    """Iterable: :func:`stream_batches` in a DataLoader worker process."""

    def __init__(self, dataset: Dataset, options: PipelineOptions, seed: int):
        self.dataset = dataset
        self.options = options
        self.seed = seed

    def __iter__(self) -> Iterator[Union[Batch, _WorkerUserError]]:
        try:
            yield from stream_batches(self.dataset, self.options, self.seed)
        except UserError as error:
            yield _WorkerUserError(error)


class _WorkerUserError:
    """A user error (a bad sequence, a missing file) in a worker process, sent to the main process as a result: an
    exception raised there would come back as torch's "Caught DataError in DataLoader worker process" with the
    worker's traceback as its message, instead of the one line that names the cause."""

    def __init__(self, error: UserError):
        self.error = error


def _loader_processes(source: torch.utils.data.Dataset, num_workers: int, options: PipelineOptions) -> Iterator[Batch]:
    """A DataLoader over `source` with `num_workers` worker processes (forked)."""
    loader = torch.utils.data.DataLoader(
        source,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=options.pin_memory,
        generator=_base_seed_generator(source.dataset),  # not torch's global one: see there
        multiprocessing_context=_worker_context() if num_workers else None,
    )
    for batch in loader:
        if isinstance(batch, _WorkerUserError):
            raise batch.error
        yield batch


def _base_seed_generator(dataset: Dataset) -> torch.Generator:
    """The generator a DataLoader draws its workers' base seed from when it starts iterating, seeded from the epoch.
    Without one it draws from torch's global generator in the training loop's process: every epoch read by worker
    processes would move the loop's random numbers (dropout, SpecAugment) by one draw, unlike loader threads."""
    generator = torch.Generator()
    generator.manual_seed(dataset.random_seed_for_epoch(dataset.epoch or 1) % 2**63)
    return generator


def _worker_context() -> Optional[str]:
    # fork keeps datasets defined inside a config file usable in workers (they cannot be pickled by name)
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None
