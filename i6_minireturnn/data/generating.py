"""Datasets that generate their sequences (no files): for tests, demos and sanity checks."""

from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np

from .dataset import DataKey, Dataset


class GeneratingDataset(Dataset):
    """Sequences made from the corpus index alone, so any order and any worker split see the same data."""

    def __init__(self, *, num_seqs: int, **kwargs):
        super().__init__(**kwargs)
        self._num_seqs = int(num_seqs)

    def _corpus_size(self) -> int:
        return self._num_seqs

    def _corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        return {k: int(v.shape[0]) for k, v in self._load_seq(corpus_idx).items()}


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

    def _load_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
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
        self._lengths_cache: Dict[int, Dict[str, int]] = {}

    def _load_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        rng = np.random.RandomState((self.seed * 1_000_003 + corpus_idx) % 2**32)
        num_labels = rng.randint(self.label_range[0], self.label_range[1] + 1)
        labels = rng.randint(0, self.num_classes, size=num_labels)
        repeats = rng.randint(self.frame_range[0], self.frame_range[1] + 1, size=num_labels)
        frames = np.repeat(self.prototypes[labels], repeats, axis=0)
        frames = frames + self.noise * rng.normal(size=frames.shape)
        return {"data": frames.astype("float32"), "classes": labels.astype("int32")}

    def _corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        if corpus_idx not in self._lengths_cache:
            self._lengths_cache[corpus_idx] = super()._corpus_seq_lengths(corpus_idx)
        return self._lengths_cache[corpus_idx]
