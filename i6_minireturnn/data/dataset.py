"""Dataset base: epoch-wise sequence order, data keys (dim / shape / dtype / sparse), per-sequence numpy dicts."""

from __future__ import annotations

import bisect
import difflib
import functools
import gzip
import inspect
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, DataError
from .seq_order import compute_seq_order

_SEQ_RANDOM_STREAM = 0x5E0  # keeps seq_random_state's numbers apart from other draws keyed by (seed, corpus index)


@dataclass(frozen=True)
class DataKey:
    """What one data stream holds: ``shape`` excludes the time axis ((None,) for a sparse label stream)."""

    name: str
    dim: Optional[int]
    dtype: str
    sparse: bool = False
    shape: Tuple[Optional[int], ...] = ()

    @property
    def ndim(self) -> int:
        """Number of axes of one sequence, time axis included."""
        return 1 + len(self.shape)

    @functools.cached_property  # looked at for every sequence loaded; the field values never change (frozen)
    def num_classes(self) -> Optional[int]:
        """The number of classes the values of a sparse integer stream must stay below, or None where no size is
        declared. A dim of 1 counts as none: writers store 1 for a sparse stream whose size they were not given
        (RETURNN's too), and a one-class stream has nothing to train."""
        if not self.sparse or self.dim is None or self.dim <= 1:
            return None
        try:
            integer = np.dtype(self.dtype).kind in "iu"
        except TypeError:  # a name numpy does not know ("string", ...): no label ids
            return None
        return self.dim if integer else None

    def bad_label(self, values: np.ndarray) -> Optional[int]:
        """A value of `values` outside ``0 .. num_classes - 1`` (the largest one, else the smallest), or None.

        Cheap enough for every sequence as it is loaded: one reduction over the values, no copy (signed values are
        looked at as unsigned, where a negative one is beyond every class); the bad value is looked for only then."""
        limit = self.num_classes
        if limit is None or not values.size:
            return None
        unsigned, negative_from = _unsigned_view(values.dtype)
        if unsigned is not None:  # a negative value reads as `negative_from` or more
            if np.maximum.reduce(values.view(unsigned), axis=None) < min(limit, negative_from):
                return None
        elif np.maximum.reduce(values, axis=None) < limit and np.minimum.reduce(values, axis=None) >= 0:
            return None
        largest = values.max()
        return int(largest) if largest >= limit else int(values.min())


@functools.cache
def _unsigned_view(dtype: np.dtype) -> Tuple[Optional[np.dtype], int]:
    """For a signed integer dtype: the unsigned dtype of its size and byte order, and the smallest unsigned value a
    negative one reads as (2 ** (bits - 1)); (None, 0) for other dtypes."""
    if dtype.kind != "i":
        return None, 0
    return np.dtype(dtype.str.replace("i", "u")), 2 ** (8 * dtype.itemsize - 1)


class Dataset:
    """Base of all datasets.

    Subclasses provide the corpus through the corpus protocol (``corpus_size``, ``load_corpus_seq``,
    ``corpus_seq_tag`` and, where known cheaply, ``corpus_seq_lengths`` with ``has_cheap_lengths = True``) and their
    ``data_keys``; this class turns it into the epoch's sequence list. Datasets over datasets (MetaDataset,
    ConcatDataset, ...) call the same protocol on their parts.
    ``seq_idx`` below always means the position in the current epoch, ``corpus_idx`` the position in the corpus.

    Subclasses written against the earlier hook names ``_corpus_size``, ``_load_seq``, ``_corpus_seq_tag`` and
    ``_corpus_seq_lengths`` keep working: the old names are aliases of the new ones, in every class (a class that
    defines one name gets the other; defining ``_corpus_seq_lengths`` declares cheap lengths, as overriding it did
    before).
    """

    has_cheap_lengths: bool = False
    """Whether ``corpus_seq_lengths`` answers without loading data (then the pipeline plans batches up front);
    datasets over other datasets set it per instance, from their parts."""

    decodes_audio: bool = False
    """Whether loading decodes audio (then, on a GPU, the pipeline gives the dataset more loaders by default:
    :mod:`.loader_count`); datasets over other datasets set it per instance, from their parts."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        for old, new in _EARLIER_HOOK_NAMES.items():
            if old in own and new not in own:
                setattr(cls, new, own[old])
            elif new in own and old not in own:
                setattr(cls, old, own[new])
        if "_corpus_seq_lengths" in own and "has_cheap_lengths" not in own:
            cls.has_cheap_lengths = True

    def __init__(
        self,
        *,
        name: Optional[str] = None,
        seq_ordering: str = "default",
        partition_epoch: int = 1,
        random_seed_offset: int = 0,
        fixed_random_seed: Optional[int] = None,
        seq_list_filter_file: Optional[str] = None,
        epoch_wise_filter: Optional[Dict[Tuple[int, int], Dict[str, Any]]] = None,
    ):
        self.name = name or type(self).__name__
        self.seq_ordering = seq_ordering
        if not isinstance(partition_epoch, int) or partition_epoch < 1:
            raise ConfigError(f"Dataset {self.name}: partition_epoch must be a positive int, got {partition_epoch!r}")
        self.partition_epoch = partition_epoch
        self.random_seed_offset = random_seed_offset
        self.fixed_random_seed = fixed_random_seed
        self.seq_list_filter_file = seq_list_filter_file
        self.epoch_wise_filter = _check_epoch_wise_filter(epoch_wise_filter or {}, self.name)
        self._allowed_tags: Optional[set] = None
        self.data_keys: Dict[str, DataKey] = {}
        self.epoch: Optional[int] = None
        self._epoch_order: Optional[List[int]] = None

    # ---- corpus protocol: implemented by subclasses, called by the epoch logic and by datasets over datasets ------

    def corpus_size(self) -> int:
        """Number of sequences in the corpus (before any epoch filter or partition)."""
        raise NotImplementedError

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        """The data arrays of one corpus sequence, per data key, time axis first (no tag: see ``get_corpus_seq``)."""
        raise NotImplementedError

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        """The tag of one corpus sequence (what seq lists and MetaDataset match on)."""
        return f"seq-{corpus_idx}"

    def corpus_seq_lengths(self, corpus_idx: int) -> Optional[Dict[str, int]]:
        """Lengths per data key without loading the data (estimates are fine); None where unknown."""
        return None

    # the earlier names (see the class docstring)
    _corpus_size = corpus_size
    _load_seq = load_corpus_seq
    _corpus_seq_tag = corpus_seq_tag
    _corpus_seq_lengths = corpus_seq_lengths

    # ---- epoch ---------------------------------------------------------------------------------------------------

    def random_seed_for_epoch(self, epoch: int) -> int:
        """The shuffling seed of an epoch; sub-epochs of one full epoch share it."""
        if self.fixed_random_seed is not None:
            return self.fixed_random_seed
        full_epoch = (epoch - 1) // self.partition_epoch + 1
        return full_epoch + self.random_seed_offset

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that loading draws its random numbers for (:meth:`seq_random_state`) without ordering the
        corpus: for datasets read by corpus index only (a MetaDataset's datasets other than the control dataset).
        :meth:`init_seq_order` sets it too; datasets over datasets pass it on to their parts."""
        self.epoch = epoch

    def seq_random_state(self, corpus_idx: int, *key: int) -> np.random.RandomState:
        """The generator that loading corpus sequence `corpus_idx` in the current epoch draws from (audio
        perturbation, a pre_process, a custom dataset's noise): a function of (epoch seed, corpus index, `key`) only,
        so that a sequence gets the same numbers whichever loader (a thread or a forked process, one of however many)
        loads it, in whatever order. `key`: further seed words, e.g. from a user-given seed."""
        seed = self.random_seed_for_epoch(self.epoch or 1)
        # seeding with several words (MT19937's init_by_array) keeps nearby seeds and indices apart. A new generator
        # costs ~0.2 ms: callers make one only where something draws from it.
        return np.random.RandomState([w % 2**32 for w in (seed, corpus_idx, _SEQ_RANDOM_STREAM, *key)])

    def init_seq_order(
        self,
        epoch: Optional[int] = None,
        seq_list: Optional[Sequence[str]] = None,
        seq_order: Optional[Sequence[int]] = None,
    ) -> bool:
        """Fixes the sequences of `epoch` (1-based); `seq_list` (tags) or `seq_order` (corpus indices) override."""
        epoch = epoch or 1
        self.set_epoch(epoch)
        if seq_order is not None:
            self._epoch_order = [int(i) for i in seq_order]
            return True
        if seq_list is not None:
            self._epoch_order = self._corpus_indices_for_tags(seq_list)
            return True
        full_order = compute_seq_order(
            self.corpus_size(),
            self.seq_ordering,
            seed=self.random_seed_for_epoch(epoch),
            get_seq_len=self._corpus_length_for_sorting if self.has_cheap_lengths else None,
        )
        if self.seq_list_filter_file is not None:
            allowed = self._filter_tags()
            full_order = [i for i in full_order if self.corpus_seq_tag(i) in allowed]
        for (first, last), options in self.epoch_wise_filter.items():
            if first <= epoch <= last:
                full_order = self._apply_epoch_filter(full_order, options)
        part = (epoch - 1) % self.partition_epoch
        self._epoch_order = [
            int(i) for i in np.array_split(np.asarray(full_order, dtype=np.int64), self.partition_epoch)[part]
        ]
        return True

    def _filter_length(self, corpus_idx: int) -> float:
        """The length ``epoch_wise_filter`` looks at (the sorting length; OggZip: seconds)."""
        return self._corpus_length_for_sorting(corpus_idx)

    def _apply_epoch_filter(self, order: List[int], options: Dict[str, Any]) -> List[int]:
        """``max_num_seqs``: keep the shortest n; ``max_mean_len``: drop the longest until the mean length fits."""
        lengths = {i: self._filter_length(i) for i in order}
        keep = sorted(order, key=lambda i: lengths[i])
        if "max_num_seqs" in options:
            keep = keep[: int(options["max_num_seqs"])]
        if "max_mean_len" in options:
            total = sum(lengths[i] for i in keep)
            while len(keep) > 1 and total / len(keep) > options["max_mean_len"]:
                total -= lengths[keep.pop()]
        kept = set(keep)
        return [i for i in order if i in kept]

    def _filter_tags(self) -> set:
        if self._allowed_tags is None:
            self._allowed_tags = set(read_tag_list(self.seq_list_filter_file, "seq_list_filter_file"))
        return self._allowed_tags

    def _corpus_indices_for_tags(self, tags: Sequence[str]) -> List[int]:
        index = {self.corpus_seq_tag(i): i for i in range(self.corpus_size())}
        missing = [t for t in tags if t not in index]
        if missing:
            raise DataError(f"Dataset {self.name}: sequence tag(s) not found: {missing[:5]}")
        return [index[t] for t in tags]

    def _corpus_length_for_sorting(self, corpus_idx: int) -> int:
        lengths = self.corpus_seq_lengths(corpus_idx) or {}
        key = "data" if "data" in lengths else next(iter(lengths), None)
        return lengths[key] if key is not None else 0

    def _order(self) -> List[int]:
        if self._epoch_order is None:
            raise RuntimeError(f"Dataset {self.name}: call init_seq_order(epoch) first")
        return self._epoch_order

    # ---- access --------------------------------------------------------------------------------------------------

    @property
    def num_seqs(self) -> int:
        """Number of sequences in the current epoch."""
        return len(self._order())

    def corpus_index(self, seq_idx: int) -> int:
        """The corpus index of the epoch's `seq_idx`-th sequence."""
        return self._order()[seq_idx]

    def get_seq(self, seq_idx: int) -> Dict[str, Any]:
        """One sequence: numpy arrays per data key (time axis first) plus ``seq_tag`` and ``seq_idx``."""
        return self.get_corpus_seq(self.corpus_index(seq_idx), seq_idx=seq_idx)

    def get_corpus_seq(self, corpus_idx: int, *, seq_idx: int) -> Dict[str, Any]:
        """Like :func:`get_seq`, addressed by corpus index (what loader workers use: no epoch state needed)."""
        seq = dict(self.load_corpus_seq(corpus_idx))
        seq["seq_tag"] = self.corpus_seq_tag(corpus_idx)
        seq["seq_idx"] = seq_idx
        return seq

    def get_seq_length(self, seq_idx: int) -> Dict[str, int]:
        """Lengths per data key of the epoch's `seq_idx`-th sequence (may be estimates)."""
        corpus_idx = self.corpus_index(seq_idx)
        lengths = self.corpus_seq_lengths(corpus_idx)
        if lengths is None:
            seq = self.load_corpus_seq(corpus_idx)
            lengths = {k: int(v.shape[0]) if v.ndim else 1 for k, v in seq.items()}
        return lengths

    def get_seq_tag(self, seq_idx: int) -> str:
        """The tag of the epoch's `seq_idx`-th sequence."""
        return self.corpus_seq_tag(self.corpus_index(seq_idx))

    def get_all_tags(self) -> List[str]:
        """All sequence tags of the corpus, in corpus order."""
        return [self.corpus_seq_tag(i) for i in range(self.corpus_size())]

    def get_total_num_seqs(self) -> int:
        """Number of sequences in the whole corpus (all sub-epochs)."""
        return self.corpus_size()

    # ---- data keys (also RETURNN's accessors) --------------------------------------------------------------------

    def get_data_keys(self) -> List[str]:
        """Names of the data streams."""
        return list(self.data_keys)

    def get_data_dim(self, key: str) -> Optional[int]:
        """Feature dimension, or the number of classes for a sparse stream."""
        return self._key(key).dim

    def get_data_dtype(self, key: str) -> str:
        """numpy dtype name of the stream."""
        return self._key(key).dtype

    def is_data_sparse(self, key: str) -> bool:
        """Whether the stream holds class indices."""
        return self._key(key).sparse

    def get_data_shape(self, key: str) -> List[Optional[int]]:
        """Shape of one time frame (empty for sparse streams)."""
        return list(self._key(key).shape)

    @property
    def num_outputs(self) -> Dict[str, Tuple[Optional[int], int]]:
        """RETURNN's ``{key: (dim, ndim)}`` (ndim 1 for sparse, 2 for dense frames)."""
        return {k: (v.dim, 1 if v.sparse else v.ndim) for k, v in self.data_keys.items()}

    def _key(self, key: str) -> DataKey:
        if key not in self.data_keys:
            raise DataError(f"Dataset {self.name} has no data key {key!r}; it has: {', '.join(self.data_keys)}")
        return self.data_keys[key]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# the protocol's names before they were public; see Dataset's docstring
_EARLIER_HOOK_NAMES = {
    "_corpus_size": "corpus_size",
    "_load_seq": "load_corpus_seq",
    "_corpus_seq_tag": "corpus_seq_tag",
    "_corpus_seq_lengths": "corpus_seq_lengths",
}


class CorpusOffsets:
    """A corpus made of parts one after another (the files of an HDFDataset, the datasets of a ConcatDataset):
    maps a corpus index to (part, index within the part)."""

    def __init__(self, part_sizes: Sequence[int]):
        self.starts: List[int] = [0]
        for size in part_sizes:
            self.starts.append(self.starts[-1] + int(size))

    @property
    def total(self) -> int:
        """Number of sequences of all parts together."""
        return self.starts[-1]

    def locate(self, corpus_idx: int) -> Tuple[int, int]:
        """(part index, index within that part) of a corpus index."""
        part = bisect.bisect_right(self.starts, corpus_idx) - 1
        return part, corpus_idx - self.starts[part]


def _check_epoch_wise_filter(filters: Dict[Any, Dict[str, Any]], name: str) -> Dict[Tuple[int, int], Dict]:
    """``{(first_epoch, last_epoch): {"max_mean_len": ..., "max_num_seqs": ...}}``."""
    for epochs, options in filters.items():
        if not (isinstance(epochs, tuple) and len(epochs) == 2 and isinstance(options, dict)):
            raise ConfigError(f"Dataset {name}: epoch_wise_filter keys must be (first, last) epoch tuples")
        unknown = set(options) - {"max_mean_len", "max_num_seqs"}
        if unknown:
            raise ConfigError(f"Dataset {name}: epoch_wise_filter options {sorted(unknown)} unknown")
    return dict(filters)


def read_tag_list(filename: str, what: str) -> List[str]:
    """Sequence tags, one per line, from a plain or gzipped text file (seq lists, segment files)."""
    if not os.path.isfile(filename):
        raise DataError(f"{what} not found: {filename!r}")
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def check_dataset_kwargs(cls: type, kwargs: Dict[str, Any], name: str) -> None:
    """Raises a clear error for dataset options the class does not take (instead of a bare TypeError)."""
    accepted = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            accepted.update(p for p in params if p != "self")
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"Dataset {name!r} ({cls.__name__}) got unknown option(s): {', '.join(hints)}")
