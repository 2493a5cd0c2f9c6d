"""Datasets that generate their sequences (no files): for tests, demos and sanity checks."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError
from .dataset import DataKey, Dataset


class GeneratingDataset(Dataset):
    """Sequences made from the corpus index alone, so any order and any worker split see the same data."""

    has_cheap_lengths = True  # generated once for the lengths, then remembered

    def __init__(self, *, num_seqs: int, **kwargs):
        super().__init__(**kwargs)
        self._num_seqs = int(num_seqs)
        self._lengths_cache: Dict[int, Dict[str, int]] = {}
        self._lengths_epoch: Optional[int] = None

    def corpus_size(self) -> int:
        return self._num_seqs

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        # some tasks grow with the epoch: the remembered lengths hold for one epoch
        if self._lengths_epoch != self.epoch:
            self._lengths_cache, self._lengths_epoch = {}, self.epoch
        if corpus_idx not in self._lengths_cache:
            self._lengths_cache[corpus_idx] = {k: int(v.shape[0]) for k, v in self.load_corpus_seq(corpus_idx).items()}
        return self._lengths_cache[corpus_idx]


class DummyDataset(GeneratingDataset):
    """Mini-RETURNN's dummy data: dense ``data`` [T, input_dim] and sparse ``classes`` [T], counting patterns."""

    def __init__(
        self,
        *,
        input_dim: int,
        output_dim: int,
        num_seqs: int,
        seq_len: Union[int, Dict[str, int]] = 2,
        input_max_value: float = 10.0,
        input_shift: Optional[float] = None,
        input_scale: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(num_seqs=num_seqs, **kwargs)
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.seq_len = seq_len if isinstance(seq_len, dict) else {"data": seq_len, "classes": seq_len}
        self.input_max_value = input_max_value
        self.input_shift = -input_max_value / 2.0 if input_shift is None else input_shift
        self.input_scale = 1.0 / input_max_value if input_scale is None else input_scale
        self.data_keys = {
            "data": DataKey("data", input_dim, "float32", shape=(input_dim,)),
            "classes": DataKey("classes", output_dim, "int32", sparse=True),
        }

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        data_len, classes_len = self.seq_len["data"], self.seq_len["classes"]
        start = corpus_idx
        values = np.arange(start, start + data_len * self.input_dim) % self.input_max_value
        features = ((values + self.input_shift) * self.input_scale).reshape(data_len, self.input_dim)
        start += data_len * self.input_dim
        targets = np.arange(start, start + classes_len) % self.output_dim
        return {"data": features.astype("float32"), "classes": targets.astype("int32")}


class SyntheticSpeechDataset(GeneratingDataset):
    """A learnable speech-like task: a hidden label sequence, each label emitting a few noisy feature frames.

    ``data`` [T, feature_dim] float32 frames, ``classes`` [L] int32 labels in ``0..num_classes-1``. Each label has a
    fixed random prototype vector (from ``task_seed``: datasets with the same task seed pose the same task);
    frames are prototype + Gaussian noise, so a small CTC or framewise model learns it within a few epochs.
    Sequences are a function of ``(seed, corpus_idx)``: use another ``seed`` for a dev set.
    """

    def __init__(
        self,
        *,
        num_seqs: int,
        num_classes: int = 10,
        feature_dim: int = 16,
        min_labels: int = 3,
        max_labels: int = 10,
        min_frames_per_label: int = 2,
        max_frames_per_label: int = 5,
        noise: float = 0.3,
        seed: int = 1,
        task_seed: int = 0,
        **kwargs,
    ):
        super().__init__(num_seqs=num_seqs, **kwargs)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.label_range = (min_labels, max_labels)
        self.frame_range = (min_frames_per_label, max_frames_per_label)
        self.noise = noise
        self.seed = seed
        self.prototypes = np.random.RandomState(task_seed).normal(size=(num_classes, feature_dim)).astype("float32")
        self.data_keys = {
            "data": DataKey("data", feature_dim, "float32", shape=(feature_dim,)),
            "classes": DataKey("classes", num_classes, "int32", sparse=True),
        }

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        rng = np.random.RandomState((self.seed * 1_000_003 + corpus_idx) % 2**32)
        num_labels = rng.randint(self.label_range[0], self.label_range[1] + 1)
        labels = rng.randint(0, self.num_classes, size=num_labels)
        repeats = rng.randint(self.frame_range[0], self.frame_range[1] + 1, size=num_labels)
        frames = np.repeat(self.prototypes[labels], repeats, axis=0)
        frames = frames + self.noise * rng.normal(size=frames.shape)
        return {"data": frames.astype("float32"), "classes": labels.astype("int32")}


def _rng(seed: int, corpus_idx: int, epoch: int = 0) -> np.random.RandomState:
    return np.random.RandomState((seed * 1_000_003 + corpus_idx * 7919 + epoch * 104_729) % 2**32)


class DummyDatasetMultipleSequenceLength(DummyDataset):
    """:class:`DummyDataset` with different lengths for ``data`` and ``classes`` (default 10 and 20)."""

    def __init__(self, *, seq_len: Optional[Dict[str, int]] = None, **kwargs):
        super().__init__(seq_len=seq_len or {"data": 10, "classes": 20}, **kwargs)


class DummyDatasetMultipleDataKeys(GeneratingDataset):
    """Counting patterns for any data keys: ``output_dim`` = {key: dim or (dim, ndim)}; ndim 1 means sparse."""

    def __init__(
        self,
        *,
        output_dim: Dict[str, Union[int, Tuple[int, int]]],
        num_seqs: int,
        seq_len: Union[int, Dict[str, int]] = 2,
        input_max_value: float = 10.0,
        input_shift: Optional[float] = None,
        input_scale: Optional[float] = None,
        data_keys: Optional[List[str]] = None,
        **kwargs,
    ):
        super().__init__(num_seqs=num_seqs, **kwargs)
        keys = data_keys or sorted(output_dim)
        self.dims = {k: (v, 2) if isinstance(v, int) else tuple(v) for k, v in output_dim.items()}
        self.seq_len = seq_len if isinstance(seq_len, dict) else {k: seq_len for k in keys}
        self.input_max_value = input_max_value
        self.input_shift = -input_max_value / 2.0 if input_shift is None else input_shift
        self.input_scale = 1.0 / input_max_value if input_scale is None else input_scale
        for key in keys:
            dim, ndim = self.dims[key]
            sparse = ndim == 1
            self.data_keys[key] = DataKey(key, dim, "int32" if sparse else "float32", sparse, () if sparse else (dim,))

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        result, start = {}, corpus_idx
        for key, info in self.data_keys.items():
            length = self.seq_len[key]
            if info.sparse:
                result[key] = (np.arange(start, start + length) % info.dim).astype("int32")
                start += length
            else:
                values = np.arange(start, start + length * info.dim) % self.input_max_value
                result[key] = (
                    ((values + self.input_shift) * self.input_scale).reshape(length, info.dim).astype("float32")
                )
                start += length * info.dim
        return result


class Task12AXDataset(GeneratingDataset):
    """The 12AX memory task: one-hot symbols of ``123ABCXYZ`` in, ``L``/``R`` per step out.

    ``R`` where the last digit was 1 and the pair ``AX`` just ended, or the digit was 2 and ``BY`` just ended.
    """

    INPUT_SYMBOLS = "123ABCXYZ"
    OUTPUT_SYMBOLS = "LR"

    def __init__(self, *, num_seqs: int, seed: int = 1, **kwargs):
        super().__init__(num_seqs=num_seqs, **kwargs)
        self.seed = seed
        n_in = len(self.INPUT_SYMBOLS)
        self.data_keys = {
            "data": DataKey("data", n_in, "float32", shape=(n_in,)),
            "classes": DataKey("classes", 2, "int32", sparse=True),
        }

    @classmethod
    def targets_for(cls, symbols: str) -> List[int]:
        """The task's answer for a symbol string."""
        digit, letter, out = "", "", []
        for c in symbols:
            answer = 0
            if c in "12":
                digit = c
            elif c in "AB":
                letter = c
            elif c in "XY":
                answer = int(digit + letter + c in ("1AX", "2BY"))
                letter = ""
            out.append(answer)
        return out

    def _symbols(self, corpus_idx: int) -> str:
        rng = _rng(self.seed, corpus_idx)
        length = rng.randint(10, 101)
        text = str(rng.choice(["", "1", "2"]))
        while len(text) < length:  # biased towards the pairs, so that "R" answers occur
            if rng.uniform() < 0.5:
                text += str(rng.choice(list("12")))
            if rng.uniform() < 0.9:
                text += str(rng.choice(["AX", "BY"]))
            while rng.uniform() < 0.5:
                text += str(rng.choice(list(self.INPUT_SYMBOLS)))
        return text[:length]

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        symbols = self._symbols(corpus_idx)
        index = np.array([self.INPUT_SYMBOLS.index(c) for c in symbols])
        return {
            "data": np.eye(len(self.INPUT_SYMBOLS), dtype="float32")[index],
            "classes": np.array(self.targets_for(symbols), dtype="int32"),
        }


class CopyTaskDataset(GeneratingDataset):
    """Random symbol sequences to copy: ``data`` == ``classes``; lengths may grow with the epoch."""

    def __init__(
        self,
        *,
        nsymbols: int,
        num_seqs: int,
        minlen: int = 0,
        maxlen: int = 0,
        minlen_epoch_factor: float = 0.0,
        maxlen_epoch_factor: float = 0.0,
        seed: int = 1,
        **kwargs,
    ):
        super().__init__(num_seqs=num_seqs, **kwargs)
        self.nsymbols, self.seed = nsymbols, seed
        self.length_range = (minlen, maxlen, minlen_epoch_factor, maxlen_epoch_factor)
        self.data_keys = {
            "data": DataKey("data", nsymbols, "int32", sparse=True),
            "classes": DataKey("classes", nsymbols, "int32", sparse=True),
        }

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        epoch = self.epoch or 1
        minlen, maxlen, min_factor, max_factor = self.length_range
        rng = _rng(self.seed, corpus_idx, epoch)
        length = rng.randint(int(minlen + min_factor * epoch), int(maxlen + max_factor * epoch) + 1)
        seq = rng.randint(0, self.nsymbols, size=length).astype("int32")
        return {"data": seq, "classes": seq.copy()}


class StaticDataset(Dataset):
    """Sequences given in the config: ``data`` = list of {key: array}; dims from ``output_dim`` or the data."""

    has_cheap_lengths = True  # the arrays are in memory

    def __init__(
        self,
        *,
        data: List[Dict[str, Any]],
        output_dim: Optional[Dict[str, Union[int, Tuple[int, int]]]] = None,
        input_dim: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not data:
            raise ConfigError(f"StaticDataset {self.name!r}: 'data' is empty")
        self.seqs = [{k: np.asarray(v) for k, v in seq.items()} for seq in data]
        output_dim = dict(output_dim or {})
        if input_dim is not None:
            output_dim.setdefault("data", (input_dim, 2))
        for key, value in self.seqs[0].items():
            dims = output_dim.get(key)
            if dims is None:
                sparse = value.ndim == 1 and value.dtype.kind in "iu"
                dim = int(max(int(s[key].max(initial=0)) for s in self.seqs)) + 1 if sparse else value.shape[-1]
            else:
                dim, ndim = (dims, 2) if isinstance(dims, int) else dims
                sparse = ndim == 1
            self.data_keys[key] = DataKey(key, dim, str(value.dtype), sparse, tuple(value.shape[1:]))

    def corpus_size(self) -> int:
        return len(self.seqs)

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        return self.seqs[corpus_idx]

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        return {k: int(v.shape[0]) if v.ndim else 1 for k, v in self.seqs[corpus_idx].items()}
