"""Collates sequences into padded tensors with RETURNN's ``<key>:size<i>`` length entries."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, TypeVar

import numpy as np
import torch

# torch has no unsigned types beyond uint8: widen them so values keep their meaning
_WIDEN = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64, np.dtype("uint64"): np.int64}


def _as_tensor(value: np.ndarray) -> torch.Tensor:
    value = np.asarray(value)
    if value.dtype in _WIDEN:
        value = value.astype(_WIDEN[value.dtype])
    return torch.from_numpy(np.ascontiguousarray(value))


# batch entries that are no data keys of the dataset
_BATCH_INFO_KEYS = ("seq_tag", "seq_idx")


class MissingDataKeyError(KeyError):
    """``data[key]`` for a key the batch does not have; the message lists the keys it has."""

    def __str__(self) -> str:  # KeyError would show the message as a quoted repr
        return str(self.args[0]) if self.args else ""


class Batch(dict):
    """The ``data`` dict step functions get: a plain dict whose missing keys raise :class:`MissingDataKeyError`
    naming the keys the batch has (and the dataset, where known) instead of a bare ``KeyError: 'audio_features'``."""

    def __init__(self, *args: Any, dataset_name: Optional[str] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dataset_name = dataset_name

    def __missing__(self, key: Any) -> Any:
        caller = sys._getframe(1)  # the code doing data[key] (dict.__getitem__ runs in C)
        where = f" (in {caller.f_code.co_filename}, line {caller.f_lineno})"
        source = f"the dataset {self.dataset_name!r}" if self.dataset_name else "the dataset"
        names = [k for k in self if isinstance(k, str)]
        data_keys = [k for k in names if ":size" not in k and k not in _BATCH_INFO_KEYS]
        others = [repr(k) for k in names if k in _BATCH_INFO_KEYS]
        lengths = [repr(k) for k in names if ":size" in k]
        if lengths:
            others.append("the lengths " + ", ".join(lengths))
        raise MissingDataKeyError(
            f"data[{key!r}]{where}: the batch has no key {key!r}. It has the data keys of {source}: "
            f"{', '.join(map(repr, data_keys)) or 'none'}" + (f"; besides them {', '.join(others)}" if others else "")
        )

    def __reduce__(self):  # DataLoader worker processes send batches pickled
        return (_rebuild_batch, (dict(self), self.dataset_name))


def _rebuild_batch(items: Dict[str, Any], dataset_name: Optional[str]) -> Batch:
    return Batch(items, dataset_name=dataset_name)


BatchT = TypeVar("BatchT", bound=Dict[str, Any])


def map_tensors(batch: BatchT, func: Callable[[torch.Tensor], torch.Tensor]) -> BatchT:
    """The batch with `func` applied to its tensors (other entries stay), of the same kind: a :class:`Batch` stays
    one (with its dataset name), a plain dict stays a plain dict. For copies to the device or to pinned memory."""
    items = {k: func(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, Batch):
        return Batch(items, dataset_name=batch.dataset_name)  # type: ignore[return-value]
    return items  # type: ignore[return-value]


def collate_batch(seqs: List[Dict[str, Any]], dataset_name: Optional[str] = None) -> Batch:
    """Pads each data key over the batch (zeros) and adds ``key:size0`` (batch size) and ``key:size<i>`` lengths.

    Non-array entries (``seq_tag``, ``seq_idx``) become plain lists. `dataset_name` is named in the error for a key
    the batch does not have.
    """
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    batch = Batch(dataset_name=dataset_name)
    for key in seqs[0]:
        values = [seq[key] for seq in seqs]
        if not isinstance(values[0], np.ndarray) or values[0].dtype.kind in "UOS":
            batch[key] = list(values)
            continue
        tensors = [_as_tensor(v) for v in values]
        ndim = tensors[0].dim()
        if ndim == 0:
            batch[key] = torch.stack(tensors)
        else:
            shape = [max(t.shape[i] for t in tensors) for i in range(ndim)]
            padded = torch.zeros([len(tensors)] + shape, dtype=tensors[0].dtype)
            for b, t in enumerate(tensors):
                padded[(b,) + tuple(slice(0, n) for n in t.shape)] = t
            batch[key] = padded
            for axis in range(ndim):
                batch[f"{key}:size{axis + 1}"] = torch.tensor([t.shape[axis] for t in tensors], dtype=torch.int64)
        batch[f"{key}:size0"] = torch.tensor(len(tensors), dtype=torch.int64)
    return batch
