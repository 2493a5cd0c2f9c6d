"""Turns a dataset epoch into an iterable of collated batches, loaded ahead by workers.

Where the dataset has cheap lengths, the epoch's batches are planned up front from (seed, epoch) (see
:mod:`.epoch_plan`) and workers load planned batches by index: the result is the same for any number of workers.
Datasets without cheap lengths are streamed through one worker and batched on the fly (same batches).
Under data-parallel training each process (rank) iterates its shard of the epoch (``shard_index``, ``num_shards``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Set

from ..errors import ConfigError, DataError
from ..log import log
from . import loader_count
from .batch_memory import keep_freed_batch_memory
from .batching import BatchLimits
from .chunking import Chunking, LengthFilter
from .dataset import Dataset
from .epoch_plan import Item, plan_epoch, start_epoch, take_shard
from .read_ahead import Batch, read_ahead_planned, read_ahead_streamed

if TYPE_CHECKING:
    from ..config import Config

SHARD_REMAINDERS = ("drop", "keep")
_SIZED: Set[str] = set()  # datasets whose loader count the log has named


@dataclass
class PipelineOptions:
    """The config keys of the data pipeline, and which shard of each epoch this process reads.

    ``num_shards`` processes (ranks) that share an epoch each read shard ``shard_index``. ``shard_remainder`` says
    what happens to the batches a planned epoch has beyond a multiple of ``num_shards`` (see
    :func:`.epoch_plan.take_shard`): ``"drop"`` for training (every rank takes the same number of steps),
    ``"keep"`` for evaluation and forwarding (every batch is read once by some rank). It must be given when
    ``num_shards > 1``.
    """

    limits: BatchLimits
    drop_last: bool = False
    num_workers: int = 1
    pin_memory: bool = False
    worker_type: str = "thread"
    prefetch: int = 2  # batches in flight per worker
    length_filter: Optional[LengthFilter] = None
    chunking: Optional[Chunking] = None
    shard_index: int = 0
    num_shards: int = 1
    shard_remainder: Optional[str] = None
    # loaders of a dataset that decodes audio, where the config leaves the number to the machine (on a GPU)
    decoding_workers: Optional[int] = None
    decoding_workers_why: str = ""

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} is not in range for num_shards {self.num_shards}")
        if self.shard_remainder not in SHARD_REMAINDERS + (None,):
            raise ValueError(f"shard_remainder must be one of {SHARD_REMAINDERS}, got {self.shard_remainder!r}")
        if self.num_shards > 1 and self.shard_remainder is None:
            raise ValueError(
                "shard_remainder must be given with num_shards > 1: 'drop' (training) or 'keep' (evaluation)"
            )

    @property
    def forks_workers(self) -> bool:
        """Whether batches come from forked worker processes (``data_worker_type = "process"``)."""
        return self.num_workers > 0 and self.worker_type == "process"

    def for_dataset(self, dataset: Dataset) -> PipelineOptions:
        """These options for `dataset`: where it decodes audio and the number of loaders is the machine's to choose,
        that number (:mod:`.loader_count`), said once per dataset in the log."""
        if self.decoding_workers is None or not dataset.decodes_audio or self.decoding_workers == self.num_workers:
            return self
        if dataset.name not in _SIZED:
            _SIZED.add(dataset.name)
            print(
                f"Data loaders for dataset {dataset.name!r}: {self.decoding_workers} threads (it decodes audio; "
                f"{self.decoding_workers_why}; num_workers_per_gpu sets the number)",
                file=log.v3,
            )
        return dataclasses.replace(self, num_workers=self.decoding_workers)

    def sharded(self, shard_index: int, num_shards: int, *, remainder: str) -> PipelineOptions:
        """These options for shard `shard_index` of `num_shards` (a copy; `remainder`: "drop" or "keep")."""
        return dataclasses.replace(self, shard_index=shard_index, num_shards=num_shards, shard_remainder=remainder)

    @classmethod
    def from_config(cls, config: Config, *, device: str) -> PipelineOptions:
        """Reads ``batch_size``, ``max_seqs``, ``batch_drop_last``, ``num_workers_per_gpu``, ``data_worker_type``,
        ``min_seq_length``, ``max_seq_length``, ``chunking_options``; the shard fields keep their defaults."""
        batch_size = config.typed_value("batch_size")
        if isinstance(batch_size, str):
            batch_size = config.int("batch_size")
        limits = BatchLimits(batch_size, config.int("max_seqs"))
        num_workers = config.int("num_workers_per_gpu")
        decoding_workers, decoding_why = None, ""
        if not config.has("num_workers_per_gpu") and device.startswith("cuda"):
            decoding_workers, decoding_why = loader_count.decoding_loaders()
        worker_type = config.value("data_worker_type")
        if worker_type not in ("thread", "process"):
            raise ConfigError(f"data_worker_type must be 'thread' or 'process', got {worker_type!r}")
        length_filter = LengthFilter(config.typed_value("min_seq_length"), config.typed_value("max_seq_length"))
        chunking_options = config.typed_value("chunking_options")
        return cls(
            length_filter=length_filter if length_filter.active else None,
            chunking=Chunking(chunking_options) if chunking_options else None,
            limits=limits,
            drop_last=config.bool("batch_drop_last"),
            num_workers=max(0, num_workers),
            pin_memory=device.startswith("cuda"),
            worker_type=worker_type,
            decoding_workers=decoding_workers,
            decoding_workers_why=decoding_why,
        )


class EpochBatches:
    """The batches of one dataset epoch that this process reads (its shard; all of them with one shard).

    ``num_batches`` is the shard's number of batches where the epoch was planned (the dataset has cheap lengths),
    None where it is streamed: then shards may take different numbers of steps, and only iterating tells the end.
    """

    def __init__(self, dataset: Dataset, epoch: int, options: PipelineOptions):
        self.dataset = dataset
        self.epoch = epoch
        self.options = options = options.for_dataset(dataset)
        self.plan: Optional[List[List[Item]]] = None  # the shard's batches, where planned
        if dataset.has_cheap_lengths:
            self.plan = take_shard(plan_epoch(dataset, epoch, options), options)
            self.seed = dataset.random_seed_for_epoch(epoch)
        else:
            self.seed = start_epoch(dataset, epoch)

    @property
    def is_planned(self) -> bool:
        """Whether the batches (and so the number of steps) are known before iterating."""
        return self.plan is not None

    @property
    def num_batches(self) -> Optional[int]:
        """Number of batches of this shard, or None for a streamed epoch."""
        return None if self.plan is None else len(self.plan)

    def __iter__(self) -> Iterator[Batch]:
        keep_freed_batch_memory()
        count = 0
        with contextlib.closing(self._read_ahead()) as batches:  # stops the loader threads also on an early exit
            for batch in batches:
                count += 1
                yield batch
        # a shard may be empty when the epoch has fewer batches (sequences, when streamed) than shards
        if count == 0 and self.options.num_shards == 1:
            raise DataError(f"Dataset {self.dataset.name!r} gave no batch in epoch {self.epoch}")

    def _read_ahead(self) -> Iterator[Batch]:
        if self.plan is not None:
            return read_ahead_planned(self.dataset, self.plan, self.options)
        return read_ahead_streamed(self.dataset, self.options, self.seed)
