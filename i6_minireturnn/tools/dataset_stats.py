"""Mean / standard deviation / min / max per feature over all frames of many sequences, and RETURNN's stats files.

RETURNN's ``dump-dataset.py --dump_stats PREFIX`` writes ``PREFIX.mean.txt``, ``PREFIX.std_dev.txt``,
``PREFIX.min.txt``, ``PREFIX.max.txt`` (``numpy.savetxt``: one value per line for a feature vector) and
``PREFIX.info.txt`` (``{"num_seqs": N, "total_data_len": T,}``); i6_core's ExtractDatasetMeanStddevJob reads the mean
and std-dev files line by line with ``float(line)``. The standard deviation is the population one (divisor T).
"""

from __future__ import annotations

import io
from typing import Dict, List, Optional

import numpy as np

from ..atomic_file import write_text_atomic


class FeatureStats:
    """Accumulates per-feature statistics sequence by sequence (axis 0 of each sequence is time).

    Sequences are merged with Chan et al.'s pairwise update of (count, mean, sum of squared deviations) in float64,
    which stays accurate where the naive sum of squares would cancel (features with a large mean, long corpora).
    """

    def __init__(self) -> None:
        self.num_seqs = 0
        self.total_frames = 0
        self._mean: Optional[np.ndarray] = None
        self._m2: Optional[np.ndarray] = None  # sum of squared deviations from the mean
        self.min: Optional[np.ndarray] = None
        self.max: Optional[np.ndarray] = None

    def add(self, data: np.ndarray) -> None:
        """One sequence, shape [time, ...]; empty sequences are skipped (as RETURNN does)."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim == 0:
            data = data[None]
        frames = data.shape[0]
        if frames == 0:
            return
        seq_mean = data.mean(axis=0)
        seq_m2 = ((data - seq_mean) ** 2).sum(axis=0)
        if self._mean is None:
            self._mean, self._m2 = seq_mean, seq_m2
            self.min, self.max = data.min(axis=0), data.max(axis=0)
        else:
            if seq_mean.shape != self._mean.shape:
                raise ValueError(f"frame shape {seq_mean.shape} differs from the earlier {self._mean.shape}")
            total = self.total_frames + frames
            delta = seq_mean - self._mean
            self._mean = self._mean + delta * (frames / total)
            self._m2 = self._m2 + seq_m2 + delta**2 * (self.total_frames * frames / total)
            self.min = np.minimum(self.min, data.min(axis=0))
            self.max = np.maximum(self.max, data.max(axis=0))
        self.num_seqs += 1
        self.total_frames += frames

    @property
    def mean(self) -> np.ndarray:
        """Mean per feature."""
        self._check_data()
        return self._mean

    @property
    def std_dev(self) -> np.ndarray:
        """Population standard deviation per feature."""
        self._check_data()
        return np.sqrt(self._m2 / self.total_frames)

    def _check_data(self) -> None:
        if self._mean is None:
            raise ValueError("no frames were collected")

    def summary(self, name: str) -> str:
        """A few lines for the log."""
        lines = [f"{name} stats:"]
        if self._mean is None:
            return "\n".join(lines + ["  (no data)"])
        lines.append(
            f"  {self.num_seqs} seqs, {self.total_frames} total frames, "
            f"{self.total_frames / self.num_seqs:.2f} average frames"
        )
        with np.printoptions(precision=5, threshold=20, edgeitems=4):
            lines.append(f"  mean: {self.mean}")
            lines.append(f"  std dev: {self.std_dev}")
            lines.append(f"  min/max: {self.min} / {self.max}")
        return "\n".join(lines)

    def write(self, prefix: str) -> List[str]:
        """Writes RETURNN's stats files (each atomically); returns their names."""
        self._check_data()
        arrays: Dict[str, np.ndarray] = {
            "mean": self.mean,
            "std_dev": self.std_dev,
            "min": self.min,
            "max": self.max,
        }
        written = []
        for suffix, array in arrays.items():
            path = f"{prefix}.{suffix}.txt"
            write_text_atomic(path, _savetxt(array))
            written.append(path)
        info = f'{{\n"num_seqs": {self.num_seqs},\n"total_data_len": {self.total_frames},\n}}\n'
        write_text_atomic(f"{prefix}.info.txt", info)
        written.append(f"{prefix}.info.txt")
        return written


def _savetxt(array: np.ndarray) -> str:
    """numpy.savetxt's text: a value per line for a vector (a scalar, for sparse data, as one line); frames with more
    than one axis are written as rows of the first axis."""
    array = np.atleast_1d(array)
    if array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    buffer = io.StringIO()
    np.savetxt(buffer, array)
    return buffer.getvalue()
