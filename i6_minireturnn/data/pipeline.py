"""Turns a dataset epoch into an iterable of collated batches, loaded ahead by workers.

Where the dataset knows its sequence lengths, the epoch's batches are planned up front from (seed, epoch)
and workers load planned batches by index: the result is the same for any number of workers.
Datasets without known lengths are streamed through one worker and batched on the fly (same batches).

Workers are threads by default: reading, decoding and copying arrays release the GIL, and a batch then
needs no transfer between processes (which costs more than collating it). ``data_worker_type = "process"``
uses DataLoader worker processes instead, for datasets whose loading holds the GIL.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.utils.data

from ..errors import ConfigError, DataError
from .batching import BatchLimits, group_into_batches
from .chunking import Chunking, LengthFilter, Span, chunk_lengths, cut
from .collate import collate_batch
from .dataset import Dataset

Batch = Dict[str, Any]


@dataclass
class PipelineOptions:
    """The config keys of the data pipeline."""

    limits: BatchLimits
    drop_last: bool = False
    num_workers: int = 1
    pin_memory: bool = False
    worker_type: str = "thread"
    prefetch: int = 2  # batches in flight per worker
    length_filter: Optional[LengthFilter] = None
    chunking: Optional[Chunking] = None

    @classmethod
    def from_config(cls, config: Any, *, device: str) -> PipelineOptions:
        """Reads ``batch_size``, ``max_seqs``, ``batch_drop_last``, ``num_workers_per_gpu``."""
        batch_size = config.typed_value("batch_size", 1)
        if isinstance(batch_size, str):
            batch_size = config.int("batch_size", 1)
        limits = BatchLimits(batch_size, config.int("max_seqs", -1))
        num_workers = config.int("num_workers_per_gpu", 1)
        worker_type = config.value("data_worker_type", "thread")
        if worker_type not in ("thread", "process"):
            raise ConfigError(f"data_worker_type must be 'thread' or 'process', got {worker_type!r}")
        length_filter = LengthFilter(config.typed_value("min_seq_length"), config.typed_value("max_seq_length"))
        chunking_options = config.typed_value("chunking_options")
        return cls(
            length_filter=length_filter if length_filter.active else None,
            chunking=Chunking(chunking_options) if chunking_options else None,
            limits=limits,
            drop_last=config.bool("batch_drop_last", False),
            num_workers=max(0, num_workers),
            pin_memory=device.startswith("cuda"),
            worker_type=worker_type,
        )


Item = Tuple[int, int, Optional[Span]]  # (corpus_idx, seq_idx, chunk span or None): one batch entry


def expand_sequence(
    options: PipelineOptions, corpus_idx: int, seq_idx: int, lengths: Dict[str, int], *, seed: int, where: str
) -> List[Tuple[Item, Dict[str, int]]]:
    """The batch entries of one sequence (none if filtered, several if chunked), with their lengths."""
    if options.length_filter is not None and not options.length_filter.keep(lengths):
        return []
    if options.chunking is None:
        return [((corpus_idx, seq_idx, None), lengths)]
    fraction = options.chunking.start_fraction(seed, corpus_idx)
    spans = options.chunking.spans(lengths, fraction, where=where)
    return [((corpus_idx, seq_idx, span), chunk_lengths(lengths, span)) for span in spans]


def load_items(dataset: Dataset, items: List[Item]) -> Batch:
    """Loads (each sequence once, also when several of its chunks are in the batch) and collates."""
    loaded: Dict[int, Dict[str, Any]] = {}
    seqs = []
    for corpus_idx, seq_idx, span in items:
        if corpus_idx not in loaded:
            loaded[corpus_idx] = dataset.get_corpus_seq(corpus_idx, seq_idx=seq_idx)
        seqs.append(cut(loaded[corpus_idx], span))
    return collate_batch(seqs)


def _array_lengths(seq: Dict[str, Any]) -> Dict[str, int]:
    return {k: int(v.shape[0]) for k, v in seq.items() if hasattr(v, "shape") and v.ndim}


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
    """Iterable: loads sequences in epoch order and batches them as they come (lengths unknown up front)."""

    def __init__(self, dataset: Dataset, options: PipelineOptions, seed: int):
        self.dataset = dataset
        self.options = options
        self.seed = seed

    def __iter__(self) -> Iterator[Batch]:
        chunks: Dict[int, Dict[str, Any]] = {}
        numbers = itertools.count()

        def entries() -> Iterator[Tuple[int, Dict[str, int]]]:
            for seq_idx in range(self.dataset.num_seqs):
                seq = self.dataset.get_seq(seq_idx)
                corpus_idx = self.dataset.corpus_index(seq_idx)
                where = f"sequence {seq['seq_tag']!r} of dataset {self.dataset.name!r}"
                for (_, _, span), lengths in expand_sequence(
                    self.options, corpus_idx, seq_idx, _array_lengths(seq), seed=self.seed, where=where
                ):
                    key = next(numbers)
                    chunks[key] = cut(seq, span)
                    yield key, lengths

        for batch in group_into_batches(entries(), self.options.limits, drop_last=self.options.drop_last):
            yield collate_batch([chunks.pop(i) for i in batch])


class EpochBatches:
    """The batches of one dataset epoch; ``num_batches`` is known where the batches were planned."""

    def __init__(self, dataset: Dataset, epoch: int, options: PipelineOptions):
        self.dataset = dataset
        self.epoch = epoch
        self.options = options
        dataset.init_seq_order(epoch)
        self.seed = dataset.random_seed_for_epoch(epoch)
        if dataset.num_seqs == 0:
            raise DataError(f"Dataset {dataset.name!r} has no sequences in epoch {epoch}")
        self.plan: Optional[List[List[Item]]] = None
        if dataset.knows_seq_lengths():
            entries: List[Tuple[Item, Dict[str, int]]] = []
            for seq_idx in range(dataset.num_seqs):
                corpus_idx = dataset.corpus_index(seq_idx)
                where = f"sequence {seq_idx} of dataset {dataset.name!r}"
                lengths = dataset.get_seq_length(seq_idx)
                entries.extend(expand_sequence(options, corpus_idx, seq_idx, lengths, seed=self.seed, where=where))
            batches = group_into_batches(
                ((i, lengths) for i, (_, lengths) in enumerate(entries)), options.limits, drop_last=options.drop_last
            )
            self.plan = [[entries[i][0] for i in batch] for batch in batches]
            if not self.plan:
                raise DataError(
                    f"Dataset {dataset.name!r}: no batch left in epoch {epoch} "
                    "(all sequences filtered by min/max_seq_length, or batch_drop_last?)"
                )

    @property
    def num_batches(self) -> Optional[int]:
        """Number of batches, or None for a streamed dataset."""
        return None if self.plan is None else len(self.plan)

    def __iter__(self) -> Iterator[Batch]:
        count = 0
        with contextlib.closing(self._batches()) as batches:  # stops the loader threads also on an early exit
            for batch in batches:
                count += 1
                yield batch
        if count == 0:
            raise DataError(f"Dataset {self.dataset.name!r} gave no batch in epoch {self.epoch}")

    def _batches(self) -> Iterator[Batch]:
        if self.options.num_workers == 0 or self.options.worker_type == "thread":
            return self._thread_batches()
        return self._process_batches()

    def _load(self, index: int) -> Batch:
        batch = load_items(self.dataset, self.plan[index])
        return _pinned(batch) if self.options.pin_memory else batch

    def _thread_batches(self) -> Iterator[Batch]:
        """In-process loading; with workers, threads load the next batches while the current one is used."""
        if self.plan is not None:
            num_threads = self.options.num_workers
            tasks: Iterator[Callable[[], Optional[Batch]]] = (
                functools.partial(self._load, index) for index in range(len(self.plan))
            )
        else:  # one stream: one thread reads ahead
            num_threads = min(self.options.num_workers, 1)
            stream = iter(_StreamedBatches(self.dataset, self.options, self.seed))
            pin = self.options.pin_memory

            def next_batch() -> Optional[Batch]:
                batch = next(stream, None)
                return _pinned(batch) if pin and batch is not None else batch

            tasks = iter(lambda: next_batch, None)  # endless; a None result ends the epoch
        if num_threads == 0:
            for task in tasks:
                batch = task()
                if batch is None:
                    return
                yield batch
            return
        pool = ThreadPoolExecutor(num_threads, thread_name_prefix="data")
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append(pool.submit(task))
                if len(pending) >= num_threads * self.options.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                if batch is None:
                    return
                for task in tasks:
                    pending.append(pool.submit(task))
                    break
                yield batch
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def _process_batches(self) -> Iterator[Batch]:
        """DataLoader worker processes (fork)."""
        if self.plan is not None:
            source: torch.utils.data.Dataset = _PlannedBatches(self.dataset, self.plan)
            num_workers = min(self.options.num_workers, len(self.plan))
        else:
            source = _StreamedBatches(self.dataset, self.options, self.seed)
            num_workers = min(self.options.num_workers, 1)  # one stream, one worker
        loader = torch.utils.data.DataLoader(
            source,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=self.options.pin_memory,
            multiprocessing_context=_worker_context() if num_workers else None,
        )
        yield from loader


def _pinned(batch: Batch) -> Batch:
    """Page-locked copies of the tensors, so the copy to the GPU can run asynchronously."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _worker_context() -> Optional[str]:
    # fork keeps datasets defined inside a config file usable in workers (they cannot be pickled by name)
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None
