"""Collates sequences into padded tensors with RETURNN's ``<key>:size<i>`` length entries."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

# torch has no unsigned types beyond uint8: widen them so values keep their meaning
_WIDEN = {np.dtype("uint16"): np.int32, np.dtype("uint32"): np.int64, np.dtype("uint64"): np.int64}


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


def collated_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arrays of `dtype` are collated in: native byte order, unsigned types torch lacks widened."""
    return np.dtype(_WIDEN.get(dtype, dtype)).newbyteorder("=")


def padded_buffer(shapes: Sequence[Tuple[int, ...]], dtype: np.dtype, *, pin_memory: bool) -> torch.Tensor:
    """An uninitialised ``[len(shapes), *max shape]`` tensor (page-locked with `pin_memory`) that is zero wherever
    no sequence of these `shapes` lies (the padding): the sequences are then copied or read into it in place."""
    full = (len(shapes),) + tuple(max(shape[axis] for shape in shapes) for axis in range(len(shapes[0])))
    if pin_memory:
        buffer = torch.empty(full, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
    else:
        # numpy's memory: with loader threads, torch.empty's fresh batches often page-fault anew (measured: up to 3x
        # the page faults, half the throughput); numpy asks for huge pages for large arrays
        buffer = torch.from_numpy(np.empty(full, dtype))
    rows = buffer.numpy()  # numpy indexing costs far less per row than torch's
    if any(shape[1:] != full[2:] for shape in shapes):  # padding on several axes
        rows[...] = 0
    else:
        for b, shape in enumerate(shapes):
            if shape[0] < full[1]:
                rows[b, shape[0] :] = 0
    return buffer


def small_tensor(values: Any, *, pin_memory: bool) -> torch.Tensor:
    """An int64 tensor of `values` (lengths, batch sizes), page-locked with `pin_memory`."""
    tensor = torch.tensor(values, dtype=torch.int64)
    return tensor.pin_memory() if pin_memory else tensor


def collate_batch(
    seqs: List[Dict[str, Any]],
    dataset_name: Optional[str] = None,
    *,
    pin_memory: bool = False,
) -> Batch:
    """Pads each data key over the batch (zeros) and adds ``key:size0`` (batch size) and ``key:size<i>`` lengths.

    Non-array entries (``seq_tag``, ``seq_idx``) become plain lists. `dataset_name` is named in the error for a key
    the batch does not have. With `pin_memory` the tensors are collated straight into page-locked memory (for
    asynchronous copies to the GPU), not collated and then copied there.
    """
    if not seqs:
        raise ValueError("cannot collate an empty batch")
    batch = Batch(dataset_name=dataset_name)
    for key in seqs[0]:
        values = [seq[key] for seq in seqs]
        if not isinstance(values[0], np.ndarray) or values[0].dtype.kind in "UOS":
            batch[key] = list(values)
            continue
        arrays = [np.ascontiguousarray(v) for v in values]  # a scalar becomes one frame of one value
        shapes = [a.shape for a in arrays]
        padded = padded_buffer(shapes, collated_dtype(arrays[0].dtype), pin_memory=pin_memory)
        rows = padded.numpy()
        for b, a in enumerate(arrays):
            rows[(b,) + tuple(slice(0, n) for n in a.shape)] = a
        batch[key] = padded
        for axis in range(arrays[0].ndim):
            batch[f"{key}:size{axis + 1}"] = small_tensor([s[axis] for s in shapes], pin_memory=pin_memory)
        batch[f"{key}:size0"] = small_tensor(len(arrays), pin_memory=pin_memory)
    return batch
