"""Epoch-wise sequence orders (RETURNN's ``seq_ordering`` values): a pure function of (method, epoch, seed)."""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

from ..errors import ConfigError

SEQ_ORDERINGS = ("default", "reverse", "random", "sorted", "sorted_reverse", "laplace")


def compute_seq_order(
    num_seqs: int, method: str, *, seed: int, get_seq_len: Optional[Callable[[int], int]] = None
) -> List[int]:
    """Returns the corpus indices in the order given by `method` (e.g. ``random``, ``laplace:.100``)."""
    name, _, arg = method.partition(":")
    if name == "default":
        return list(range(num_seqs))
    if name == "reverse":
        return list(range(num_seqs - 1, -1, -1))
    if name == "random":
        rng = np.random.RandomState((int(arg) if arg else seed) % 2**32)
        return rng.permutation(num_seqs).tolist()
    if name in ("sorted", "sorted_reverse"):
        lengths = _lengths(num_seqs, get_seq_len, method)
        order = np.argsort(lengths, kind="stable")
        return (order[::-1] if name == "sorted_reverse" else order).tolist()
    if name == "laplace":
        return _laplace_order(num_seqs, arg, seed, _lengths(num_seqs, get_seq_len, method))
    raise ConfigError(
        f"Unknown seq_ordering {method!r}; valid: {', '.join(SEQ_ORDERINGS)} (e.g. 'random:42', 'laplace:.100')"
    )


def _lengths(num_seqs: int, get_seq_len: Optional[Callable[[int], int]], method: str) -> np.ndarray:
    if get_seq_len is None:
        raise ConfigError(f"seq_ordering {method!r} needs sequence lengths, which this dataset does not know")
    return np.array([get_seq_len(i) for i in range(num_seqs)], dtype=np.int64)


def _laplace_order(num_seqs: int, arg: str, seed: int, lengths: np.ndarray) -> List[int]:
    """Shuffle, cut into buckets, sort each bucket by length, alternating up and down (few padding frames)."""
    if not arg:
        num_buckets = 2
    elif arg.startswith("."):  # ".N": about N sequences per bucket
        num_buckets = max(num_seqs // max(int(arg[1:]), 1), 2)
    else:
        num_buckets = int(arg)
    num_buckets = max(1, min(num_buckets, max(num_seqs, 1)))
    shuffled = np.random.RandomState(seed % 2**32).permutation(num_seqs)
    order: List[int] = []
    for i, bucket in enumerate(np.array_split(shuffled, num_buckets)):
        by_length = bucket[np.argsort(lengths[bucket], kind="stable")]
        order.extend((by_length[::-1] if i % 2 else by_length).tolist())
    return order
