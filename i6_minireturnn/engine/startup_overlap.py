"""Start-up work begun early in threads, so that it overlaps with building the model: the first training epoch's
batches (planned and read ahead) and the CUDA context.

The batches are the ones the epoch would read anyway: planning is a pure function of (dataset, epoch, options) and
loading draws random numbers only from each sequence's own generator, seeded from (epoch, sequence)
(:meth:`.Dataset.seq_random_state`), never from the global ones that the engine seeds per epoch and for the model's
initialisation, so starting early changes neither order nor content. Loading code that draws from a global generator
(``np.random`` in a pre_process) breaks the rule of docs/datasets.md: its numbers depend on timing, early start or not.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, Optional, Union

import torch

from ..data.dataset import Dataset
from ..data.pipeline import EpochBatches, PipelineOptions

_NOTHING = object()


class FirstBatches:
    """An epoch's :class:`EpochBatches`, planned in a thread and read ahead up to the first batch; iterated once, by
    the training loop, which sees the same batches as from ``EpochBatches(dataset, epoch, options)``.

    `read_ahead` False only plans: DataLoader worker processes are forked, which must not happen from a thread while
    the main thread builds the model (a forked child inherits locks other threads hold)."""

    def __init__(self, dataset: Dataset, epoch: int, options: PipelineOptions, *, read_ahead: bool):
        self.dataset = dataset
        self.epoch = epoch
        self.options = options
        self._batches: Optional[EpochBatches] = None
        self._iterator: Optional[Iterator[Dict[str, Any]]] = None
        self._first: Any = _NOTHING
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._start, args=(read_ahead,), name="first-batches", daemon=True)
        self._thread.start()

    def _start(self, read_ahead: bool) -> None:
        try:
            self._batches = EpochBatches(self.dataset, self.epoch, self.options)
            if read_ahead:
                self._iterator = iter(self._batches)
                self._first = next(self._iterator, _NOTHING)
        except BaseException as exc:  # raised where the epoch reads its batches, as without the early start
            self._error = exc

    def matches(self, dataset: Dataset, epoch: int, options: PipelineOptions) -> bool:
        """Whether these are the batches the training loop asks for."""
        return dataset is self.dataset and epoch == self.epoch and options == self.options

    @property
    def num_batches(self) -> Optional[int]:
        """As :attr:`EpochBatches.num_batches` (waits for the plan)."""
        self._thread.join()
        return self._batches.num_batches if self._batches is not None else None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._iterator is None:  # planned only
            yield from self._batches
            return
        try:
            if self._first is not _NOTHING:
                yield self._first
                self._first = _NOTHING
                yield from self._iterator
        finally:
            self._iterator.close()

    def close(self) -> None:
        """Stops the read-ahead workers where the batches are not used (nothing to train, an error)."""
        self._thread.join()
        if self._iterator is not None:
            self._iterator.close()


def take_batches(
    first: Optional[FirstBatches], dataset: Dataset, epoch: int, options: PipelineOptions
) -> Union[FirstBatches, EpochBatches]:
    """The batches of `dataset` in `epoch`: `first` where they are these, else new ones (`first` is then closed)."""
    if first is not None and first.matches(dataset, epoch, options):
        return first
    if first is not None:
        first.close()
    return EpochBatches(dataset, epoch, options)


def start_cuda(device: str) -> None:
    """Creates the CUDA context of `device` in a thread (it takes seconds); the first CUDA call of the main thread
    waits for it. Errors are left to that call, which reports them where they matter."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return

    def create() -> None:
        try:
            torch.empty(1, device=device)
        except Exception:  # the main thread's first CUDA call raises it again, with context
            return

    threading.Thread(target=create, name="cuda-init", daemon=True).start()
