"""Epoch-wise sequence orders (RETURNN's ``seq_ordering`` values): a pure function of (method, epoch, seed)."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError

SEQ_ORDERINGS = (
    "default",
    "reverse",
    "random",
    "sorted",
    "sorted_reverse",
    "laplace",
    "sort_bin_shuffle",
    "sort_bin_shuffle_x2",
)


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
    if name in ("sort_bin_shuffle", "sort_bin_shuffle_x2"):
        lengths = _lengths(num_seqs, get_seq_len, method)
        return _sort_bin_shuffle_order(num_seqs, arg, seed, lengths, shuffle_within=name.endswith("_x2"), method=method)
    if name == "interleave":
        raise ConfigError(
            f"seq_ordering {method!r} is not a RETURNN seq ordering for single datasets: RETURNN knows it only on "
            "CombinedDataset (mixes the sub-datasets' sequences, each in its own order); use it there"
        )
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


def _sort_bin_shuffle_order(
    num_seqs: int, arg: str, seed: int, lengths: np.ndarray, *, shuffle_within: bool, method: str
) -> List[int]:
    """RETURNN's ``sort_bin_shuffle[_x2][:BINS]``: all sequences sorted by length (equal lengths in random order),
    cut into bins of neighbouring lengths, the bins visited in random order; ``_x2`` also shuffles inside each bin.

    ``BINS`` is a number of bins or ``.N`` for about N sequences per bin (at least 2 bins); default 2 bins.
    One RandomState(seed) draws, in this order, the tie-breaking permutation, the bin order and the in-bin shuffles,
    as RETURNN does, so the order equals RETURNN's for the same seed.
    """
    bins_spec, _, rest = arg.partition(":")
    if rest not in ("", "1"):
        raise ConfigError(
            f"seq_ordering {method!r}: keeping one order for several epochs (the ':{rest}' part) is not supported"
        )
    try:
        if not bins_spec:
            num_bins = 2
        elif bins_spec.startswith("."):  # ".N": about N sequences per bin
            num_bins = max(num_seqs // int(bins_spec[1:]), 2)
        else:
            num_bins = int(bins_spec)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"seq_ordering {method!r}: expected e.g. 'sort_bin_shuffle:.32' or ':8'") from None
    if num_bins < 1:
        raise ConfigError(f"seq_ordering {method!r}: the number of bins must be positive")
    rng = np.random.RandomState(seed % 2**32)
    shuffled = rng.permutation(num_seqs)
    by_length = shuffled[np.argsort(lengths[shuffled], kind="stable")].tolist()
    # bin b holds by_length[b * n // num_bins : (b + 1) * n // num_bins] (the last one up to the end)
    bounds = [b * num_seqs // num_bins for b in range(num_bins)] + [num_seqs]
    order: List[int] = []
    for b in rng.permutation(num_bins):
        members = by_length[bounds[b] : bounds[b + 1]]
        if shuffle_within:
            rng.shuffle(members)
        order.extend(members)
    return order


def interleave_order(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """RETURNN's CombinedDataset ``seq_ordering="interleave"``: (part, position in the part's epoch order) pairs.

    Each step takes the next sequence of the part that has done the smallest fraction of its epoch (counting the
    sequence about to be taken: (used + 1) / size), the lower part index on ties; parts keep their own order.
    """
    used = [0] * len(sizes)
    order: List[Tuple[int, int]] = []
    for _ in range(sum(sizes)):
        part = min((j for j in range(len(sizes)) if used[j] < sizes[j]), key=lambda j: ((used[j] + 1) / sizes[j], j))
        order.append((part, used[part]))
        used[part] += 1
    return order
