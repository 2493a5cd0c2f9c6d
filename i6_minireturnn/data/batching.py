"""Groups sequences into batches: ``batch_size`` bounds max_len x num_seqs (per data key), ``max_seqs`` the count."""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Tuple, TypeVar, Union

from ..errors import ConfigError

BatchSize = Union[int, Dict[str, int]]
T = TypeVar("T")  # what is batched: planned items, or loaded chunks when streaming


class BatchLimits:
    """The limits of one batch; a dict ``batch_size`` limits only the keys it names."""

    def __init__(self, batch_size: BatchSize, max_seqs: int = -1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, dict)):
            raise ConfigError(f"batch_size must be an int or a dict of ints per data key, got {batch_size!r}")
        if isinstance(batch_size, dict) and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in batch_size.values()
        ):
            raise ConfigError(f"batch_size dict values must be ints, got {batch_size!r}")
        if isinstance(max_seqs, bool) or not isinstance(max_seqs, int):
            raise ConfigError(f"max_seqs must be an int, got {max_seqs!r}")
        self.batch_size = batch_size
        self.max_seqs = max_seqs

    def fits(self, max_lengths: Dict[str, int], num_seqs: int) -> bool:
        """Whether a batch of `num_seqs` sequences with these longest lengths stays within the limits."""
        if 0 < self.max_seqs < num_seqs:
            return False
        if isinstance(self.batch_size, int):
            return all(length * num_seqs <= self.batch_size for length in max_lengths.values())
        return all(max_lengths.get(key, 0) * num_seqs <= limit for key, limit in self.batch_size.items())


def group_into_batches(
    lengths: Iterable[Tuple[T, Dict[str, int]]], limits: BatchLimits, *, drop_last: bool = False
) -> Iterator[List[T]]:
    """Greedy batching in the given order: ``(item, lengths)`` pairs in, lists of items out.

    A sequence that alone exceeds ``batch_size`` forms a batch of its own (it is not dropped).
    """
    batch: List[T] = []
    max_lengths: Dict[str, int] = {}
    for item, seq_lengths in lengths:
        merged = {k: max(max_lengths.get(k, 0), v) for k, v in seq_lengths.items()}
        if batch and not limits.fits(merged, len(batch) + 1):
            yield batch
            batch, merged = [], dict(seq_lengths)
        batch.append(item)
        max_lengths = merged
    if batch and not drop_last:
        yield batch
